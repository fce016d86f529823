package shellquote

import "testing"

func TestJoin(t *testing.T) {
	got := Join([]string{"husk-vmm", "--disk", "a.img,ro", "", "x y", `$HOME`, "plain"})
	want := `husk-vmm --disk "a.img,ro" "" "x y" "$HOME" plain`
	if got != want {
		t.Fatalf("Join = %s, want %s", got, want)
	}
}
