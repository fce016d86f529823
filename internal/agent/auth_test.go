package agent

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"
)

// The static vector of the SDK's signing tests (PROTOCOL.md §3.5).
func TestSignVector(t *testing.T) {
	got := Sign("hello.txt", "read", "user", "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0", 0)
	if want := "v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E"; got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestCheckFileAccess(t *testing.T) {
	const token = "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0"
	now := time.Unix(1_800_000_000, 0)
	future := now.Add(time.Minute).Unix()
	past := now.Add(-time.Minute).Unix()
	q := func(kv ...string) string {
		v := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v.Encode()
	}
	exp := func(e int64) string { return strconv.FormatInt(e, 10) }
	for _, tc := range []struct {
		name, method, query, header, token string
		want                               string // "" for allowed
	}{
		{"no token configured", "GET", "path=a", "", "", ""},
		{"header", "GET", "path=a", token, token, ""},
		{"wrong header", "GET", "path=a", "nope", token, msgUnauthorized},
		{"no signature", "GET", "path=a", "", token, msgMissingSignature},
		{"signature", "GET", q("path", "hello.txt", "username", "user", "signature", Sign("hello.txt", "read", "user", token, 0)), "", token, ""},
		{"signature no user", "GET", q("path", "hello.txt", "signature", Sign("hello.txt", "read", "", token, 0)), "", token, ""},
		{"read signature used to write", "POST", q("path", "hello.txt", "signature", Sign("hello.txt", "read", "", token, 0)), "", token, msgInvalidSignature},
		{"write signature", "POST", q("path", "hello.txt", "signature", Sign("hello.txt", "write", "", token, 0)), "", token, ""},
		{"other path", "GET", q("path", "other.txt", "signature", Sign("hello.txt", "read", "", token, 0)), "", token, msgInvalidSignature},
		{"other user", "GET", q("path", "hello.txt", "username", "root", "signature", Sign("hello.txt", "read", "user", token, 0)), "", token, msgInvalidSignature},
		{"unexpired", "GET", q("path", "a", "signature", Sign("a", "read", "", token, future), "signature_expiration", exp(future)), "", token, ""},
		{"expired", "GET", q("path", "a", "signature", Sign("a", "read", "", token, past), "signature_expiration", exp(past)), "", token, msgExpiredSignature},
		{"expiry stripped", "GET", q("path", "a", "signature", Sign("a", "read", "", token, future)), "", token, msgInvalidSignature},
		{"bad expiry", "GET", q("path", "a", "signature", "v1_x", "signature_expiration", "soon"), "", token, msgInvalidSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, "/files?"+tc.query, nil)
			if tc.header != "" {
				r.Header.Set(accessTokenHeader, tc.header)
			}
			op := opRead
			if tc.method == http.MethodPost {
				op = opWrite
			}
			err := checkFileAccess(r, tc.token, op, now)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestBasicUser(t *testing.T) {
	for _, tc := range []struct {
		header, want string
		err          bool
	}{
		{"", "", false},
		{"Basic cm9vdDo=", "root", false},
		{"basic dXNlcjo=", "user", false},
		{"Basic dXNlcg==", "user", false}, // no colon
		{"Bearer x", "", true},
		{"Basic !!!", "", true},
		{"Basic Og==", "", true}, // ":" only
	} {
		h := http.Header{}
		if tc.header != "" {
			h.Set("Authorization", tc.header)
		}
		got, err := basicUser(h)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("basicUser(%q) = %q, %v", tc.header, got, err)
		}
	}
}

func FuzzBasicUser(f *testing.F) {
	f.Add("Basic cm9vdDo=")
	f.Add("Basic ")
	f.Fuzz(func(t *testing.T, v string) {
		h := http.Header{}
		h.Set("Authorization", v)
		name, err := basicUser(h)
		if err == nil && v != "" && name == "" {
			t.Fatalf("accepted %q with an empty user", v)
		}
	})
}
