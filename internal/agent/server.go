package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/huskvm/husk/internal/envd"
	"github.com/huskvm/husk/internal/envd/filesystem/filesystemconnect"
	"github.com/huskvm/husk/internal/envd/process/processconnect"
)

// Config is how a Server is set up. The zero value of each field has a
// default.
type Config struct {
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// EtcDir holds passwd and group; default "/etc".
	EtcDir string
	// PTMX is the pseudo-terminal multiplexer; default "/dev/ptmx".
	PTMX string
	// DefaultUser runs requests that name no user until /init sets another;
	// default "user".
	DefaultUser string
	// AccessToken, when set, is required from the start (before any /init).
	AccessToken string
	// ManageSystem lets /init set the wall clock and install CA
	// certificates: true in a guest, never on a host.
	ManageSystem bool
	// CABundle is the system trust store /init appends certificates to;
	// default "/etc/ssl/certs/ca-certificates.crt".
	CABundle string
}

// Server is the envd-compatible API of one guest: the process and
// filesystem Connect services, /files, /health, /envs and, on the internal
// listener only, /init. Its methods are safe for concurrent use.
type Server struct {
	cfg      Config
	log      *slog.Logger
	users    *userDB
	procs    *procTable
	watchers *watcherTable
	asRoot   bool

	mu         sync.RWMutex // guards the fields below, which /init changes
	token      string
	defUser    string
	defWorkdir string
	env        map[string]string

	srvMu   sync.Mutex // guards servers
	servers []*http.Server
	closed  bool
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.EtcDir == "" {
		cfg.EtcDir = "/etc"
	}
	if cfg.PTMX == "" {
		cfg.PTMX = "/dev/ptmx"
	}
	if cfg.DefaultUser == "" {
		cfg.DefaultUser = "user"
	}
	if cfg.CABundle == "" {
		cfg.CABundle = "/etc/ssl/certs/ca-certificates.crt"
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		users:   newUserDB(cfg.EtcDir),
		procs:   newProcTable(cfg.Logger),
		asRoot:  os.Geteuid() == 0,
		token:   cfg.AccessToken,
		defUser: cfg.DefaultUser,
		env:     map[string]string{},
	}
	s.watchers = newWatcherTable(s)
	return s, nil
}

// Handler returns the HTTP API. The internal one, for the host (vsock in a
// guest), also serves /init; the public one (the guest's TCP port) answers
// 404 there.
func (s *Server) Handler(internal bool) http.Handler {
	opts := []connect.HandlerOption{
		connect.WithReadMaxBytes(maxRPCBytes),
		connect.WithCompressMinBytes(1 << 10),
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, v any) error {
			s.log.Error("rpc panic", "procedure", spec.Procedure, "panic", fmt.Sprint(v))
			return connect.NewError(connect.CodeInternal, errors.New("internal error"))
		}),
	}
	mux := http.NewServeMux()
	path, h := processconnect.NewProcessHandler(&processService{s}, opts...)
	mux.Handle(path, s.requireToken(h))
	path, h = filesystemconnect.NewFilesystemHandler(&filesystemService{s}, opts...)
	mux.Handle(path, s.requireToken(h))
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.Handle("GET /envs", s.requireToken(http.HandlerFunc(s.serveEnvs)))
	mux.HandleFunc("GET /files", s.serveDownload)
	mux.HandleFunc("POST /files", s.serveUpload)
	if internal {
		mux.Handle("POST /init", s.requireToken(http.HandlerFunc(s.serveInit)))
	}
	known := map[string]bool{"/health": true, "/envs": true, "/files": true, "/init": internal}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if known[r.URL.Path] {
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed", r.Method, r.URL.Path))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("%s %s: no such endpoint", r.Method, r.URL.Path))
	})
	return mux
}

// maxRPCBytes caps one RPC message (SendInput data is the largest).
const maxRPCBytes = 16 << 20

// Serve answers on the given listeners until Shutdown; either may be nil.
// It returns the first error of either listener other than a shutdown.
func (s *Server) Serve(public, internal net.Listener) error {
	type l struct {
		ln       net.Listener
		internal bool
	}
	var ls []l
	if public != nil {
		ls = append(ls, l{public, false})
	}
	if internal != nil {
		ls = append(ls, l{internal, true})
	}
	if len(ls) == 0 {
		return errors.New("serve: no listener")
	}
	errc := make(chan error, len(ls))
	for _, x := range ls {
		hs := s.httpServer(s.Handler(x.internal))
		s.srvMu.Lock()
		if s.closed {
			s.srvMu.Unlock()
			return http.ErrServerClosed
		}
		s.servers = append(s.servers, hs)
		s.srvMu.Unlock()
		go func() { errc <- hs.Serve(x.ln) }()
	}
	var first error
	for range ls {
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) && first == nil {
			first = err
			go s.Shutdown(context.Background())
		}
	}
	return first
}

func (s *Server) httpServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		Protocols:         &p,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// Shutdown stops the listeners, waits for requests in flight up to ctx,
// and kills every process and watcher the agent started.
func (s *Server) Shutdown(ctx context.Context) error {
	s.srvMu.Lock()
	s.closed = true
	servers := s.servers
	s.servers = nil
	s.srvMu.Unlock()
	s.procs.killAll()
	s.watchers.closeAll()
	var errs []error
	for _, hs := range servers {
		if err := hs.Shutdown(ctx); err != nil {
			errs = append(errs, err, hs.Close())
		}
	}
	return errors.Join(errs...)
}

// requireToken rejects a request without the access token, once there is
// one.
func (s *Server) requireToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := checkToken(r, s.accessToken()); err != nil {
			writeError(w, http.StatusUnauthorized, err.Error())
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) accessToken() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.token
}

func (s *Server) defaultUser() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.defUser
}

func (s *Server) defaultWorkdir() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.defWorkdir
}

// sandboxEnv returns a copy of the sandbox's environment variables.
func (s *Server) sandboxEnv() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := make(map[string]string, len(s.env))
	for k, v := range s.env {
		m[k] = v
	}
	return m
}

// requestUser is the user an RPC runs as: the Basic-auth user, else the
// default user.
func (s *Server) requestUser(h http.Header) (*User, error) {
	name, err := basicUser(h)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnauthenticated, err)
	}
	if name == "" {
		name = s.defaultUser()
	}
	u, err := s.users.Lookup(name)
	if err != nil {
		if errors.Is(err, errUnknownUser) {
			return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid username: '%s'", name))
		}
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return u, nil
}

// restError is the body of every error of the plain HTTP endpoints.
type restError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Del("Content-Encoding")
	w.Header().Del("Content-Length")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(restError{Code: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Version is the envd version the agent advertises.
const Version = envd.Version
