package kvm

import "testing"

func TestProbeSpeed(t *testing.T) {
	requireKVM(t)
	d, err := ProbeSpeed()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("probe loop: %v (Linux-capable: %v)", d, d <= LinuxSpeedLimit)
}
