package agent

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Authentication (PROTOCOL.md §3.2, §3.5).
//
// Once the agent has an access token, every request but GET /health and
// /files must carry it in X-Access-Token. /files accepts instead a v1 URL
// signature, which binds the path, the operation, the user, the token and an
// optional expiry:
//
//	"v1_" + base64(sha256("<path>:<operation>:<user>:<token>[:<expiration>]")), "=" stripped
//
// The user of a request is chosen separately: by "Authorization: Basic
// base64(<user>:)" on RPCs, by the username query parameter on /files, else the
// default user. Choosing a user is not authentication: whoever holds the
// token may act as any user, exactly as in envd.

const accessTokenHeader = "X-Access-Token"

// Messages the SDK's tests and users see verbatim.
const (
	msgUnauthorized     = "unauthorized access, please provide a valid access token or method signing if supported"
	msgMissingSignature = "missing signature query parameter"
	msgInvalidSignature = "invalid signature"
	msgExpiredSignature = "signature is already expired"
)

// Operations a file URL is signed for.
const (
	opRead  = "read"
	opWrite = "write"
)

// Sign returns the v1 signature of a file URL. user is "" when the URL names
// none; expiration is 0 when the URL does not expire.
func Sign(path, operation, user, token string, expiration int64) string {
	s := path + ":" + operation + ":" + user + ":" + token
	if expiration != 0 {
		s += ":" + strconv.FormatInt(expiration, 10)
	}
	sum := sha256.Sum256([]byte(s))
	return "v1_" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// tokenMatches reports, in constant time, whether got is the token.
func tokenMatches(got, token string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// authError is an authentication failure with the message to send.
type authError struct{ msg string }

func (e *authError) Error() string { return e.msg }

// checkToken enforces X-Access-Token on a request that must carry it.
func checkToken(r *http.Request, token string) error {
	if token == "" {
		return nil
	}
	if tokenMatches(r.Header.Get(accessTokenHeader), token) {
		return nil
	}
	return &authError{msgUnauthorized}
}

// checkFileAccess enforces the /files rule: a matching X-Access-Token, or a
// valid signature of the raw path, operation, raw username and expiry in the
// query. now is the current time.
func checkFileAccess(r *http.Request, token, operation string, now time.Time) error {
	if token == "" {
		return nil
	}
	if h := r.Header.Get(accessTokenHeader); h != "" {
		if tokenMatches(h, token) {
			return nil
		}
		return &authError{msgUnauthorized}
	}
	q := r.URL.Query()
	sig := q.Get("signature")
	if sig == "" {
		return &authError{msgMissingSignature}
	}
	var exp int64
	if e := q.Get("signature_expiration"); e != "" {
		v, err := strconv.ParseInt(e, 10, 64)
		if err != nil || v <= 0 {
			return &authError{msgInvalidSignature}
		}
		exp = v
	}
	want := Sign(q.Get("path"), operation, q.Get("username"), token, exp)
	if subtle.ConstantTimeCompare([]byte(sig), []byte(want)) != 1 {
		return &authError{msgInvalidSignature}
	}
	if exp != 0 && exp < now.Unix() {
		return &authError{msgExpiredSignature}
	}
	return nil
}

// errBadAuthHeader is a malformed Authorization header.
var errBadAuthHeader = errors.New("malformed Authorization header: want Basic base64(<user>:)")

// basicUser returns the user named by "Authorization: Basic base64(user:)",
// or "" when the header is absent.
func basicUser(h http.Header) (string, error) {
	v := h.Get("Authorization")
	if v == "" {
		return "", nil
	}
	scheme, cred, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") || len(cred) > 1024 {
		return "", errBadAuthHeader
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", errBadAuthHeader
	}
	name, _, _ := strings.Cut(string(raw), ":")
	if name == "" {
		return "", fmt.Errorf("%w: empty user", errBadAuthHeader)
	}
	return name, nil
}
