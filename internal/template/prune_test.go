package template

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/cache"
)

func TestPruneDerived(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-48 * time.Hour)
	mk := func(name, baseKey string, used time.Time) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(Info{Name: "x", Key: name, BaseKey: baseKey})
		if err := os.WriteFile(filepath.Join(p, InfoName), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, used, used); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := mk("base", "", old.Add(-time.Hour)) // never pruned
	var derived []string
	for i := range 6 {
		derived = append(derived, mk("d"+string(rune('0'+i)), "base", old.Add(time.Duration(i)*time.Minute)))
	}
	fresh := mk("fresh", "base", time.Now()) // recently used: kept beyond the count
	locked := derived[0]
	release, err := cache.Lock(locked + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	defer release()

	removed, err := pruneDerived(dir, 3, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Kept by recency: fresh, d5, d4. Old and unlocked: d3, d2, d1. Locked: d0.
	want := map[string]bool{derived[1]: true, derived[2]: true, derived[3]: true}
	if len(removed) != len(want) {
		t.Fatalf("removed %v, want %v", removed, want)
	}
	for _, p := range removed {
		if !want[p] {
			t.Errorf("removed %s", p)
		}
	}
	for _, p := range []string{base, fresh, derived[0], derived[4], derived[5]} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s should remain: %v", p, err)
		}
	}
}
