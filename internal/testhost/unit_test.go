package testhost

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// A synthetic modules.dep in depmod's format: each module lists the files
// of its (transitive) dependencies.
const syntheticModulesDep = `kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/vhost/vhost_vsock.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/vhost/vhost.ko kernel/drivers/vhost/vhost_iotlb.ko kernel/net/vmw_vsock/vsock.ko
kernel/drivers/vhost/vhost.ko: kernel/drivers/vhost/vhost_iotlb.ko
kernel/drivers/vhost/vhost_iotlb.ko:
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/a/cyc1.ko: kernel/a/cyc2.ko
kernel/a/cyc2.ko: kernel/a/cyc1.ko
kernel/a/needsmissing.ko: kernel/a/nowhere.ko
`

func TestResolveModules(t *testing.T) {
	g, err := parseModulesDep(strings.NewReader(syntheticModulesDep))
	if err != nil {
		t.Fatal(err)
	}
	builtin, err := readBuiltin(strings.NewReader("kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	deps := func(n string) ([]string, error) { return g.deps[n], nil }

	order, needs, skipped, err := resolveModules(g, builtin, []string{"kvm-amd", "ext4", "vhost_vsock", "virtio_pci", "kvm"}, deps)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(skipped, []string{"ext4"}) {
		t.Errorf("skipped %v, want [ext4]", skipped)
	}
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m]; dup {
			t.Fatalf("%s twice in %v", m, order)
		}
		pos[m] = i
	}
	for name, ds := range g.deps {
		if _, ok := pos[name]; !ok {
			continue
		}
		for _, d := range ds {
			if pos[d] > pos[name] {
				t.Errorf("%s loads before its dependency %s: %v", name, d, order)
			}
		}
	}
	want := []string{"irqbypass", "kvm", "kvm_amd", "vmw_vsock_virtio_transport_common", "vhost_vsock", "virtio_pci"}
	for _, w := range want {
		if _, ok := pos[w]; !ok {
			t.Errorf("%s missing from %v", w, order)
		}
	}
	if len(order) != 12 {
		t.Errorf("order %v: %d modules, want 12", order, len(order))
	}
	if got := needs["kvm_amd"]; !reflect.DeepEqual(got, []string{"kvm", "irqbypass"}) {
		t.Errorf("kvm_amd needs %v, want [kvm irqbypass] (from modules.dep)", got)
	}
	if len(needs["irqbypass"]) != 0 {
		t.Errorf("irqbypass needs %v", needs["irqbypass"])
	}

	for _, tc := range []struct{ want, errPart string }{
		{"cyc1", "cycle"},
		{"needsmissing", "nowhere"},
		{"nonexistent", "neither built in"},
	} {
		if _, _, _, err := resolveModules(g, builtin, []string{tc.want}, deps); err == nil || !strings.Contains(err.Error(), tc.errPart) {
			t.Errorf("%s: err %v, want one mentioning %q", tc.want, err, tc.errPart)
		}
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/arch/x86/kvm/kvm-amd.ko":        "kvm_amd",
		"kvm-amd":                               "kvm_amd",
		"kernel/drivers/block/virtio_blk.ko.xz": "virtio_blk",
		"vsock.ko.zst":                          "vsock",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseModulesDepRejects(t *testing.T) {
	if _, err := parseModulesDep(strings.NewReader("no colon here\n")); err == nil {
		t.Fatal("accepted a line without a colon")
	}
}

// TestRealKernelModules resolves DefaultModules against the cached Debian
// kernel (no modules.dep: dependencies come from .modinfo), if present.
func TestRealKernelModules(t *testing.T) {
	parent, err := kernelCacheDir()
	if err != nil {
		t.Skip(err)
	}
	k, ok := newestCachedKernel(parent)
	if !ok {
		t.Skip("no kernel in the cache; run husk-dev testhost -prepare")
	}
	ms, err := resolveKernelModules(k, DefaultModules)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: load %v; built in %v", k.Release, ms.Order, ms.Builtin)
	idx := map[string]int{}
	for i, m := range ms.Order {
		idx[m] = i
	}
	for _, pair := range [][2]string{{"irqbypass", "kvm"}, {"kvm", "kvm_amd"}, {"virtio", "virtio_pci"}, {"vsock", "vhost_vsock"}} {
		a, okA := idx[pair[0]]
		b, okB := idx[pair[1]]
		if !okA || !okB || a > b {
			t.Errorf("%s must load before %s: %v", pair[0], pair[1], ms.Order)
		}
	}
}

func TestParseKernelDepends(t *testing.T) {
	show := "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nDescription: x\n"
	pkg, ver, err := parseKernelDepends([]byte(show))
	if err != nil || pkg != "linux-image-6.1.0-56-cloud-amd64" || ver != "6.1.192-2" {
		t.Fatalf("got %q %q %v", pkg, ver, err)
	}
	for _, bad := range []string{"Package: x\n", "Depends: linux-image-6.1.0-56-cloud-amd64\n", "Depends: libc6 (= 1)\n"} {
		if _, _, err := parseKernelDepends([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestVersionLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		less bool
	}{
		{"6.1.176-1", "6.1.192-2", true},
		{"6.1.192-2", "6.1.176-1", false},
		{"6.1.99-1", "6.1.100-1", true},
		{"6.1.192-2", "6.1.192-10", true},
		{"6.1.192", "6.1.192-1", true},
		{"6.1.192-1", "6.1.192-1", false},
	} {
		if got := versionLess(tc.a, tc.b); got != tc.less {
			t.Errorf("versionLess(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

func TestQEMUArgs(t *testing.T) {
	s := Spec{Disks: []Disk{{"bin", "/x"}, {"img", "/y"}}, ScratchMiB: 512, Debug: true}
	s.setDefaults()
	args := qemuArgs(Assets{Vmlinuz: "/k", Initramfs: "/i"}, &s, []string{"/c/a,b.ext4", "/c/y"}, "/tmp/s/ctl.sock")
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-accel tcg,thread=multi -cpu max -smp 2 -m 6144M -M q35 -nodefaults -no-user-config -nographic -no-reboot",
		"-device isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-kernel /k -initrd /i",
		"-chardev socket,id=ctl,path=/tmp/s/ctl.sock",
		"-device virtserialport,bus=vser.0,chardev=ctl,name=husk.ctl",
		"-drive file=/c/a,,b.ext4,format=raw,if=none,readonly=on,id=disk0 -device virtio-blk-pci,drive=disk0,serial=bin",
		"-drive file=/c/y,format=raw,if=none,readonly=on,id=disk1 -device virtio-blk-pci,drive=disk1,serial=img",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("missing %q in\n%s", want, line)
		}
	}
	var appendArg string
	for i, a := range args {
		if a == "-append" {
			appendArg = args[i+1]
		}
	}
	if !strings.HasSuffix(appendArg, "husk.disks=bin,img husk.scratch=512 husk.debug=1") {
		t.Errorf("-append %q", appendArg)
	}
}

func TestSpecValidate(t *testing.T) {
	for _, s := range []Spec{
		{}, // no command
		{Args: []string{"x"}, Disks: []Disk{{"a/b", "/"}}},
		{Args: []string{"x"}, Disks: []Disk{{"a", "/"}, {"a", "/"}}},
		{Args: []string{"x"}, CPUs: -1},
		{Args: []string{"x"}, Env: []string{"NOVALUE"}},
	} {
		s.setDefaults()
		if err := s.validate(); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
	ok := Spec{Args: []string{"/artifacts/bin/x", "-v"}, Disks: []Disk{{"bin", "/"}}}
	ok.setDefaults()
	if err := ok.validate(); err != nil {
		t.Error(err)
	}
}

func TestGoTestArgs(t *testing.T) {
	got := goTestArgs([]string{"/a/x.test", "-test.run=Foo"}, 10*time.Minute)
	want := []string{"/a/x.test", "-test.v=test2json", "-test.timeout=9m30s", "-test.run=Foo"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	got = goTestArgs([]string{"/a/x.test", "--test.v=true", "-test.timeout=1m"}, time.Minute)
	if len(got) != 3 {
		t.Errorf("added flags the caller gave: %q", got)
	}
}

const sampleEvents = `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"p","Test":"TestA","Output":"    a_test.go:9: hello\n"}
{"Action":"run","Package":"p","Test":"TestA/sub"}
{"Action":"output","Package":"p","Test":"TestA/sub","Output":"    --- FAIL: TestA/sub (0.00s)\n"}
{"Action":"output","Package":"p","Test":"TestA/sub","Output":"        a_test.go:12: boom\n"}
{"Action":"fail","Package":"p","Test":"TestA/sub","Elapsed":0}
{"Action":"output","Package":"p","Test":"TestA","Output":"--- FAIL: TestA (0.01s)\n"}
{"Action":"fail","Package":"p","Test":"TestA","Elapsed":0.01}
{"Action":"run","Package":"p","Test":"TestB"}
{"Action":"output","Package":"p","Test":"TestB","Output":"--- SKIP: TestB (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestB","Elapsed":0}
{"Action":"run","Package":"p","Test":"TestC"}
{"Action":"output","Package":"p","Test":"TestC","Output":"panic: oops\n"}
not json at all
{"Action":"output","Package":"p","Output":"FAIL\n"}
{"Action":"fail","Package":"p","Elapsed":0.02}
`

func TestParseTestEvents(t *testing.T) {
	rep, err := parseTestEvents(strings.NewReader(sampleEvents))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tests) != 3 {
		t.Fatalf("%d top-level tests, want 3", len(rep.Tests))
	}
	a, b, c := rep.Tests[0], rep.Tests[1], rep.Tests[2]
	if a.Name != "TestA" || a.Action != "fail" || len(a.Sub) != 1 || a.Sub[0].Name != "TestA/sub" || a.Sub[0].Action != "fail" {
		t.Errorf("TestA: %+v", a)
	}
	if got := a.cleanOutput(); got != "    a_test.go:9: hello" {
		t.Errorf("TestA output %q", got)
	}
	if got := a.Sub[0].cleanOutput(); got != "        a_test.go:12: boom" {
		t.Errorf("TestA/sub output %q", got)
	}
	if b.Action != "skip" || c.Action != "" {
		t.Errorf("TestB %q, TestC %q", b.Action, c.Action)
	}
	if rep.Result != "fail" || !strings.Contains(rep.Output.String(), "not json at all") {
		t.Errorf("package result %q, output %q", rep.Result, rep.Output.String())
	}
}

// events builds test2json lines: for each test name, its output line and
// its result.
func events(tests ...[3]string) string {
	var b strings.Builder
	for _, e := range tests {
		fmt.Fprintf(&b, `{"Action":"run","Test":%q}`+"\n", e[0])
		fmt.Fprintf(&b, `{"Action":"output","Test":%q,"Output":%q}`+"\n", e[0], e[1]+"\n")
		fmt.Fprintf(&b, `{"Action":%q,"Test":%q,"Elapsed":1}`+"\n", e[2], e[0])
	}
	return b.String()
}

func TestAnomalyRerun(t *testing.T) {
	parse := func(s string) *goTestReport {
		rep, err := parseTestEvents(strings.NewReader(s))
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	tripleFault := "husk-vmm said: level=WARN msg=guest_triple_fault vcpu=0 rip=0xfff0"
	first := attempt{code: 1, rep: parse(events(
		[3]string{"TestA", "ok", "pass"},
		[3]string{"TestB", tripleFault, "fail"},
		[3]string{"TestC", "skipped", "skip"},
		[3]string{"TestD", "guest console: rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "fail"},
	))}
	if got := first.rerunnable(nil); !reflect.DeepEqual(got, []string{"TestB", "TestD"}) {
		t.Fatalf("rerun %q, want TestB and TestD", got)
	}
	if first.rep.Tests[1].anomaly() != "guest_triple_fault" || first.rep.Tests[3].anomaly() != "detected stalls on CPUs" || first.rep.Tests[0].anomaly() != "" {
		t.Errorf("anomalies %q %q %q", first.rep.Tests[1].anomaly(), first.rep.Tests[3].anomaly(), first.rep.Tests[0].anomaly())
	}
	// A test that was rerun twice already stops the reruns.
	if got := first.rerunnable(map[string]int{"TestD": maxTestReruns}); got != nil {
		t.Fatalf("rerun %q after TestD's last rerun", got)
	}
	// More failures than maxFailedToRerun: broken for real, nothing reruns.
	var many [][3]string
	for i := range maxFailedToRerun + 1 {
		many = append(many, [3]string{fmt.Sprintf("TestX%d", i), "boom", "fail"})
	}
	if got := (attempt{code: 1, rep: parse(events(many...))}).rerunnable(nil); got != nil {
		t.Fatalf("rerun %q of %d failures", got, len(many))
	}
	// A binary that did not finish (timeout, crash) is not rerun either.
	unfinished := attempt{code: 2, rep: parse(`{"Action":"run","Test":"TestB"}` + "\n" + `{"Action":"output","Test":"TestB","Output":"` + tripleFault + `\n"}` + "\n")}
	if got := unfinished.rerunnable(nil); got != nil {
		t.Fatalf("rerun %q of an unfinished run", got)
	}

	second := attempt{code: 0, rep: parse(events([3]string{"TestB", "fine now", "pass"}, [3]string{"TestD", "fine too", "pass"}))}
	first.replace(second)
	if first.code != 0 || len(first.rep.Tests) != 4 {
		t.Fatalf("after the rerun: status %d, %d tests", first.code, len(first.rep.Tests))
	}
	b := first.rep.Tests[1]
	if b.Action != "pass" || !strings.Contains(b.cleanOutput(), tripleFault) || !strings.HasSuffix(b.cleanOutput(), "run again:\nfine now") {
		t.Fatalf("TestB after the rerun: %s, output %q", b.Action, b.cleanOutput())
	}
	if a := first.rep.Tests[0]; a.Action != "pass" || a.cleanOutput() != "ok" {
		t.Fatalf("TestA changed: %s %q", a.Action, a.cleanOutput())
	}

	// The test host died in TestF: what passed, and a failure with no rerun
	// left, stand; the rest runs again, with the tests the first run never
	// reached.
	died := attempt{rep: parse(events(
		[3]string{"TestA", "ok", "pass"},
		[3]string{"TestE", "boom", "fail"},
		[3]string{"TestB", tripleFault, "fail"},
	) + `{"Action":"run","Test":"TestF"}` + "\n")}
	if got := died.settled(map[string]int{"TestE": maxTestReruns, "TestB": 1}); !reflect.DeepEqual(got, []string{"TestA", "TestE"}) {
		t.Fatalf("settled %q, want TestA and TestE", got)
	}
	died.replace(attempt{code: 1, rep: parse(events(
		[3]string{"TestB", "fine", "pass"},
		[3]string{"TestF", "fine", "pass"},
		[3]string{"TestG", "new", "pass"},
	))})
	var got []string
	for _, it := range died.rep.Tests {
		got = append(got, it.Name+":"+it.Action)
	}
	if want := []string{"TestA:pass", "TestE:fail", "TestB:pass", "TestF:pass", "TestG:pass"}; !reflect.DeepEqual(got, want) || died.code != 1 {
		t.Fatalf("after the rerun %q status %d, want %q status 1", got, died.code, want)
	}
	if out := died.rep.Tests[3].cleanOutput(); !strings.HasPrefix(out, "earlier run, cut short when the test host died:") {
		t.Fatalf("TestF output %q", out)
	}
}

func TestPrintable(t *testing.T) {
	if got := printable([]byte("a\x00b\xffc\n\tz\n"), 100); got != "a\\x00b\ufffdc\n\tz" {
		t.Errorf("got %q", got)
	}
	if got := printable(bytes.Repeat([]byte("x"), 10), 4); got != "xxxx" {
		t.Errorf("got %q", got)
	}
}

func TestTailWriter(t *testing.T) {
	var all bytes.Buffer
	tw := &tailWriter{w: &all}
	for i := 0; i < 3000; i++ {
		tw.Write([]byte("line\n"))
	}
	if all.Len() != 3000*5 {
		t.Errorf("passed on %d bytes", all.Len())
	}
	tail := tw.Tail()
	if len(tail) > consoleTail || !strings.HasPrefix(tail, "line") {
		t.Errorf("tail of %d bytes starting %q", len(tail), tail[:10])
	}
}

func TestWriteInitramfs(t *testing.T) {
	dir := t.TempDir()
	for _, m := range []string{"a.ko", "b-c.ko"} {
		if err := os.WriteFile(filepath.Join(dir, m), []byte("module "+m), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	ms := moduleSet{Order: []string{"a", "b_c"}, Files: []string{"a.ko", "b-c.ko"}, Needs: map[string][]string{"b_c": {"a"}}}
	err := writeInitramfs(&buf, []byte("\x7fELF init"), dir, ms)
	if err != nil {
		t.Fatal(err)
	}
	data := buf.String()
	for _, want := range []string{"init\x00", "\x7fELF init", "modules/order\x00", "a.ko\nb-c.ko a.ko\n", "modules/b-c.ko\x00", "module b-c.ko", "dev/console\x00", "TRAILER!!!"} {
		if !strings.Contains(data, want) {
			t.Errorf("initramfs lacks %q", want)
		}
	}
	if buf.Len()%4 != 0 {
		t.Errorf("length %d not 4-aligned", buf.Len())
	}
}

func TestHashDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("1"), 0o755)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.Symlink("f", filepath.Join(dir, "l"))
	h1, n, blocks, err := hashDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 || blocks != 4 {
		t.Errorf("entries %d blocks %d, want 4 and 4", n, blocks)
	}
	os.WriteFile(filepath.Join(dir, "f"), []byte("2"), 0o755)
	h2, _, _, _ := hashDir(dir)
	os.Chmod(filepath.Join(dir, "f"), 0o644)
	h3, _, _, _ := hashDir(dir)
	if h1 == h2 || h2 == h3 {
		t.Errorf("hash ignores content or mode: %s %s %s", h1, h2, h3)
	}
}

// TestReruns drives mirrorGoTest with fake test hosts that die in the
// middle of a test, or in which tests fail, before a run that passes:
// each rerun runs what had not settled, and every test is reported once,
// passed.
func TestReruns(t *testing.T) {
	// What -test.v prints (test2json reads it) for tests that pass, for a
	// test that fails with a triple fault, and for one that never ends.
	pass := func(w io.Writer, names ...string) {
		for _, n := range names {
			fmt.Fprintf(w, "=== RUN   %s\n--- PASS: %s (0.00s)\n", n, n)
		}
	}
	tripleFault := func(w io.Writer, name string) (int, error) {
		fmt.Fprintf(w, "=== RUN   %s\n    x_test.go:1: husk-vmm: level=WARN msg=guest_triple_fault rip=0xfff0\n--- FAIL: %s (0.00s)\nFAIL\n", name, name)
		return 1, nil
	}
	cut := func(w io.Writer, name string) (int, error) {
		fmt.Fprintf(w, "=== RUN   %s\nhalf way\n", name)
		return -1, fmt.Errorf("%w: qemu exited", ErrHostDied)
	}
	done := func(w io.Writer) (int, error) { fmt.Fprintln(w, "PASS"); return 0, nil }
	type host func(stdout io.Writer) (int, error)
	for _, tc := range []struct {
		name  string
		hosts []host
		args  [][]string // of each run
	}{
		{"host dies twice", []host{
			func(w io.Writer) (int, error) { pass(w, "TestA"); return cut(w, "TestB") },
			func(w io.Writer) (int, error) { pass(w, "TestB"); return cut(w, "TestC") },
			func(w io.Writer) (int, error) { pass(w, "TestC", "TestD"); return done(w) },
		}, [][]string{nil, {"-test.skip=^(TestA)$"}, {"-test.skip=^(TestA|TestB)$"}}},
		{"two triple faults and a death", []host{
			func(w io.Writer) (int, error) { pass(w, "TestA"); return tripleFault(w, "TestB") },
			func(w io.Writer) (int, error) { return tripleFault(w, "TestB") },
			func(w io.Writer) (int, error) { return cut(w, "TestB") },
			func(w io.Writer) (int, error) { pass(w, "TestB"); return done(w) },
		}, [][]string{nil, {"-test.run=^(TestB)$"}, {"-test.run=^(TestB)$"}, {"-test.skip=^(TestA)$"}}},
		{"a failure with no known anomaly", []host{
			func(w io.Writer) (int, error) {
				fmt.Fprintf(w, "=== RUN   TestA\n    x_test.go:1: did not finish within 3m0s\n--- FAIL: TestA (0.00s)\n")
				pass(w, "TestB")
				fmt.Fprintln(w, "FAIL")
				return 1, nil
			},
			func(w io.Writer) (int, error) { pass(w, "TestA"); return done(w) },
		}, [][]string{nil, {"-test.run=^(TestA)$"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var args [][]string
			hosts := tc.hosts
			next := func(a ...string) func(stdout, stderr io.Writer) (int, error) {
				args = append(args, a)
				return func(stdout, _ io.Writer) (int, error) {
					h := hosts[0]
					hosts = hosts[1:]
					return h(stdout)
				}
			}
			// mirror fails unless every inner test ends up passed and the
			// last run exits 0.
			t.Run("mirror", func(t *testing.T) {
				mirrorGoTest(t, "inner.test", nil, nil, next(), next, nil)
			})
			if len(hosts) != 0 {
				t.Fatalf("%d test hosts not started", len(hosts))
			}
			if !reflect.DeepEqual(args, tc.args) {
				t.Errorf("arguments of the runs %q, want %q", args, tc.args)
			}
		})
	}
}

// TestRerunsGiveUp: a test that fails in every run fails after its two
// reruns. mirrorGoTest's failure is seen from outside, in a child process
// running TestRerunsGiveUpChild.
func TestRerunsGiveUp(t *testing.T) {
	if os.Getenv("HUSK_RERUN_CHILD") == "1" {
		t.Skip("the child's own run")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRerunsGiveUpChild$", "-test.v")
	cmd.Env = append(os.Environ(), "HUSK_RERUN_CHILD=1")
	out, err := cmd.CombinedOutput()
	runs := strings.Count(string(out), "RERUN: failed in the test host")
	if err == nil || runs != maxTestReruns || !strings.Contains(string(out), "--- FAIL: TestRerunsGiveUpChild/mirror/TestA") {
		t.Fatalf("child: %v, %d reruns, output:\n%s", err, runs, out)
	}
}

func TestRerunsGiveUpChild(t *testing.T) {
	if os.Getenv("HUSK_RERUN_CHILD") != "1" {
		t.Skip("run by TestRerunsGiveUp")
	}
	fail := func(args ...string) func(stdout, stderr io.Writer) (int, error) {
		return func(w, _ io.Writer) (int, error) {
			fmt.Fprintf(w, "=== RUN   TestA\n    x_test.go:1: boom\n--- FAIL: TestA (0.00s)\nFAIL\n")
			return 1, nil
		}
	}
	t.Run("mirror", func(t *testing.T) {
		mirrorGoTest(t, "inner.test", nil, nil, fail(), fail, nil)
	})
}
