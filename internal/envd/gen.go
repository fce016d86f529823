// Package envd holds the envd wire API that husk-agent serves inside every
// guest and the host drives: the process and filesystem Connect services
// (our own .proto files in process/ and filesystem/, with the protobuf and
// connect-go code generated from them). It is the one package that guest and
// host share, so it imports no other husk package.
//
// The wire contract is shared/e2b/PROTOCOL.md §3: the unmodified e2b SDKs
// speak Connect protocol v1 with the JSON codec to it, so every package,
// service, method, message, field name and number, and enum value name here
// is fixed by that document.
//
// Regenerate with `go generate ./internal/envd` (or internal/envd/gen.sh);
// `internal/envd/gen.sh check` fails when the committed code is stale.
package envd

//go:generate ./gen.sh

// Version is the envd version the agent advertises. 0.6.13 turns on every
// feature gate in e2b 2.51.0 (PROTOCOL.md §3.6), all of which the agent
// implements.
const Version = "0.6.13"
