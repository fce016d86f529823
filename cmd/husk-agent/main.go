// Command husk-agent is the guest agent: PID 1 of every husk guest and the
// envd-compatible API server the e2b SDKs drive (docs/agent.md).
//
// As PID 1 it sets up the guest (internal/agent/pid1) and starts itself again
// as "husk-agent serve" with the guest's listeners: vsock port 49983 for the
// host (internal API, /init included) and TCP port 49983 for the guest's own
// network (public API). Run by hand or by tests it is only the server:
//
//	husk-agent serve -public tcp:127.0.0.1:49983 -internal unix:/tmp/agent.sock
//
// It is built static (CGO_ENABLED=0) and imports no host code.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/agent"
	"github.com/huskvm/husk/internal/agent/pid1"
)

// The guest's listeners (DESIGN.md: envd on vsock port 49983).
const (
	guestInternal = "vsock:49983"
	guestPublic   = "tcp::49983" // every address, IPv4 and IPv6
)

func main() {
	if os.Getpid() == 1 {
		os.Exit(runInit())
	}
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	os.Exit(serve(args))
}

// runInit is PID 1.
func runInit() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("component", "init")
	hostname := "husk"
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		if v, ok := pid1.CmdlineValue(string(b), "husk.hostname"); ok && v != "" {
			hostname = v
		}
	}
	err := pid1.Run(pid1.Config{
		Args:     []string{"serve", "-public", guestPublic, "-internal", guestInternal, "-manage-system"},
		Hostname: hostname,
		Log:      log,
	})
	log.Error("init", "err", err)
	return 1
}

// serve runs the API server until SIGTERM or SIGINT.
func serve(args []string) int {
	fs := flag.NewFlagSet("husk-agent serve", flag.ContinueOnError)
	public := fs.String("public", "", "public listener: tcp:HOST:PORT, unix:PATH, vsock:PORT or fd:N (no /init)")
	internal := fs.String("internal", "", "internal listener, which also serves /init")
	defUser := fs.String("default-user", "user", "user for requests that name none, until /init sets another")
	tokenEnv := fs.String("access-token-env", "", "name of an environment variable holding the initial access token")
	etc := fs.String("etc", "/etc", "directory holding passwd and group")
	manage := fs.Bool("manage-system", false, "let /init set the clock and CA certificates (guest only)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	version := fs.Bool("version", false, "print the envd version the agent implements and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Println(agent.Version)
		return 0
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintln(os.Stderr, "husk-agent: -log-level:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("component", "agent")
	if *public == "" && *internal == "" {
		fmt.Fprintln(os.Stderr, "husk-agent: give -public, -internal or both")
		return 2
	}
	token := ""
	if *tokenEnv != "" {
		token = os.Getenv(*tokenEnv)
		os.Unsetenv(*tokenEnv)
	}
	s, err := agent.New(agent.Config{
		Logger:       log,
		EtcDir:       *etc,
		DefaultUser:  *defUser,
		AccessToken:  token,
		ManageSystem: *manage,
	})
	if err != nil {
		log.Error("new server", "err", err)
		return 1
	}
	var pub, in net.Listener
	for _, l := range []struct {
		spec string
		ln   *net.Listener
	}{{*public, &pub}, {*internal, &in}} {
		if l.spec == "" {
			continue
		}
		ln, err := agent.Listen(l.spec)
		if err != nil {
			log.Error("listen", "err", err)
			return 1
		}
		*l.ln = ln
		log.Info("listening", "addr", describe(l.spec, ln))
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT)
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(pub, in) }()
	select {
	case err := <-errc:
		if err != nil {
			log.Error("serve", "err", err)
			return 1
		}
		return 0
	case sig := <-sigs:
		log.Info("stopping", "signal", sig.String())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			log.Warn("shutdown", "err", err)
		}
		<-errc
		return 0
	}
}

func describe(spec string, ln net.Listener) string {
	if strings.HasPrefix(spec, "fd:") {
		return spec + " " + ln.Addr().String()
	}
	return ln.Addr().String()
}
