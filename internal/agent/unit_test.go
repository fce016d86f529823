package agent

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestResolvePath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{"/a/b", "/a/b", false},
		{"/a/../b/", "/b", false},
		{"rel", "/home/user/rel", false},
		{"~", "/home/user", false},
		{"~/x", "/home/user/x", false},
		{"~x", "/home/user/~x", false},
		{"../../..", "/", false},
		{"", "", true},
		{"a\x00b", "", true},
		{strings.Repeat("a", maxPathLen+1), "", true},
	} {
		got, err := resolvePath(tc.in, "/home/user")
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("resolvePath(%.20q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestUserDB(t *testing.T) {
	etc := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("passwd", "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken line\nuser:x:1000:1000::/home/user:/bin/bash\nuser:x:5:5::/dup:/bin/sh\nbad:x:notanumber:1::/:/bin/sh\n")
	write("group", "root:x:0:\nuser:x:1000:\naudio:x:29:user,other\nsudo:x:27:user\n")
	db := newUserDB(etc)
	u, err := db.Lookup("user")
	if err != nil {
		t.Fatal(err)
	}
	want := &User{Name: "user", UID: 1000, GID: 1000, Groups: []uint32{29, 27}, Home: "/home/user", Shell: "/bin/bash"}
	if !reflect.DeepEqual(u, want) {
		t.Errorf("Lookup(user) = %+v, want %+v", u, want)
	}
	for _, name := range []string{"bad", "nobody", "", "broken line"} {
		if _, err := db.Lookup(name); err == nil {
			t.Errorf("Lookup(%q) succeeded", name)
		}
	}
	if u, g := db.Names(1000, 29); u != "user" || g != "audio" {
		t.Errorf("Names = %s %s", u, g)
	}
	if u, g := db.Names(4242, 4343); u != "4242" || g != "4343" {
		t.Errorf("Names of unknown ids = %s %s", u, g)
	}
	// A changed file is read again.
	write("passwd", "root:x:0:0:root:/root:/bin/bash\nnewbie:x:1001:1001::/home/newbie:/bin/sh\n#longer to change the size\n")
	if _, err := db.Lookup("newbie"); err != nil {
		t.Errorf("after rewrite: %v", err)
	}
}

func FuzzParsePasswd(f *testing.F) {
	f.Add([]byte("root:x:0:0:root:/root:/bin/bash\n"))
	f.Add([]byte("a:b:c\n::::::\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		users, _ := parsePasswd(data)
		for name, u := range users {
			if name == "" || u.Name != name {
				t.Fatalf("bad entry %q -> %+v", name, u)
			}
		}
		parseGroup(data)
	})
}

func TestParseMetadata(t *testing.T) {
	h := http.Header{}
	h.Set("X-Metadata-Owner", "me")
	h.Add("X-Metadata-Owner", "ignored")
	h.Set("X-Metadata-CamelCase", "v w")
	h.Set("Content-Type", "x")
	m, err := parseMetadata(h)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, map[string]string{"owner": "me", "camelcase": "v w"}) {
		t.Errorf("metadata %v", m)
	}
	for name, hdr := range map[string]http.Header{
		"non-ascii value": {"X-Metadata-A": {"é"}},
		"control char":    {"X-Metadata-A": {"a\tb"}},
		"long key":        {"X-Metadata-" + strings.Repeat("k", maxMetaKey+1): {"v"}},
		"too much":        {"X-Metadata-A": {strings.Repeat("v", 3000)}, "X-Metadata-B": {strings.Repeat("v", 3000)}},
	} {
		if _, err := parseMetadata(hdr); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestNegotiateEncoding(t *testing.T) {
	for _, tc := range []struct {
		h, want string
		ok      bool
	}{
		{"", "identity", true},
		{"gzip", "gzip", true},
		{"gzip, deflate", "gzip", true},
		{"br", "identity", true},
		{"gzip;q=0", "identity", true},
		{"identity;q=0", "", false},
		{"*;q=0", "", false},
		{"*;q=0, gzip", "gzip", true},
		{"identity;q=0, gzip;q=0.5", "gzip", true},
	} {
		got, ok := negotiateEncoding(tc.h)
		if got != tc.want || ok != tc.ok {
			t.Errorf("negotiateEncoding(%q) = %q %v", tc.h, got, ok)
		}
	}
}

func inotifyRecord(wd int32, mask uint32, name string, pad int) []byte {
	var b bytes.Buffer
	n := []byte(name)
	if name != "" {
		n = append(n, make([]byte, pad+1)...)
	}
	_ = binary.Write(&b, binary.NativeEndian, struct {
		Wd                int32
		Mask, Cookie, Len uint32
	}{wd, mask, 0, uint32(len(n))})
	b.Write(n)
	return b.Bytes()
}

func TestParseInotify(t *testing.T) {
	buf := append(inotifyRecord(1, 0x100, "a.txt", 2), inotifyRecord(2, 0x8000, "", 0)...)
	var got []string
	err := parseInotify(buf, func(wd int32, mask uint32, name string) bool {
		got = append(got, name)
		return true
	})
	if err != nil || !reflect.DeepEqual(got, []string{"a.txt", ""}) {
		t.Fatalf("got %q, %v", got, err)
	}
	if err := parseInotify(buf[:len(buf)-3], func(int32, uint32, string) bool { return true }); err == nil {
		t.Error("truncated buffer accepted")
	}
	bad := inotifyRecord(1, 1, "x", 0)
	binary.NativeEndian.PutUint32(bad[12:], 1<<31)
	if err := parseInotify(bad, func(int32, uint32, string) bool { return true }); err == nil {
		t.Error("overlong name accepted")
	}
}

func FuzzParseInotify(f *testing.F) {
	f.Add(inotifyRecord(1, 0x100, "a.txt", 3))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, buf []byte) {
		total := 0
		_ = parseInotify(buf, func(wd int32, mask uint32, name string) bool {
			total += inotifyEventHeader + len(name)
			return true
		})
		if total > len(buf) {
			t.Fatalf("parsed %d bytes out of %d", total, len(buf))
		}
	})
}

func TestMergeEnv(t *testing.T) {
	base := baseEnv(&User{Name: "user", Home: "/home/user"}, map[string]string{"A": "1", "PATH": "/x"})
	got := mergeEnv(base, map[string]string{"A": "2", "B": "3"})
	want := []string{"PATH=/x", "HOME=/home/user", "USER=user", "LOGNAME=user", "A=2", "B=3"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("env %q, want %q", got, want)
	}
}

func TestKeepaliveAndTimeoutHeaders(t *testing.T) {
	h := http.Header{}
	if keepaliveInterval(h) != defaultKeepalive || requestTimeout(h) != 0 {
		t.Error("defaults")
	}
	h.Set(keepaliveHeader, "50")
	h.Set(timeoutHeader, "60000")
	if keepaliveInterval(h).Seconds() != 50 || requestTimeout(h).Seconds() != 60 {
		t.Errorf("parsed %v %v", keepaliveInterval(h), requestTimeout(h))
	}
	h.Set(keepaliveHeader, "-1")
	h.Set(timeoutHeader, "99999999999")
	if keepaliveInterval(h) != defaultKeepalive || requestTimeout(h) != 0 {
		t.Error("invalid values")
	}
}

func TestParseCABundle(t *testing.T) {
	if _, err := parseCABundle("not pem"); err == nil {
		t.Error("accepted garbage")
	}
	if _, err := parseCABundle("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"); err == nil {
		t.Error("accepted a bad certificate")
	}
}
