#!/usr/bin/env bash
# Regenerates the Go code of the envd wire API from its .proto files, or, with
# "check", regenerates into a scratch directory and fails if the result differs
# from what is committed.
#
#   internal/envd/gen.sh          rewrite process/*.go and filesystem/*.go
#   internal/envd/gen.sh check    exit 1 (with a diff) if regenerating would change anything
#
# protoc comes from Debian (protobuf-compiler, plus libprotobuf-dev for the
# well-known .proto files); it is installed when missing and we are root. The
# plugins are installed with `go install` at exactly the versions go.mod
# requires, so the generated code matches the runtime libraries. The protoc
# version line in the generated headers is ignored by the check.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mode=${1:-generate}
case "$mode" in generate|check) ;; *) echo "usage: $0 [check]" >&2; exit 2 ;; esac

export PATH=/usr/local/go/bin:$PATH

if ! command -v protoc >/dev/null || [ ! -f /usr/include/google/protobuf/timestamp.proto ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "gen.sh: installing protobuf-compiler libprotobuf-dev" >&2
		apt-get update -q >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			protobuf-compiler libprotobuf-dev >/dev/null
	else
		echo "gen.sh: protoc and /usr/include/google/protobuf are needed (apt-get install protobuf-compiler libprotobuf-dev)" >&2
		exit 1
	fi
fi

cd "$here"
pbver=$(go list -m -f '{{.Version}}' google.golang.org/protobuf)
cnver=$(go list -m -f '{{.Version}}' connectrpc.com/connect)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
GOBIN="$scratch/bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$pbver"
GOBIN="$scratch/bin" go install "connectrpc.com/connect/cmd/protoc-gen-connect-go@$cnver"

protos=(process/process.proto filesystem/filesystem.proto)
out="$here"
[ "$mode" = check ] && out="$scratch/out" && mkdir -p "$out"

PATH="$scratch/bin:$PATH" protoc -I "$here" -I /usr/include \
	--go_out="$out" --go_opt=paths=source_relative \
	--connect-go_out="$out" --connect-go_opt=paths=source_relative \
	"${protos[@]}"

[ "$mode" = generate ] && exit 0

# The generated files, as committed and as regenerated, minus the protoc
# version line (a different protoc release writes the same code).
strip() { grep -v -E '^//[[:space:]]+protoc[[:space:]]+v' "$1" || true; }
status=0
while IFS= read -r f; do
	rel=${f#"$out"/}
	if [ ! -f "$here/$rel" ]; then
		echo "gen.sh check: $rel is not committed" >&2; status=1; continue
	fi
	if ! diff -u <(strip "$here/$rel") <(strip "$f") >&2; then
		echo "gen.sh check: $rel differs from what the .proto files generate" >&2; status=1
	fi
done < <(find "$out" -name '*.go' | sort)
while IFS= read -r f; do
	rel=${f#"$here"/}
	[ -f "$out/$rel" ] || { echo "gen.sh check: $rel is committed but no longer generated" >&2; status=1; }
done < <(find "$here" -path "$here/*" \( -name '*.pb.go' -o -name '*.connect.go' \) | sort)
[ $status = 0 ] && echo "gen.sh check: generated code is up to date"
exit $status
