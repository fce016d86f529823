# devbench's guest program. It runs as PID 1 (init=/usr/bin/python3) in the
# minimal template, under husk-vmm and under QEMU alike. devbench prepends
# the parameter block P = {...}; the file reaches the guest as the raw disk
# /dev/vdb.
#
# After setting up it reports READY, then runs one measurement per command
# line read from the console:
#
#   blk           read the whole data disk once, sequentially, O_DIRECT
#   lat N         N reads of 4 KiB, O_DIRECT, one at a time
#   rtt N         N vsock round trips (after N/10 unreported ones)
#   up BYTES      send BYTES over vsock to the host
#   down BYTES    receive BYTES over vsock from the host
#
# Results are console lines "DEVBENCH_<KEY>=<value>"; each command's last
# line is its result. Every figure is timed here, with the guest's clock
# (kvm-clock under both VMMs): the same code and the same clock measure both.
import ctypes, hashlib, mmap, os, socket, struct, sys, time, traceback

libc = ctypes.CDLL(None, use_errno=True)


def mount(src, dst, fstype):
    os.makedirs(dst, exist_ok=True)
    if libc.mount(src.encode(), dst.encode(), fstype.encode(), 0, None) != 0:
        raise OSError(ctypes.get_errno(), 'mount ' + dst)


def report(key, value):
    print('DEVBENCH_%s=%s' % (key, value), flush=True)


def sysfs(path):
    with open(path) as f:
        return f.read().strip()


def find_disk(serial):
    # The VMMs number their virtio-mmio transports differently, so the data
    # disk is found by the serial both give it.
    for name in sorted(os.listdir('/sys/block')):
        try:
            if sysfs('/sys/block/%s/serial' % name) == serial:
                return name
        except OSError:
            pass
    raise RuntimeError('no disk with serial %r' % serial)


class Disk:
    def __init__(self):
        name, self.block = find_disk(P['data_serial']), P['block']
        self.sys = '/sys/block/' + name
        self.fd = os.open('/dev/' + name, os.O_RDONLY | os.O_DIRECT)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        if self.size != P['image_bytes']:
            raise RuntimeError('%s has %d bytes, want %d' % (name, self.size, P['image_bytes']))
        # O_DIRECT needs an aligned buffer: an anonymous mapping is
        # page-aligned.
        self.buf = mmap.mmap(-1, self.block)
        # How the guest may cut a read into requests, as the device's config
        # space made it: figures to explain the throughput, not to judge it.
        report('BLK_LIMITS', 'max_segments:%s,max_segment_size:%s,max_sectors_kb:%s' % tuple(
            sysfs(self.sys + '/queue/' + k) for k in ('max_segments', 'max_segment_size', 'max_sectors_kb')))
        # The first and last blocks' digests, which devbench checks against
        # the image, so that a fast but wrong read cannot pass.
        for key, off in (('FIRST', 0), ('LAST', self.size - self.block)):
            self.read(off)
            report('BLK_SHA256_' + key, hashlib.sha256(self.buf).hexdigest())

    def latency(self, n):
        # n reads of 4 KiB at pseudo-random aligned offsets, one at a time:
        # the request's round trip through the device, with next to no copy.
        small, blocks, ts = mmap.mmap(-1, 4096), self.size // 4096, []
        for i in range(n):
            off = (i * 7919 % blocks) * 4096
            t0 = time.perf_counter_ns()
            if os.preadv(self.fd, [small], off) != 4096:
                raise RuntimeError('short read at %d' % off)
            ts.append(time.perf_counter_ns() - t0)
        ts.sort()
        report('BLK_LAT_US', '%.1f' % (ts[len(ts) // 2] / 1e3))

    def read(self, off):
        n = os.preadv(self.fd, [self.buf], off)
        if n != self.block:
            raise RuntimeError('short read at %d: %d bytes' % (off, n))

    def stat(self):
        # /sys/block/<dev>/stat: field 0 counts completed reads, field 2
        # their sectors.
        f = sysfs(self.sys + '/stat').split()
        return int(f[0]), int(f[2])

    def run(self):
        reqs, sectors = self.stat()
        off, t0 = 0, time.monotonic()
        while off < self.size:
            self.read(off)
            off += self.block
        dt = time.monotonic() - t0
        reqs2, sectors2 = self.stat()
        report('BLK_REQUEST_KIB', '%.0f' % ((sectors2 - sectors) / 2 / max(reqs2 - reqs, 1)))
        report('BLK_READ_MBPS', '%.2f' % (self.size / dt / 1e6))


def vsock_connect(port):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.connect((socket.VMADDR_CID_HOST, port))
    return s


def recv_exact(s, view):
    got = 0
    while got < len(view):
        n = s.recv_into(view[got:])
        if n == 0:
            raise EOFError('vsock: connection closed after %d of %d bytes' % (got, len(view)))
        got += n


def vsock_rtt(n):
    # Ping-pong of small messages; the host echoes. The first rounds warm
    # the path up and are left out.
    s = vsock_connect(P['port_echo'])
    msg, back = b'\xa5' * P['msg'], bytearray(P['msg'])
    view, warm, ts = memoryview(back), max(1, n // 10), []
    for _ in range(warm + n):
        t0 = time.perf_counter_ns()
        s.sendall(msg)
        recv_exact(s, view)
        ts.append(time.perf_counter_ns() - t0)
    s.close()
    if back != msg:
        raise RuntimeError('vsock echo changed the message')
    ts = sorted(ts[warm:])
    report('VSOCK_RTT_US', '%.1f' % (ts[len(ts) // 2] / 1e3))


CHUNK = memoryview(b'\x5a' * (1 << 20))


def vsock_up(n):
    # Guest to host: a length, then the bytes; the host answers with the
    # count it received, so the time covers delivery, not just queueing.
    s = vsock_connect(P['port_sink'])
    t0 = time.monotonic()
    s.sendall(struct.pack('<Q', n))
    left = n
    while left:
        k = min(left, len(CHUNK))
        s.sendall(CHUNK[:k])
        left -= k
    ack = bytearray(8)
    recv_exact(s, memoryview(ack))
    dt = time.monotonic() - t0
    s.close()
    got = struct.unpack('<Q', ack)[0]
    if got != n:
        raise RuntimeError('host received %d of %d bytes' % (got, n))
    report('VSOCK_UP_MBPS', '%.2f' % (n / dt / 1e6))


def vsock_down(n):
    # Host to guest: ask for n bytes and read them all.
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    s = vsock_connect(P['port_source'])
    t0 = time.monotonic()
    s.sendall(struct.pack('<Q', n))
    left = n
    while left:
        k = s.recv_into(view[:min(left, len(buf))])
        if k == 0:
            raise EOFError('vsock: host closed after %d of %d bytes' % (n - left, n))
        left -= k
    dt = time.monotonic() - t0
    s.close()
    report('VSOCK_DOWN_MBPS', '%.2f' % (n / dt / 1e6))


try:
    mount('proc', '/proc', 'proc')
    mount('sysfs', '/sys', 'sysfs')
    disk = Disk()
    commands = {
        'blk': lambda: disk.run(),
        'lat': lambda n: disk.latency(n),
        'rtt': vsock_rtt,
        'up': vsock_up,
        'down': vsock_down,
    }
    report('READY', 1)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd, *args = line.split()
        if cmd not in commands:
            raise RuntimeError('unknown command %r' % line)
        commands[cmd](*map(int, args))
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    report('FAIL', 1)
# PID 1 must not exit; devbench kills the VMM.
while True:
    time.sleep(3600)
