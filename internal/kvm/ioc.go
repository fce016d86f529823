//go:build linux && amd64

package kvm

// Linux ioctl request encoding (include/uapi/asm-generic/ioctl.h, which x86
// uses). This is the only place that knows it.
//
//	 31 30 29            16 15         8 7          0
//	+-----+----------------+------------+------------+
//	| dir |      size      | type (0xAE)|     nr     |
//	+-----+----------------+------------+------------+
//
// dir is from userspace's point of view: _IOW means userspace writes the
// argument and the kernel reads it.
const (
	iocNRBits   = 8
	iocTypeBits = 8
	iocSizeBits = 14

	iocNRShift   = 0
	iocTypeShift = iocNRShift + iocNRBits
	iocSizeShift = iocTypeShift + iocTypeBits
	iocDirShift  = iocSizeShift + iocSizeBits

	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	// kvmio is KVMIO, the ioctl type byte of every KVM request.
	kvmio = 0xAE
)

// ioc encodes a KVM ioctl request number (_IOC(dir, KVMIO, nr, size)).
func ioc(dir, nr, size uintptr) uintptr {
	if size >= 1<<iocSizeBits || nr >= 1<<iocNRBits {
		panic("kvm: ioctl argument size or number out of range")
	}
	return dir<<iocDirShift | size<<iocSizeShift | kvmio<<iocTypeShift | nr<<iocNRShift
}

// io is _IO(KVMIO, nr): no argument, or an integer passed as the argument itself.
func io(nr uintptr) uintptr { return ioc(iocNone, nr, 0) }

// ior is _IOR(KVMIO, nr, T) with size = sizeof(T): the kernel writes a T.
func ior(nr, size uintptr) uintptr { return ioc(iocRead, nr, size) }

// iow is _IOW(KVMIO, nr, T) with size = sizeof(T): the kernel reads a T.
func iow(nr, size uintptr) uintptr { return ioc(iocWrite, nr, size) }

// iowr is _IOWR(KVMIO, nr, T) with size = sizeof(T): the kernel reads and writes a T.
func iowr(nr, size uintptr) uintptr { return ioc(iocRead|iocWrite, nr, size) }

// iocSize returns the argument size encoded in req.
func iocSize(req uintptr) uintptr { return req >> iocSizeShift & (1<<iocSizeBits - 1) }
