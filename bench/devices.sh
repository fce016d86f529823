#!/usr/bin/env bash
# Device throughput and latency of husk-vmm against QEMU microvm, in one
# run on one host: the same guest kernel, the same minimal template as a
# read-only root, the same raw data disk through the host page cache on both
# sides (QEMU cache=writeback), O_DIRECT sequential reads in the guest;
# vsock throughput and round trips against QEMU's vhost-vsock-device. Both
# VMs run at once and take turns. Run where Linux guests run (inside the
# test host on machines whose /dev/kvm cannot boot Linux). Method and
# figures: docs/BENCHMARKS.md.
#
#   bench/devices.sh                  2 boots x 3 rounds (+1 warm-up each); last line:
#     blk_read husk/qemu=<r> vsock_mbps husk=<n> qemu=<n> vsock_rtt_us husk=<n> qemu=<n>
#   bench/devices.sh -boots 3 -rounds 5
#   bench/devices.sh -data-on-disk    the data image on an ext4 artifact disk, not tmpfs
#
# All arguments go to `husk-dev bench-devices` (-h lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build >&2
exec bin/husk-dev bench-devices "$@"
