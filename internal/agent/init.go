package agent

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// /init and /envs (PROTOCOL.md §3.5, envd.yaml).

const (
	maxInitBody     = 4 << 20
	maxInitEnvs     = 4 << 10
	maxTokenLen     = 4 << 10
	clockSkewToSet  = time.Second
	maxCABundleSize = 2 << 20
)

// initRequest is the body of POST /init. Every field is optional.
type initRequest struct {
	EnvVars        map[string]string `json:"envVars"`
	AccessToken    *string           `json:"accessToken"`
	Timestamp      *time.Time        `json:"timestamp"`
	DefaultUser    *string           `json:"defaultUser"`
	DefaultWorkdir *string           `json:"defaultWorkdir"`
	CABundle       string            `json:"caBundle"`
	// Accepted and not acted on yet: volumes and E2B's network hooks.
	VolumeMounts []json.RawMessage `json:"volumeMounts"`
	HyperloopIP  string            `json:"hyperloopIP"`
	LifecycleID  string            `json:"lifecycleID"`
}

// serveInit applies the host's settings: environment variables (merged into
// the sandbox's), the access token, the default user and workdir, the wall
// clock and extra CA certificates. It answers 204.
func (s *Server) serveInit(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxInitBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("read body: %v", err))
		return
	}
	var req initRequest
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid JSON body: %v", err))
			return
		}
	}
	if len(req.EnvVars) > maxInitEnvs {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("more than %d envVars", maxInitEnvs))
		return
	}
	for k, v := range req.EnvVars {
		if err := validEnvName(k); err != nil {
			writeError(w, http.StatusBadRequest, "envVars: "+err.Error())
			return
		}
		if strings.IndexByte(v, 0) >= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("envVars: value of %s contains NUL", k))
			return
		}
	}
	if req.AccessToken != nil && len(*req.AccessToken) > maxTokenLen {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("accessToken longer than %d bytes", maxTokenLen))
		return
	}
	if req.DefaultUser != nil && *req.DefaultUser != "" {
		if _, err := s.users.Lookup(*req.DefaultUser); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("defaultUser: %v", err))
			return
		}
	}
	if req.DefaultWorkdir != nil && *req.DefaultWorkdir != "" {
		if len(*req.DefaultWorkdir) > maxPathLen || strings.IndexByte(*req.DefaultWorkdir, 0) >= 0 {
			writeError(w, http.StatusBadRequest, "defaultWorkdir: invalid path")
			return
		}
	}
	var certs []byte
	if req.CABundle != "" {
		if certs, err = parseCABundle(req.CABundle); err != nil {
			writeError(w, http.StatusBadRequest, "caBundle: "+err.Error())
			return
		}
	}

	s.mu.Lock()
	for k, v := range req.EnvVars {
		s.env[k] = v
	}
	if req.AccessToken != nil {
		s.token = *req.AccessToken
	}
	if req.DefaultUser != nil && *req.DefaultUser != "" {
		s.defUser = *req.DefaultUser
	}
	if req.DefaultWorkdir != nil {
		s.defWorkdir = *req.DefaultWorkdir
	}
	s.mu.Unlock()

	if s.cfg.ManageSystem {
		if req.Timestamp != nil {
			if d := time.Since(*req.Timestamp); d > clockSkewToSet || d < -clockSkewToSet {
				ts := unix.NsecToTimespec(req.Timestamp.UnixNano())
				if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
					s.log.Warn("set clock", "err", err)
				}
			}
		}
		if certs != nil {
			if err := appendCABundle(s.cfg.CABundle, certs); err != nil {
				writeError(w, http.StatusInternalServerError, "caBundle: "+err.Error())
				return
			}
		}
	}
	s.log.Info("init", "envs", len(req.EnvVars), "token_set", req.AccessToken != nil,
		"default_user", s.defaultUser(), "volume_mounts", len(req.VolumeMounts))
	w.WriteHeader(http.StatusNoContent)
}

// parseCABundle checks that bundle is one or more PEM certificates and
// returns them re-encoded.
func parseCABundle(bundle string) ([]byte, error) {
	if len(bundle) > maxCABundleSize {
		return nil, fmt.Errorf("larger than %d bytes", maxCABundleSize)
	}
	var out bytes.Buffer
	rest := []byte(bundle)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q is not a CERTIFICATE", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return nil, err
		}
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes})
	}
	if out.Len() == 0 {
		return nil, errors.New("no PEM certificate")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after the last PEM certificate")
	}
	return out.Bytes(), nil
}

// appendCABundle adds each certificate in certs to the trust store at path
// unless it is there already.
func appendCABundle(path string, certs []byte) error {
	have, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var add bytes.Buffer
	rest := certs
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		enc := pem.EncodeToMemory(b)
		if !bytes.Contains(have, enc) {
			add.Write(enc)
		}
	}
	if add.Len() == 0 {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if len(have) > 0 && have[len(have)-1] != '\n' {
		if _, err := f.Write([]byte("\n")); err != nil {
			f.Close()
			return err
		}
	}
	if _, err := f.Write(add.Bytes()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// serveEnvs answers the sandbox's environment variables.
func (s *Server) serveEnvs(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.sandboxEnv())
}
