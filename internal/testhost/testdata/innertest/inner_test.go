// Package innertest is the Go test binary TestRunGoTest runs inside the
// test host through RunGoTest.
package innertest

import (
	"flag"
	"os"
	"testing"
)

func TestInnerPass(t *testing.T) {
	t.Log("hello from inside")
	for _, name := range []string{"one", "two"} {
		t.Run(name, func(t *testing.T) { t.Logf("subtest %s", name) })
	}
}

func TestInnerSkip(t *testing.T) {
	t.Skip("skipped on purpose")
}

func TestInnerKVM(t *testing.T) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// TestInnerAnomalyOnce fails as a guest that triple-faulted would, unless
// it was selected with -test.run: RunGoTest then ran it again on its own,
// and the rerun passes.
func TestInnerAnomalyOnce(t *testing.T) {
	if flag.Lookup("test.run").Value.String() == "" {
		t.Fatal("husk-vmm said: level=WARN msg=guest_triple_fault vcpu=0 rip=0xfff0")
	}
	t.Log("second run")
}
