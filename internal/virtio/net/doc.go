// Package net is virtio-net (virtio 1.2 §5.1) on a host TAP interface: one
// receive and one transmit queue, the MAC address and link status in the
// configuration space (VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS), and the
// offloads a TAP implements itself, TCP segmentation and checksums both
// ways; no control queue, multiqueue or mergeable receive buffers. Each
// frame sits behind a 12-byte virtio_net_hdr in its chain (header.go), and
// the TAP speaks the same header (IFF_VNET_HDR), so the device moves
// frames without touching their contents.
//
// # Threading
//
// The transport calls the virtio.Device methods on vCPU goroutines; they
// never block. Frames move on the device's worker goroutine (see package
// virtio), in both directions:
//
//   - transmit: the guest's kick rings the doorbell; the worker checks each
//     chain's header and writes the checked copy of it, then the frame
//     straight from guest memory, to the backend (writev).
//   - receive: the worker reads one header and frame at a time from the
//     non-blocking backend into a host buffer, then copies them into the
//     next receive chain. When the backend is empty it arms a watcher
//     goroutine, which waits for the descriptor to become readable (on the
//     runtime poller) and rings the doorbell. When the guest has no receive
//     buffer the frame stays in the host buffer and the worker sleeps until
//     the driver's refill kicks; the TAP's own queue then fills and the host
//     kernel drops (and counts) what does not fit.
//
// Close stops the worker, closes the backend (which wakes the watcher) and
// waits for the watcher, so no goroutine or descriptor outlives it.
//
// # Trust
//
// Every chain and header is guest-written and hostile. A transmit chain
// whose header asks for an offload the driver did not negotiate, or one
// that reaches outside the frame, or whose frame is shorter than an
// Ethernet header or longer than MaxFrameLen, is returned unused and
// logged, rate-limited; the queue carries on. Only the checked, normalised
// header reaches the host kernel. A receive chain too small for the waiting
// frame gets nothing (the frame is dropped and counted).
package net
