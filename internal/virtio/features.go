package virtio

import "fmt"

// DeviceType is a virtio device ID (virtio 1.2 §5).
type DeviceType uint32

// Device IDs husk implements or reserves.
const (
	DeviceNet     DeviceType = 1
	DeviceBlock   DeviceType = 2
	DeviceConsole DeviceType = 3
	DeviceEntropy DeviceType = 4 // virtio-rng
	DeviceBalloon DeviceType = 5
	DeviceVsock   DeviceType = 19
)

func (t DeviceType) String() string {
	switch t {
	case DeviceNet:
		return "net"
	case DeviceBlock:
		return "block"
	case DeviceConsole:
		return "console"
	case DeviceEntropy:
		return "rng"
	case DeviceBalloon:
		return "balloon"
	case DeviceVsock:
		return "vsock"
	}
	return fmt.Sprintf("device-%d", uint32(t))
}

// Device-independent feature bits (virtio 1.2 §6).
const (
	// FeatureIndirectDesc (VIRTIO_F_INDIRECT_DESC): descriptors may point at
	// a table of descriptors (§2.7.5.3).
	FeatureIndirectDesc uint64 = 1 << 28
	// FeatureEventIdx (VIRTIO_F_EVENT_IDX): used_event/avail_event
	// notification suppression (§2.7.7, §2.7.10).
	FeatureEventIdx uint64 = 1 << 29
	// FeatureVersion1 (VIRTIO_F_VERSION_1): a non-legacy device. Mandatory
	// for virtio-mmio version 2.
	FeatureVersion1 uint64 = 1 << 32
	// FeatureAccessPlatform (VIRTIO_F_ACCESS_PLATFORM): not offered.
	FeatureAccessPlatform uint64 = 1 << 33
	// FeatureRingPacked (VIRTIO_F_RING_PACKED): not offered.
	FeatureRingPacked uint64 = 1 << 34
	// FeatureInOrder (VIRTIO_F_IN_ORDER): not offered.
	FeatureInOrder uint64 = 1 << 35
	// FeatureNotificationData (VIRTIO_F_NOTIFICATION_DATA): not offered.
	FeatureNotificationData uint64 = 1 << 38
	// FeatureRingReset (VIRTIO_F_RING_RESET): not offered.
	FeatureRingReset uint64 = 1 << 40
)

// TransportFeatures are the reserved feature bits this package implements.
// A device may offer any subset of them; FeatureVersion1 is always offered.
const TransportFeatures = FeatureVersion1 | FeatureEventIdx | FeatureIndirectDesc

// reservedFeatures are bits 24 to 49: queue and negotiation extensions
// (24-40) and future extensions (41-49), §2.2. A device offers none of them
// beyond TransportFeatures.
const reservedFeatures uint64 = (1<<50 - 1) &^ (1<<24 - 1)

// Device status bits (virtio 1.2 §2.1).
const (
	StatusAcknowledge uint32 = 1
	StatusDriver      uint32 = 2
	StatusDriverOK    uint32 = 4
	StatusFeaturesOK  uint32 = 8
	StatusNeedsReset  uint32 = 0x40
	StatusFailed      uint32 = 0x80
)
