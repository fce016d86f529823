package agent

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// GET and POST /files (PROTOCOL.md §3.5).

const (
	maxUploadParts = 1000
	copyBufSize    = 1 << 20
)

// uploadedEntry is one element of the upload response.
type uploadedEntry struct {
	Name     string            `json:"name"`
	Path     string            `json:"path"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// fileUser authorises a /files request and returns its user.
func (s *Server) fileUser(w http.ResponseWriter, r *http.Request, op string) (*User, bool) {
	if err := checkFileAccess(r, s.accessToken(), op, time.Now()); err != nil {
		writeError(w, http.StatusUnauthorized, err.Error())
		return nil, false
	}
	name := r.URL.Query().Get("username")
	if name == "" {
		name = s.defaultUser()
	}
	u, err := s.users.Lookup(name)
	if err != nil {
		writeError(w, http.StatusUnauthorized, fmt.Sprintf("error looking up user '%.256s': %v", name, err))
		return nil, false
	}
	return u, true
}

func (s *Server) serveDownload(w http.ResponseWriter, r *http.Request) {
	u, ok := s.fileUser(w, r, opRead)
	if !ok {
		return
	}
	raw := r.URL.Query().Get("path")
	if raw == "" {
		writeError(w, http.StatusBadRequest, "path query parameter is required")
		return
	}
	p, err := resolvePath(raw, u.Home)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	f, err := os.Open(p)
	if err != nil {
		s.writeFileError(w, p, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		s.writeFileError(w, p, err)
		return
	}
	if fi.IsDir() {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("path '%s' is a directory", p))
		return
	}
	if !fi.Mode().IsRegular() {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("path '%s' is not a regular file", p))
		return
	}
	enc, ok := negotiateEncoding(r.Header.Get("Accept-Encoding"))
	if !ok {
		writeError(w, http.StatusNotAcceptable, "no acceptable encoding found, supported: [identity, gzip]")
		return
	}
	w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": filepath.Base(p)}))
	w.Header().Add("Vary", "Accept-Encoding")
	if enc == "gzip" && r.Header.Get("Range") == "" {
		w.Header().Set("Content-Encoding", "gzip")
		if ct := mime.TypeByExtension(filepath.Ext(p)); ct != "" {
			w.Header().Set("Content-Type", ct)
		} else {
			w.Header().Set("Content-Type", "application/octet-stream")
		}
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return
		}
		zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		if _, err := io.CopyBuffer(zw, f, make([]byte, copyBufSize)); err != nil {
			s.log.Debug("download interrupted", "path", p, "err", err)
			return
		}
		_ = zw.Close()
		return
	}
	http.ServeContent(w, r, filepath.Base(p), fi.ModTime(), f)
}

// negotiateEncoding picks gzip or identity from an Accept-Encoding header,
// preferring gzip when the client accepts it; ok is false when neither is
// acceptable.
func negotiateEncoding(h string) (string, bool) {
	if strings.TrimSpace(h) == "" {
		return "identity", true
	}
	q := map[string]float64{}
	for _, part := range strings.Split(h, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		name = strings.ToLower(strings.TrimSpace(name))
		v := 1.0
		for _, p := range strings.Split(params, ";") {
			k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
			if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
				if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
					v = f
				}
			}
		}
		if name != "" {
			q[name] = v
		}
	}
	accept := func(c string) bool {
		if v, ok := q[c]; ok {
			return v > 0
		}
		if v, ok := q["*"]; ok {
			return v > 0
		}
		return c == "identity"
	}
	if accept("gzip") {
		return "gzip", true
	}
	if accept("identity") {
		return "identity", true
	}
	return "", false
}

func (s *Server) writeFileError(w http.ResponseWriter, p string, err error) {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		writeError(w, http.StatusNotFound, fmt.Sprintf("path '%s' does not exist", p))
	case errors.Is(err, unix.ENOTDIR):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("path '%s': a path component is not a directory", p))
	case errors.Is(err, unix.EISDIR):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("path '%s' is a directory", p))
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENAMETOOLONG):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("path '%s': %v", p, err))
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		writeError(w, http.StatusInsufficientStorage, "not enough disk space available")
	case errors.Is(err, errNoXattr):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("path '%s': %v", p, err))
	default:
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("path '%s': %v", p, err))
	}
}

// badUpload is a client error found while reading an upload.
type badUpload struct{ msg string }

func (e *badUpload) Error() string { return e.msg }

func (s *Server) serveUpload(w http.ResponseWriter, r *http.Request) {
	u, ok := s.fileUser(w, r, opWrite)
	if !ok {
		return
	}
	meta, err := parseMetadata(r.Header)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctype, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Content-Type %q: want multipart/form-data or application/octet-stream", r.Header.Get("Content-Type")))
		return
	}
	body := io.Reader(r.Body)
	switch ce := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); ce {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("gzip body: %v", err))
			return
		}
		defer zr.Close()
		body = zr
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Content-Encoding %q: want gzip or identity", ce))
		return
	}
	qpath := r.URL.Query().Get("path")

	var out []uploadedEntry
	switch ctype {
	case "application/octet-stream":
		if qpath == "" {
			writeError(w, http.StatusBadRequest, "path query parameter is required for application/octet-stream")
			return
		}
		e, status, err := s.receiveFile(qpath, body, u, meta)
		if err != nil {
			s.writeUploadError(w, status, err)
			return
		}
		out = append(out, e)
	case "multipart/form-data":
		boundary := params["boundary"]
		if boundary == "" {
			writeError(w, http.StatusBadRequest, "multipart/form-data without a boundary")
			return
		}
		mr := multipart.NewReader(body, boundary)
		seen := map[string]bool{}
		for parts := 0; ; parts++ {
			part, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("multipart body: %v", err))
				return
			}
			if parts >= maxUploadParts {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("more than %d parts", maxUploadParts))
				return
			}
			if part.FormName() != "file" {
				part.Close()
				continue
			}
			// The filename is the target path and may contain slashes, so
			// it is read from the header: Part.FileName keeps only the base.
			_, dp, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
			target := dp["filename"]
			if qpath != "" {
				target = qpath
			}
			if target == "" {
				writeError(w, http.StatusBadRequest, "a file part has no filename and there is no path query parameter")
				return
			}
			abs, err := resolvePath(target, u.Home)
			if err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			if seen[abs] {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("path '%s' is uploaded twice in one request", abs))
				return
			}
			seen[abs] = true
			e, status, err := s.receiveFile(target, part, u, meta)
			part.Close()
			if err != nil {
				s.writeUploadError(w, status, err)
				return
			}
			out = append(out, e)
		}
		if len(out) == 0 {
			writeError(w, http.StatusBadRequest, "no part named \"file\" in the multipart body")
			return
		}
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Content-Type %q: want multipart/form-data or application/octet-stream", ctype))
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) writeUploadError(w http.ResponseWriter, status int, err error) {
	if status != 0 {
		writeError(w, status, err.Error())
		return
	}
	var pe *fs.PathError
	p := ""
	if errors.As(err, &pe) {
		p = pe.Path
	}
	s.writeFileError(w, p, err)
}

// receiveFile writes r to target (a request path) for u, creating parent
// directories, and replaces its metadata. status is non-zero for errors
// that carry their own HTTP status.
func (s *Server) receiveFile(target string, r io.Reader, u *User, meta map[string]string) (uploadedEntry, int, error) {
	p, err := resolvePath(target, u.Home)
	if err != nil {
		return uploadedEntry{}, http.StatusBadRequest, err
	}
	if err := mkdirAllOwned(filepath.Dir(p), u.UID, u.GID); err != nil {
		if errors.Is(err, unix.ENOTDIR) {
			return uploadedEntry{}, http.StatusBadRequest, fmt.Errorf("path '%s': a parent is not a directory", p)
		}
		return uploadedEntry{}, 0, err
	}
	if fi, err := os.Stat(p); err == nil && fi.IsDir() {
		return uploadedEntry{}, http.StatusBadRequest, fmt.Errorf("path '%s' is a directory", p)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return uploadedEntry{}, 0, err
	}
	if os.Geteuid() == 0 {
		if err := f.Chown(int(u.UID), int(u.GID)); err != nil {
			f.Close()
			return uploadedEntry{}, 0, err
		}
	}
	if _, err := io.CopyBuffer(f, r, make([]byte, copyBufSize)); err != nil {
		f.Close()
		var pe *fs.PathError
		if errors.As(err, &pe) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return uploadedEntry{}, 0, &fs.PathError{Op: "write", Path: p, Err: err}
		}
		// The request body failed: truncated, bad gzip, bad multipart.
		return uploadedEntry{}, http.StatusBadRequest, fmt.Errorf("read upload of '%s': %v", p, err)
	}
	if err := replaceMetadata(f, meta); err != nil {
		f.Close()
		return uploadedEntry{}, 0, &fs.PathError{Op: "set metadata", Path: p, Err: err}
	}
	if err := f.Close(); err != nil {
		return uploadedEntry{}, 0, &fs.PathError{Op: "close", Path: p, Err: err}
	}
	return uploadedEntry{Name: filepath.Base(p), Path: p, Type: "file", Metadata: meta}, 0, nil
}
