package kbuild

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseFragment(t *testing.T) {
	got, err := ParseFragment([]byte(`# a comment, CONFIG_IN_PROSE does not count
# --- group ---
CONFIG_PVH=y

# CONFIG_MODULES is not set
CONFIG_NR_CPUS=32
CONFIG_LOCALVERSION="-husk"
CONFIG_PHYSICAL_START=0x1000000
  CONFIG_INDENTED=y
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Option{
		{Name: "CONFIG_PVH", Value: "y", Line: 3},
		{Name: "CONFIG_MODULES", Value: "n", Line: 5},
		{Name: "CONFIG_NR_CPUS", Value: "32", Line: 6},
		{Name: "CONFIG_LOCALVERSION", Value: `"-husk"`, Line: 7},
		{Name: "CONFIG_PHYSICAL_START", Value: "0x1000000", Line: 8},
		{Name: "CONFIG_INDENTED", Value: "y", Line: 9},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseFragment:\n got %+v\nwant %+v", got, want)
	}
}

func TestParseFragmentErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"spaces around =", "CONFIG_A = y\n", "malformed option"},
		{"bare symbol", "CONFIG_A\n", "malformed option"},
		{"unset without space", "#CONFIG_A is not set\n", "malformed option"},
		{"junk", "PVH=y\n", "not an option"},
		{"bad value", "CONFIG_A=yes\n", "bad value"},
		{"unterminated string", "CONFIG_A=\"x\n", "bad value"},
		{"inner quote", "CONFIG_A=\"a\"b\"\n", "unescaped quote"},
		{"duplicate", "CONFIG_A=y\n# CONFIG_A is not set\n", "already set on line 1"},
		{"empty", "# nothing\n", "no options"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFragment([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestRepoFragment keeps the checked-in fragment parseable and honest about
// the options the guest depends on.
func TestRepoFragment(t *testing.T) {
	data, err := os.ReadFile("../../guest/kernel/husk.config")
	if err != nil {
		t.Fatal(err)
	}
	frag, err := ParseFragment(data)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, o := range frag {
		m[o.Name] = o.Value
	}
	for name, want := range map[string]string{
		"CONFIG_MODULES": "n", "CONFIG_PVH": "y", "CONFIG_PCI": "n", "CONFIG_ACPI": "n",
		"CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES": "y", "CONFIG_VIRTIO_VSOCKETS": "y",
		"CONFIG_SERIAL_8250_CONSOLE": "y", "CONFIG_NR_CPUS": "32", "CONFIG_RD_GZIP": "y",
		"CONFIG_LOCALVERSION": `"-husk"`, "CONFIG_LOCALVERSION_AUTO": "n", "CONFIG_KVM_GUEST": "y",
	} {
		if m[name] != want {
			t.Errorf("fragment: %s = %q, want %q", name, m[name], want)
		}
	}
}

const syntheticConfig = `#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_PVH=y
# CONFIG_MODULES is not set
CONFIG_NR_CPUS=64
CONFIG_LOCALVERSION="-husk"
CONFIG_VIRTIO=m
# CONFIG_SECCOMP_FILTER is not set
`

func TestDropped(t *testing.T) {
	frag := []Option{
		{Name: "CONFIG_PVH", Value: "y", Line: 1},                // kept
		{Name: "CONFIG_MODULES", Value: "n", Line: 2},            // kept (written as not set)
		{Name: "CONFIG_ACPI", Value: "n", Line: 3},               // kept (absent = off)
		{Name: "CONFIG_NR_CPUS", Value: "32", Line: 4},           // changed
		{Name: "CONFIG_LOCALVERSION", Value: `"-husk"`, Line: 5}, // kept
		{Name: "CONFIG_VIRTIO", Value: "y", Line: 6},             // y became m
		{Name: "CONFIG_SECCOMP_FILTER", Value: "y", Line: 7},     // dropped
		{Name: "CONFIG_NO_SUCH_SYMBOL", Value: "y", Line: 8},     // unknown symbol
	}
	got := Dropped(frag, ParseConfig([]byte(syntheticConfig)))
	var names []string
	for _, m := range got {
		names = append(names, m.Name+"="+m.Got)
	}
	want := []string{"CONFIG_NR_CPUS=64", "CONFIG_VIRTIO=m", "CONFIG_SECCOMP_FILTER=n", "CONFIG_NO_SUCH_SYMBOL=n"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("Dropped = %v, want %v", names, want)
	}
	err := error(&DroppedError{Mismatches: got})
	var de *DroppedError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "CONFIG_SECCOMP_FILTER: want y, got n (fragment line 7)") {
		t.Fatalf("error text: %v", err)
	}
}

func TestMerge(t *testing.T) {
	base := "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n# comment\nCONFIG_D=\"x\""
	frag := []Option{{Name: "CONFIG_B", Value: "y"}, {Name: "CONFIG_C", Value: "n"}, {Name: "CONFIG_E", Value: "5"}}
	got := string(Merge([]byte(base), frag))
	want := "CONFIG_A=y\n# comment\nCONFIG_D=\"x\"\n# --- husk fragment ---\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_E=5\n"
	if got != want {
		t.Fatalf("Merge:\n%s\nwant:\n%s", got, want)
	}
	// Every fragment option appears exactly once in the merged config.
	if d := Dropped(frag, ParseConfig([]byte(got))); len(d) != 0 {
		t.Fatalf("merged config misses fragment options: %v", d)
	}
}
