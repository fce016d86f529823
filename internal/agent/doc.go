// Package agent is the envd-compatible API server that runs inside every husk
// guest (docs/agent.md, shared/e2b/PROTOCOL.md §3): the process and
// filesystem Connect services of internal/envd, /files, /health, /envs and,
// on the internal listener only, /init.
//
// Threading model. net/http runs each request on its own goroutine; every
// method of Server is safe for concurrent use. Each started process has one
// reader goroutine per output and one waiter goroutine (process.go); each
// directory watcher one goroutine reading its inotify instance (watch.go).
// Streams never hold a lock while they send. Settings that /init changes are
// guarded by Server.mu.
//
// The package never imports host code; PID 1 duties live in package pid1.
package agent
