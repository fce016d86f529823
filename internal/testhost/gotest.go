package testhost

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// RunGoTest runs a Go test binary (built with GoBuild(..., true), i.e.
// go test -c) in a test host and reports each of its top-level tests as a
// subtest of t, with that test's output, result and subtests, so that the
// inner tests appear in the outer `go test` run.
//
// spec.Args[0] is the binary's path inside the test host; RunGoTest adds
// -test.v=test2json and, from the timeout, -test.timeout unless given. The
// binary's stdout goes through `go tool test2json`. t fails if the test
// host fails, if no inner test ran, if the binary exits non-zero, or if any
// inner test fails. spec.Timeout defaults to the time left before t's
// deadline, less a margin.
func RunGoTest(t *testing.T, spec Spec) {
	t.Helper()
	RequireQEMU(t)
	if len(spec.Args) == 0 {
		t.Fatal("RunGoTest: empty spec.Args")
	}
	spec.Timeout = testTimeout(t, spec.Timeout)
	args := spec.Args
	spec.Args = goTestArgs(args, spec.Timeout)
	console := &tailWriter{w: io.Discard}
	if spec.Console != nil {
		console.w = spec.Console
	}
	spec.Console = console
	if spec.Progress == nil {
		spec.Progress = testLogWriter{t}
	}
	run := func(spec Spec) func(stdout, stderr io.Writer) (int, error) {
		return func(stdout, stderr io.Writer) (int, error) {
			spec.Stdout, spec.Stderr = stdout, stderr
			code, err := Run(t.Context(), spec)
			if err != nil {
				err = fmt.Errorf("test host: %w", err)
			}
			return code, err
		}
	}
	rerun := func(extra ...string) func(stdout, stderr io.Writer) (int, error) {
		again := spec
		again.Timeout = testTimeout(t, 0)
		// The inner -test.timeout follows the time left, so that a test
		// that hangs in a rerun still dumps its goroutines before the
		// test host is killed.
		again.Args = goTestArgs(append(slices.Clone(args), extra...), again.Timeout)
		return run(again)
	}
	mirrorGoTest(t, spec.Args[0], spec.Stdout, spec.Stderr, run(spec), rerun, console)
}

// guestAnomalies are the known faces of the test host's own failures in a
// husk guest: husk-vmm's log of a triple fault (RIP 0xfff0, no oops, as
// early as the first seconds of boot) and the guest kernel's report of a
// CPU that stopped taking interrupts (an RCU stall). A third face leaves no
// text: a guest that hangs with a device interrupt raised and never
// acknowledged (husk-vmm's SIGUSR1 dump, interrupt_status=1), or mid-line
// in its console while rebooting. All come with interrupt load, and QEMU
// guests hang in the same test hosts; docs/testhost.md gives a suspected
// mechanism in TCG's VMRUN. The test host itself dies too (ErrHostDied: its
// kernel faulting in a loop on an interrupt taken right after VMRUN in
// __svm_vcpu_run, then overflowing its stack). So in the test host a failed
// inner test runs again, in a fresh test host (RERUN names the anomaly if
// one shows), and so does every test not settled when the test host died.
var guestAnomalies = []string{"guest_triple_fault", "detected stalls on CPUs"}

// RunGoTestDirect is RunGoTest for a test binary that runs on this machine
// (where KVM runs Linux guests itself), with environment env and extra
// arguments.
func RunGoTestDirect(t *testing.T, binary string, env []string, timeout time.Duration, extra ...string) {
	t.Helper()
	timeout = testTimeout(t, timeout)
	args := goTestArgs(append([]string{binary, "-test.count=1"}, extra...), timeout)
	mirrorGoTest(t, binary, nil, nil, func(stdout, stderr io.Writer) (int, error) {
		cmd := exec.CommandContext(t.Context(), args[0], args[1:]...)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, stdout, stderr
		cmd.WaitDelay = 10 * time.Second
		err := cmd.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode(), nil
		}
		if err != nil {
			return -1, err
		}
		return 0, nil
	}, nil, nil)
}

// testTimeout returns timeout, or the default, capped by t's deadline less a
// margin.
func testTimeout(t *testing.T, timeout time.Duration) time.Duration {
	if dl, ok := t.Deadline(); ok {
		left := time.Until(dl) - 10*time.Second
		if timeout == 0 || timeout > left {
			timeout = max(left, time.Second)
		}
	}
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	return timeout
}

