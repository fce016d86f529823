package qemubundle

import (
	"reflect"
	"testing"
)

func TestParseLdd(t *testing.T) {
	out := []byte(`	linux-vdso.so.1 (0x00007ffd5a1f0000)
	libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f3746c1d000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3744728000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f3746d33000)
`)
	libs, loader, err := parseLdd(out)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"libz.so.1": "/lib/x86_64-linux-gnu/libz.so.1",
		"libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
	}
	if !reflect.DeepEqual(libs, want) || loader != "/lib64/ld-linux-x86-64.so.2" {
		t.Errorf("parseLdd = %v, %q", libs, loader)
	}
}

func TestParseLddErrors(t *testing.T) {
	for _, out := range []string{
		"\tlibfoo.so.1 => not found\n\t/lib64/ld-linux-x86-64.so.2 (0x1)\n",
		"\tlibz.so.1 => /lib/libz.so.1 (0x1)\n",         // no loader
		"\t/lib64/ld-linux-x86-64.so.2 (0x1)\n",         // no libraries
		"\tnot a dynamic executable\n",                  // static
		"\tlibz.so.1 => /lib/libz.so.1 (0x1)\n\tjunk\n", // unknown line
	} {
		if _, _, err := parseLdd([]byte(out)); err == nil {
			t.Errorf("parseLdd(%q): no error", out)
		}
	}
}

func TestCommand(t *testing.T) {
	got := Command("/b", "-M", "microvm")
	want := []string{"/b/bin/ld-linux-x86-64.so.2", "--library-path", "/b/lib", "/b/bin/qemu-system-x86_64", "-L", "/b/share/qemu", "-M", "microvm"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Command = %q", got)
	}
}

func TestSanitize(t *testing.T) {
	if got := sanitize("1:7.2+dfsg-7+deb12u18+b3"); got != "1_7.2+dfsg-7+deb12u18+b3" {
		t.Errorf("sanitize = %q", got)
	}
}
