#!/usr/bin/env bash
# What running a command in a husk sandbox costs, measured where Linux
# guests run (inside the test host on machines whose /dev/kvm cannot boot
# Linux; the test host's own boot is not measured). Method and figures:
# docs/BENCHMARKS.md.
#
#   exec round trip: /bin/true run over vsock through the agent of one
#   booted VM, against a fork+exec of the same /bin/true on the host;
#   husk run to first output: `husk run -- echo hi` against a cold boot of
#   the same kernel to the test init's marker (and, to tell the two apart,
#   the boot of husk run's VM to its agent's answer).
#
#   bench/run.sh                  200 exec round trips (+20 warm-up), 10 rounds (+1); last line:
#                                 exec_rtt husk/host=<r> run_first_output/boot=<r> exec_rtt_ms=<n>
#   bench/run.sh -rounds 20 -exec 500
#
# All arguments go to `husk-dev bench-run` (-h lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build >&2
exec bin/husk-dev bench-run "$@"