// attempt is one run of an inner test binary.
type attempt struct {
	rep      *goTestReport
	code     int
	runErr   error       // the binary could not be run
	parseErr error       // its output could not be read
	stderr   *tailWriter // the end of its stderr
}

// runAttempt runs a test binary through run, whose stdout goes through
// `go tool test2json`, and parses its tests.
func runAttempt(t *testing.T, binary string, extraStdout, extraStderr io.Writer, run func(stdout, stderr io.Writer) (int, error)) attempt {
	t.Helper()
	name := strings.TrimSuffix(filepath.Base(binary), ".test")
	conv := exec.CommandContext(t.Context(), goTool(), "tool", "test2json", "-t", "-p", name)
	convIn, err := conv.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	convOut, err := conv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var convErr strings.Builder
	conv.Stderr = &convErr
	if err := conv.Start(); err != nil {
		t.Fatalf("go tool test2json: %v", err)
	}
	type parsed struct {
		rep *goTestReport
		err error
	}
	parsedCh := make(chan parsed, 1)
	go func() {
		rep, err := parseTestEvents(convOut)
		io.Copy(io.Discard, convOut)
		parsedCh <- parsed{rep, err}
	}()

	var stdout io.Writer = convIn
	if extraStdout != nil {
		stdout = io.MultiWriter(convIn, extraStdout)
	}
	a := attempt{stderr: &tailWriter{w: io.Discard}}
	if extraStderr != nil {
		a.stderr.w = extraStderr
	}
	a.code, a.runErr = run(stdout, a.stderr)
	convIn.Close()
	p := <-parsedCh
	if err := conv.Wait(); err != nil && p.err == nil {
		p.err = fmt.Errorf("go tool test2json: %v: %s", err, convErr.String())
	}
	a.rep, a.parseErr = p.rep, p.err
	return a
}

// rerunnable returns the top-level tests that failed, when the binary ran to
// the end, no more than maxFailedToRerun of them failed, and none has been
// rerun maxTestReruns times already; nil otherwise.
func (a attempt) rerunnable(reruns map[string]int) []string {
	if a.runErr != nil || a.parseErr != nil || a.code == 0 {
		return nil
	}
	var names []string
	for _, it := range a.rep.Tests {
		if it.Action == "pass" || it.Action == "skip" {
			continue
		}
		if it.Action == "" || reruns[it.Name] >= maxTestReruns {
			return nil
		}
		names = append(names, it.Name)
	}
	if len(names) > maxFailedToRerun {
		return nil
	}
	return names
}

// anomaly returns the first of guestAnomalies in the test's output or its
// subtests', or "".
func (it *innerTest) anomaly() string {
	for _, s := range guestAnomalies {
		if it.mentions(s) {
			return s
		}
	}
	return ""
}

// mentions reports whether s is in the test's output or its subtests'.
func (it *innerTest) mentions(s string) bool {
	if strings.Contains(it.Output.String(), s) {
		return true
	}
	for _, sub := range it.Sub {
		if sub.mentions(s) {
			return true
		}
	}
	return false
}

// maxReruns caps the fresh test hosts one RunGoTest may start after its
// first; maxTestReruns, how often one failed test runs again. A test that
// fails three times fails, as does one still unsettled after the test host
// died maxReruns times. When more than maxFailedToRerun tests fail in one
// run, something is broken for real: nothing reruns.
const (
	maxReruns        = 4
	maxTestReruns    = 2
	maxFailedToRerun = 6
)

