package pid1

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestCmdlineValue(t *testing.T) {
	for _, tc := range []struct {
		cmdline, key, want string
		ok                 bool
	}{
		{"console=ttyS0 husk.hostname=box rw", "husk.hostname", "box", true},
		{"husk.hostname=a husk.hostname=b", "husk.hostname", "b", true},
		{"husk.hostname", "husk.hostname", "", false},
		{"xhusk.hostname=a", "husk.hostname", "", false},
		{"husk.hostname=", "husk.hostname", "", true},
		{"", "husk.hostname", "", false},
	} {
		got, ok := CmdlineValue(tc.cmdline, tc.key)
		if got != tc.want || ok != tc.ok {
			t.Errorf("CmdlineValue(%q) = %q %v", tc.cmdline, got, ok)
		}
	}
}

func TestRestartBudget(t *testing.T) {
	var b restartBudget
	now := time.Unix(1000, 0)
	for i := 0; i < restartLimit; i++ {
		if !b.allow(now.Add(time.Duration(i) * time.Second)) {
			t.Fatalf("restart %d refused", i)
		}
	}
	if b.allow(now.Add(10 * time.Second)) {
		t.Fatal("restart over the limit allowed")
	}
	if !b.allow(now.Add(restartWindow + time.Second)) {
		t.Fatal("restart after the window refused")
	}
}

func TestMountTable(t *testing.T) {
	seen := map[string]bool{}
	for i, m := range Mounts {
		if !strings.HasPrefix(m.Target, "/") || seen[m.Target] {
			t.Errorf("mount %d: bad or duplicate target %q", i, m.Target)
		}
		seen[m.Target] = true
		// A mount's parent must come first (or be the root).
		parent := m.Target[:strings.LastIndex(m.Target, "/")]
		if parent != "" && !seen[parent] && parent != "/sys/fs" {
			t.Errorf("mount %s before its parent %s", m.Target, parent)
		}
	}
	for _, want := range []string{"/proc", "/sys", "/dev", "/dev/pts", "/tmp", "/sys/fs/cgroup"} {
		if !seen[want] {
			t.Errorf("%s is not mounted", want)
		}
	}
}

// TestLoopbackUp brings up lo in a fresh network namespace: a child of the
// test binary, so the test's own namespace is untouched.
func TestLoopbackUp(t *testing.T) {
	if os.Getenv("HUSK_PID1_LOOPBACK_CHILD") == "1" {
		if err := LoopbackUp(); err != nil {
			t.Fatal(err)
		}
		ifr, err := unix.NewIfreq("lo")
		if err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
			t.Fatal(err)
		}
		if ifr.Uint16()&unix.IFF_UP == 0 {
			t.Fatal("lo is not up")
		}
		// 127.0.0.1 answers: a listener and a dial.
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(s)
		if err := unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatalf("bind 127.0.0.1: %v", err)
		}
		return
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true and this test needs root (a network namespace)")
		}
		t.Skip("needs root for a network namespace")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLoopbackUp$", "-test.v")
	cmd.Env = append(os.Environ(), "HUSK_PID1_LOOPBACK_CHILD=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
