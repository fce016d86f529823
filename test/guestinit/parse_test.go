package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Params
	}{
		{"empty", "", Params{Mode: ModeReboot}},
		{"typical", "console=ttyS0 reboot=k panic=-1 husk.token=abc\n", Params{Token: "abc", Mode: ModeReboot}},
		{"modes", "husk.mode=panic husk.token=x", Params{Token: "x", Mode: ModePanic}},
		{"uname", "husk.mode=uname", Params{Mode: ModeUname}},
		{"hang", "husk.mode=hang", Params{Mode: ModeHang}},
		{"explicit reboot", "husk.mode=reboot", Params{Mode: ModeReboot}},
		{"empty mode", "husk.mode=", Params{Mode: ModeReboot}},
		{"unknown mode", "husk.mode=dance", Params{Mode: ModeReboot, UnknownMode: "dance"}},
		{"last wins", "husk.token=a husk.mode=hang husk.token=b husk.mode=panic", Params{Token: "b", Mode: ModePanic}},
		{"unknown then known", "husk.mode=dance husk.mode=hang", Params{Mode: ModeHang}},
		{"quoted value", `a=1 husk.token="a b  c" z`, Params{Token: "a b  c", Mode: ModeReboot}},
		{"quoted word", `"husk.token=a b" z`, Params{Token: "a b", Mode: ModeReboot}},
		{"inner quotes kept", `husk.token=a"b c"`, Params{Token: `a"b c"`, Mode: ModeReboot}},
		{"value with =", "husk.token=k=v", Params{Token: "k=v", Mode: ModeReboot}},
		{"prefix is not the key", "xhusk.token=a husk.tokens=b husk.token", Params{Mode: ModeReboot}},
		{"tabs and newlines", "\thusk.token=t\n\nhusk.mode=uname\r\n", Params{Token: "t", Mode: ModeUname}},
		{"empty token", "husk.token= quiet", Params{Mode: ModeReboot}},
		{"unterminated quote", `husk.token="abc def`, Params{Token: "abc def", Mode: ModeReboot}},
		{"after --", "quiet -- husk.token=init-arg", Params{Token: "init-arg", Mode: ModeReboot}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseCmdline(tc.in); got != tc.want {
				t.Fatalf("ParseCmdline(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline(`  a "b c" d="e f"g  h` + "\n")
	want := []string{"a", `"b c"`, `d="e f"g`, "h"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("splitCmdline = %q, want %q", got, want)
	}
}

func TestMemTotalKB(t *testing.T) {
	got, err := MemTotalKB([]byte("MemTotal:         241232 kB\nMemFree:          220000 kB\n"))
	if err != nil || got != 241232 {
		t.Fatalf("MemTotalKB = %d, %v", got, err)
	}
	for _, bad := range []string{"", "MemFree: 1 kB\n", "MemTotal: x kB\n", "MemTotal: 5 MB\n"} {
		if _, err := MemTotalKB([]byte(bad)); err == nil {
			t.Errorf("MemTotalKB(%q) succeeded", bad)
		}
	}
}

func TestCountCPUList(t *testing.T) {
	for in, want := range map[string]int{"0": 1, "0-1\n": 2, "0-3,5": 5, "0,2,4-7": 6, "": 0} {
		if got, err := CountCPUList(in); err != nil || got != want {
			t.Errorf("CountCPUList(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"a", "3-1", "0-", "1,,2", "-1", "0-99999"} {
		if _, err := CountCPUList(bad); err == nil {
			t.Errorf("CountCPUList(%q) succeeded", bad)
		}
	}
}

func TestReportLines(t *testing.T) {
	r := Report{Uname: "6.1.192-husk", Token: "abc", NProc: 2, MemTotalKB: 241232, Clocksource: "kvm-clock"}
	want := "HUSK_UNAME=6.1.192-husk\nHUSK_TOKEN=abc\nHUSK_NPROC=2\nHUSK_MEMTOTAL_KB=241232\nHUSK_CLOCKSOURCE=kvm-clock\nHUSK_INIT_DONE\n"
	if got := r.Lines(); got != want {
		t.Fatalf("Lines:\n%s\nwant:\n%s", got, want)
	}
	r.Token = "evil\nHUSK_INIT_DONE"
	r.Errors = []string{"read x: boom"}
	got := r.Lines()
	if strings.Count(got, "\n") != 7 || !strings.HasSuffix(got, "HUSK_ERROR=read x: boom\nHUSK_INIT_DONE\n") {
		t.Fatalf("a value broke the line structure:\n%s", got)
	}
}

// FuzzParseCmdline checks that any command line parses without panicking,
// yields a known mode, and that a quoted token round-trips.
func FuzzParseCmdline(f *testing.F) {
	f.Add("console=ttyS0 husk.token=abc husk.mode=uname", "abc")
	f.Add(`"husk.token=x y`, "a b")
	f.Add("husk.mode=\"hang\" \t husk.token==", "=\n=")
	f.Fuzz(func(t *testing.T, cmdline, token string) {
		p := ParseCmdline(cmdline)
		switch p.Mode {
		case ModeReboot, ModePanic, ModeUname, ModeHang:
		default:
			t.Fatalf("mode %q from %q", p.Mode, cmdline)
		}
		if p.UnknownMode != "" && p.Mode != ModeReboot {
			t.Fatalf("unknown mode %q but mode %q", p.UnknownMode, p.Mode)
		}
		if strings.ContainsRune(token, '"') {
			return
		}
		line := cmdline + ` husk.token="` + token + `" quiet`
		if strings.Count(cmdline, `"`)%2 != 0 {
			return // an open quote in cmdline swallows ours
		}
		if got := ParseCmdline(line).Token; got != token {
			t.Fatalf("token %q came back as %q from %q", token, got, line)
		}
	})
}