// mirrorGoTest runs a test binary through run and replays its tests as
// subtests of t. extraStdout and extraStderr, if not nil, also get the
// binary's output; console, if not nil, is the test host console whose tail
// is logged on failure. rerun, if not nil, runs the binary again with extra
// arguments, in a fresh test host: for the tests that failed (see
// rerunnable), and, each time the test host died, for every test not yet
// settled; at most maxReruns times. A rerun test's last
// result is the one reported, after its earlier output.
func mirrorGoTest(t *testing.T, binary string, extraStdout, extraStderr io.Writer,
	run func(stdout, stderr io.Writer) (int, error), rerun func(args ...string) func(stdout, stderr io.Writer) (int, error),
	console *tailWriter) {
	t.Helper()
	a := runAttempt(t, binary, extraStdout, extraStderr, run)
	rerunFor := map[string]int{} // how often each test was rerun after failing
	for n := 0; rerun != nil && n < maxReruns; n++ {
		var args []string
		if names := a.rerunnable(rerunFor); len(names) > 0 {
			var why []string
			for _, it := range a.rep.Tests {
				if slices.Contains(names, it.Name) {
					w := "no known anomaly in its output"
					if an := it.anomaly(); an != "" {
						w = fmt.Sprintf("%q in its output", an)
					}
					why = append(why, fmt.Sprintf("%s (%s)", it.Name, w))
				}
			}
			t.Logf("RERUN: failed in the test host, whose nested SVM under TCG fails on its own now and then (docs/testhost.md): %s; running %s again in a fresh test host",
				strings.Join(why, ", "), map[bool]string{true: "it", false: "them"}[len(names) == 1])
			for _, s := range names {
				rerunFor[s]++
			}
			args = []string{"-test.run=^(" + strings.Join(names, "|") + ")$"}
		} else {
			if !errors.Is(a.runErr, ErrHostDied) || a.rep == nil {
				break
			}
			t.Logf("RERUN: %v\nrunning every test that had not settled again in a fresh test host (rerun %d of at most %d)", a.runErr, n+1, maxReruns)
			if console != nil {
				t.Logf("test host console (last bytes) of the run that died:\n%s", console.Tail())
			}
			if done := a.settled(rerunFor); len(done) > 0 {
				args = []string{"-test.skip=^(" + strings.Join(done, "|") + ")$"}
			}
		}
		b := runAttempt(t, binary, extraStdout, extraStderr, rerun(args...))
		if b.rep != nil {
			a.replace(b)
		}
		a.code, a.runErr, a.parseErr, a.stderr = b.code, b.runErr, b.parseErr, b.stderr
	}
	code, rep := a.code, a.rep
	if rep != nil {
		for _, it := range rep.Tests {
			t.Run(shortName(it.Name), it.report)
		}
	}
	if a.runErr != nil {
		t.Fatal(a.runErr)
	}
	if a.parseErr != nil {
		t.Fatalf("reading the test output: %v", a.parseErr)
	}
	bad := false
	if len(rep.Tests) == 0 {
		t.Errorf("%s ran no tests (exit status %d)", binary, code)
		bad = true
	}
	if code != 0 {
		t.Errorf("%s exited with status %d", binary, code)
		bad = true
	}
	if bad || t.Failed() {
		if out := strings.TrimSpace(rep.Output.String()); out != "" {
			t.Logf("test binary output outside tests:\n%s", out)
		}
		if tail := a.stderr.Tail(); tail != "" {
			t.Logf("test binary stderr (last bytes):\n%s", tail)
		}
		if bad && console != nil {
			if tail := console.Tail(); tail != "" {
				t.Logf("test host console (last bytes):\n%s", tail)
			}
		}
	}
}

// settled returns the top-level tests whose result stands: passed, skipped,
// or failed maxTestReruns times after the first.
func (a attempt) settled(reruns map[string]int) []string {
	var names []string
	for _, it := range a.rep.Tests {
		if it.Action == "pass" || it.Action == "skip" || (it.Action == "fail" && reruns[it.Name] >= maxTestReruns) {
			names = append(names, it.Name)
		}
	}
	return names
}

// replace takes b, a rerun of some of a's tests: each test b ran gets b's
// result, after a's output for it; tests only b ran are added; the exit
// status is b's.
func (a *attempt) replace(b attempt) {
	for i, it := range a.rep.Tests {
		j := slices.IndexFunc(b.rep.Tests, func(bt *innerTest) bool { return bt.Name == it.Name })
		if j < 0 {
			continue
		}
		again := b.rep.Tests[j]
		second := again.Output.String()
		again.Output.Reset()
		fmt.Fprintf(&again.Output, "earlier run, %s:\n%s\nrun again:\n%s", firstRunEnd(it), it.cleanOutput(), second)
		a.rep.Tests[i] = again
	}
	for _, bt := range b.rep.Tests {
		if !slices.ContainsFunc(a.rep.Tests, func(it *innerTest) bool { return it.Name == bt.Name }) {
			a.rep.Tests = append(a.rep.Tests, bt)
		}
	}
	a.code = b.code
}

// firstRunEnd says how a test's earlier run ended.
func firstRunEnd(it *innerTest) string {
	if it.Action == "" {
		return "cut short when the test host died"
	}
	if an := it.anomaly(); an != "" {
		return fmt.Sprintf("failed with %q", an)
	}
	return "failed"
}

