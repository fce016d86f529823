# husk: the single entry point for builds and tests.
#
#   make boot    boot the guest in a fresh microVM and print its kernel version
#   make test    everything CI runs: lint, unit tests, fuzzers, e2e tests
#
# Both install what they need first (Debian packages, as root) and build the
# guest kernel once; the kernel, test-host assets and disk images are cached
# outside the repository (see internal/cache), keyed by content hash.

export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
GOFLAGS_STATIC := CGO_ENABLED=0
FUZZTIME ?= 10s

# Debian packages the build and the tests need.
DEBS := qemu-system-x86 linux-source-6.1 build-essential flex bison bc libelf-dev \
	libssl-dev cpio e2fsprogs xz-utils zstd kmod mmdebstrap protobuf-compiler libprotobuf-dev

# Everything but the e2e package, which runs through test/hosted.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v -e /test/e2e -e /test/hosted)

.PHONY: all build deps kernel boot test lint unit fuzz e2e bench clean

all: build

build:
	@mkdir -p bin
	$(GOFLAGS_STATIC) $(GO) build -trimpath -ldflags='-X=runtime.godebugDefault=disablethp=1' -o bin/husk-vmm ./cmd/husk-vmm
	$(GOFLAGS_STATIC) $(GO) build -trimpath -o bin/husk-agent ./cmd/husk-agent
	$(GOFLAGS_STATIC) $(GO) build -o bin/husk ./cmd/husk
	$(GO) build -o bin/husk-dev ./cmd/husk-dev

deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

kernel: deps build
	bin/husk-dev kernel

boot: deps build
	@bin/husk-dev boot

test: deps build lint unit fuzz e2e

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	bash internal/envd/gen.sh check

unit:
	$(GO) test -race -count=1 $(UNIT_PKGS)

# Every fuzz target runs for FUZZTIME; the list comes from the code so that
# none is silently left out. Go 1.26's fuzz coordinator can fail a target
# with a bare "context deadline exceeded" as FUZZTIME ends (go.dev/issue/75804,
# fixed in Go 1.27): such a run, with no failing input written, runs once more.
fuzz:
	@set -e; for pkg in $(UNIT_PKGS); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f"; \
			for try in 1 2; do \
				if $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg > /tmp/husk-fuzz.log 2>&1; then break; fi; \
				cat /tmp/husk-fuzz.log; \
				if [ $$try = 1 ] && grep -q 'context deadline exceeded' /tmp/husk-fuzz.log && ! grep -q 'Failing input written' /tmp/husk-fuzz.log; then \
					echo "fuzz $$f: Go's fuzztime shutdown race (go.dev/issue/75804), running it again"; \
				else exit 1; fi; \
			done; \
		done; \
	done

e2e: deps build
	$(GO) test -count=1 -v -timeout 60m ./test/hosted

bench: deps build
	bench/boot.sh

clean:
	rm -rf bin
