package eventfd

import "testing"

func TestNotifyRead(t *testing.T) {
	e, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if n, err := e.Read(); n != 0 || err != nil {
		t.Fatalf("empty read = %d, %v", n, err)
	}
	for i := 0; i < 3; i++ {
		if err := e.Notify(); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := e.Read(); n != 3 || err != nil {
		t.Fatalf("read = %d, %v; want 3", n, err)
	}
	if n, _ := e.Read(); n != 0 {
		t.Fatalf("counter not reset: %d", n)
	}
}