// goTestArgs adds -test.v=test2json and -test.timeout (a little under the
// test host's timeout, so a hung inner test dumps its goroutines) after
// args[0], unless the caller gave them.
func goTestArgs(args []string, timeout time.Duration) []string {
	hasV, hasTimeout := false, false
	for _, a := range args[1:] {
		a = "-" + strings.TrimLeft(a, "-")
		hasV = hasV || strings.HasPrefix(a, "-test.v")
		hasTimeout = hasTimeout || strings.HasPrefix(a, "-test.timeout")
	}
	out := []string{args[0]}
	if !hasV {
		out = append(out, "-test.v=test2json")
	}
	if !hasTimeout && timeout > 0 {
		inner := timeout - min(30*time.Second, timeout/4)
		out = append(out, "-test.timeout="+inner.String())
	}
	return append(out, args[1:]...)
}

// testLogWriter sends progress lines to t.Log.
type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testEvent is one line of `go tool test2json` output (cmd/test2json).
type testEvent struct {
	Action  string
	Test    string
	Output  string
	Elapsed float64
}

// innerTest is one test of the inner binary.
type innerTest struct {
	Name    string // full name, e.g. TestA/sub
	Action  string // pass, fail, skip; "" if it never finished
	Elapsed float64
	Output  strings.Builder
	Sub     []*innerTest
}

// goTestReport is the parsed run of an inner test binary.
type goTestReport struct {
	Tests  []*innerTest    // top-level tests, in order of first appearance
	Output strings.Builder // output outside any test
	Result string          // the package's pass or fail
}

// maxEventLine caps one test2json line; longer lines are an error.
const maxEventLine = 16 << 20

// parseTestEvents reads test2json events into a tree of tests.
func parseTestEvents(r io.Reader) (*goTestReport, error) {
	rep := &goTestReport{}
	byName := map[string]*innerTest{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxEventLine)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var ev testEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			rep.Output.Write(line) // not an event: keep it as output
			rep.Output.WriteByte('\n')
			continue
		}
		if ev.Test == "" {
			switch ev.Action {
			case "output":
				rep.Output.WriteString(ev.Output)
			case "pass", "fail":
				rep.Result = ev.Action
			}
			continue
		}
		it := byName[ev.Test]
		if it == nil {
			it = &innerTest{Name: ev.Test}
			byName[ev.Test] = it
			if parent := parentTest(byName, ev.Test); parent != nil {
				parent.Sub = append(parent.Sub, it)
			} else {
				rep.Tests = append(rep.Tests, it)
			}
		}
		switch ev.Action {
		case "output":
			it.Output.WriteString(ev.Output)
		case "pass", "fail", "skip":
			it.Action, it.Elapsed = ev.Action, ev.Elapsed
		}
	}
	return rep, sc.Err()
}

// parentTest finds the nearest known ancestor of a subtest name.
func parentTest(byName map[string]*innerTest, name string) *innerTest {
	for {
		i := strings.LastIndexByte(name, '/')
		if i < 0 {
			return nil
		}
		name = name[:i]
		if p := byName[name]; p != nil {
			return p
		}
	}
}

// shortName is the last element of a test name (what t.Run takes).
func shortName(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}

// report replays an inner test as the current subtest t.
func (it *innerTest) report(t *testing.T) {
	if out := it.cleanOutput(); out != "" {
		t.Log("output inside the test host:\n" + out)
	}
	for _, sub := range it.Sub {
		t.Run(shortName(sub.Name), sub.report)
	}
	switch it.Action {
	case "pass":
	case "fail":
		t.Errorf("%s failed inside the test host (%.2fs)", it.Name, it.Elapsed)
	case "skip":
		t.SkipNow()
	default:
		t.Errorf("%s did not finish: the test binary crashed, timed out or was killed", it.Name)
	}
}

// cleanOutput is the test's output without the framing lines (=== RUN,
// --- PASS, ...) that the outer run prints itself.
func (it *innerTest) cleanOutput() string {
	var keep []string
	for _, l := range strings.SplitAfter(it.Output.String(), "\n") {
		s := strings.TrimSpace(l)
		if s == "" {
			continue
		}
		if strings.HasPrefix(s, "=== ") {
			continue
		}
		if strings.HasPrefix(s, "--- ") && strings.Contains(s, ": "+it.Name+" (") {
			continue
		}
		keep = append(keep, strings.TrimRight(l, "\n"))
	}
	return strings.Join(keep, "\n")
}
