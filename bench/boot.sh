#!/bin/sh
# Boot time and memory overhead of husk-vmm against QEMU microvm: the same
# PVH vmlinux, initrd and kernel command line, 1 vCPU, 128 MiB, alternating
# pairs, run where Linux guests run (inside the test host on machines whose
# /dev/kvm cannot boot Linux). Method and figures: docs/BENCHMARKS.md.
#
#   bench/boot.sh                 15 pairs (+1 warm-up); last line:
#                                 boot husk/qemu=<r> husk_overhead_mib=<n> qemu_overhead_mib=<n>
#   bench/boot.sh -pairs 30 -detail
#   bench/boot.sh -hang 100       hang rate: 100 husk boots, 1/2/4 vCPUs; last line:
#                                 boots=100 hangs=<k> failures=<f> median_s=... p90_s=... max_s=...
#
# All arguments go to `husk-dev bench-boot` (-h lists them).
set -eu
cd "$(dirname "$0")/.."
make -s build >&2
exec bin/husk-dev bench-boot "$@"
