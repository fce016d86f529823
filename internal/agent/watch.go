package agent

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/envd/filesystem"
)

// Directory watchers (PROTOCOL.md §3.4), on inotify(7).
//
// Each watcher owns one inotify instance and one goroutine that reads it. A
// recursive watcher watches every directory below its root and adds a watch
// for each directory created later. Events name the entry relative to the
// root. A streaming watcher (WatchDir) hands events to its stream and blocks
// while the stream is slow (the kernel queues meanwhile, and drops with
// IN_Q_OVERFLOW past its limit); a polled watcher (CreateWatcher) keeps up to
// maxPendingEvents until GetWatcherEvents takes them.

const (
	maxWatchers        = 100   // inotify instances are limited per user (128 by default)
	maxWatchesPerTree  = 65536 // directories one recursive watcher may watch
	maxPendingEvents   = 10_000
	inotifyBufSize     = 64 << 10
	inotifyEventHeader = 16 // struct inotify_event without its name
	watchMask          = unix.IN_CREATE | unix.IN_MODIFY | unix.IN_DELETE | unix.IN_MOVED_FROM |
		unix.IN_MOVED_TO | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF
)

// Filesystem magic numbers (statfs(2)) of network and FUSE mounts, which
// WatchDir refuses unless allow_network_mounts is set.
var networkFS = map[int64]string{
	0x6969:     "nfs",
	0x517b:     "smb",
	0xff534d42: "cifs",
	0xfe534d42: "smb2",
	0x65735546: "fuse",
}

type watchOptions struct {
	recursive, includeEntry, networkMounts bool
}

type watcherTable struct {
	s    *Server
	mu   sync.Mutex // guards byID
	byID map[string]*watcher
}

func newWatcherTable(s *Server) *watcherTable {
	return &watcherTable{s: s, byID: map[string]*watcher{}}
}

// watcher is one watched directory tree.
type watcher struct {
	id     string
	root   string
	opts   watchOptions
	s      *Server
	file   *os.File // the inotify instance
	polled bool

	// events carries a streaming watcher's events; closed when it stops.
	events chan *filesystem.FilesystemEvent
	stop   chan struct{} // closed by close

	wds map[int32]string // watch descriptor -> directory; owned by run after open

	mu      sync.Mutex // guards the fields below
	pending []*filesystem.FilesystemEvent
	dropped int
	failure error
}

// open starts watching dir.
func (t *watcherTable) open(dir string, opts watchOptions, polled bool) (*watcher, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fsError("watch", dir, err)
	}
	if !fi.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path '%s' is not a directory", dir))
	}
	if !opts.networkMounts {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil {
			if name, ok := networkFS[int64(uint32(st.Type))]; ok {
				return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path '%s' is on a network mount (%s); set allow_network_mounts to watch it", dir, name))
			}
		}
	}
	t.mu.Lock()
	n := len(t.byID)
	t.mu.Unlock()
	if n >= maxWatchers {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("more than %d watchers", maxWatchers))
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("inotify_init1: %w", err))
	}
	var idb [16]byte
	_, _ = rand.Read(idb[:])
	w := &watcher{
		id:     hex.EncodeToString(idb[:]),
		root:   dir,
		opts:   opts,
		s:      t.s,
		file:   os.NewFile(uintptr(fd), "inotify"),
		polled: polled,
		events: make(chan *filesystem.FilesystemEvent, 64),
		stop:   make(chan struct{}),
		wds:    map[int32]string{},
	}
	if err := w.add(dir, true); err != nil {
		w.file.Close()
		return nil, err
	}
	t.mu.Lock()
	t.byID[w.id] = w
	t.mu.Unlock()
	go w.run()
	return w, nil
}

// get returns the watcher with id.
func (t *watcherTable) get(id string) (*watcher, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	w, ok := t.byID[id]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher '%.64s' not found", id))
	}
	return w, nil
}

// remove stops and forgets the watcher with id, if any.
func (t *watcherTable) remove(id string) {
	t.mu.Lock()
	w, ok := t.byID[id]
	delete(t.byID, id)
	t.mu.Unlock()
	if ok {
		w.close()
	}
}

func (t *watcherTable) closeAll() {
	t.mu.Lock()
	ws := t.byID
	t.byID = map[string]*watcher{}
	t.mu.Unlock()
	for _, w := range ws {
		w.close()
	}
}

func (w *watcher) close() {
	select {
	case <-w.stop:
		return
	default:
	}
	close(w.stop)
	w.file.Close()
}

// add watches dir and, for a recursive watcher, every directory below it.
// The root may be a symlink to a directory; nothing below it is followed.
func (w *watcher) add(dir string, root bool) error {
	rc, err := w.file.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	addOne := func(d string) bool {
		if len(w.wds) >= maxWatchesPerTree {
			werr = connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("watch '%s': more than %d directories", w.root, maxWatchesPerTree))
			return false
		}
		mask := uint32(watchMask | unix.IN_ONLYDIR)
		if !(root && d == dir) {
			mask |= unix.IN_DONT_FOLLOW
		}
		var wd int
		var err error
		if cerr := rc.Control(func(fd uintptr) { wd, err = unix.InotifyAddWatch(int(fd), d, mask) }); cerr != nil {
			err = cerr
		}
		if err != nil {
			if root && d == dir {
				if errors.Is(err, unix.ENOSPC) {
					werr = connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("watch '%s': inotify watch limit reached", d))
				} else {
					werr = fsError("watch", d, err)
				}
				return false
			}
			return true // a subdirectory that vanished or cannot be watched
		}
		w.wds[int32(wd)] = d
		return true
	}
	if !addOne(dir) {
		return werr
	}
	if !w.opts.recursive {
		return nil
	}
	_ = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || p == dir || !de.IsDir() {
			return nil
		}
		if !addOne(p) {
			return filepath.SkipAll
		}
		return nil
	})
	return werr
}

// run reads inotify events until the watcher is closed.
func (w *watcher) run() {
	defer close(w.events)
	buf := make([]byte, inotifyBufSize)
	for {
		n, err := w.file.Read(buf)
		if err != nil {
			select {
			case <-w.stop:
			default:
				w.fail(fmt.Errorf("read inotify: %w", err))
			}
			return
		}
		perr := parseInotify(buf[:n], func(wd int32, mask uint32, name string) bool {
			return w.handle(wd, mask, name)
		})
		if perr != nil {
			w.fail(perr)
			return
		}
	}
}

func (w *watcher) fail(err error) {
	w.mu.Lock()
	w.failure = err
	w.mu.Unlock()
	w.s.log.Warn("watcher stopped", "root", w.root, "err", err)
}

func (w *watcher) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failure
}

// handle turns one inotify event into filesystem events; false stops the
// watcher.
func (w *watcher) handle(wd int32, mask uint32, name string) bool {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		w.s.log.Warn("watcher queue overflow: events were lost", "root", w.root)
		return true
	}
	dir, ok := w.wds[wd]
	if !ok {
		return true
	}
	if mask&unix.IN_IGNORED != 0 {
		delete(w.wds, wd)
		return true
	}
	if name == "" {
		// An event on the watched directory itself: its removal or move
		// is reported by its parent, or, for the root, ends nothing.
		return true
	}
	full := filepath.Join(dir, name)
	rel, err := filepath.Rel(w.root, full)
	if err != nil {
		rel = name
	}
	emit := func(t filesystem.EventType) bool {
		ev := &filesystem.FilesystemEvent{Name: rel, Type: t}
		if w.opts.includeEntry && (t == filesystem.EventType_EVENT_TYPE_CREATE || t == filesystem.EventType_EVENT_TYPE_WRITE || t == filesystem.EventType_EVENT_TYPE_CHMOD) {
			if fi, err := os.Lstat(full); err == nil {
				ev.Entry = w.s.entryInfo(full, fi)
			}
		}
		return w.deliver(ev)
	}
	if mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 {
		if !emit(filesystem.EventType_EVENT_TYPE_CREATE) {
			return false
		}
		if mask&unix.IN_ISDIR != 0 && w.opts.recursive {
			_ = w.add(full, false)
			// What was created in the new directory before its watch was
			// added has no event of its own (mkdir -p a/b; echo > a/b/f):
			// report it as created.
			if !w.reportExisting(full) {
				return false
			}
		}
	}
	if mask&unix.IN_MODIFY != 0 && !emit(filesystem.EventType_EVENT_TYPE_WRITE) {
		return false
	}
	if mask&unix.IN_ATTRIB != 0 && !emit(filesystem.EventType_EVENT_TYPE_CHMOD) {
		return false
	}
	if mask&unix.IN_DELETE != 0 && !emit(filesystem.EventType_EVENT_TYPE_REMOVE) {
		return false
	}
	if mask&unix.IN_MOVED_FROM != 0 && !emit(filesystem.EventType_EVENT_TYPE_RENAME) {
		return false
	}
	return true
}

// reportExisting emits a CREATE event for everything below dir, which a
// recursive watcher has just started watching.
func (w *watcher) reportExisting(dir string) bool {
	ok := true
	_ = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		rel, rerr := filepath.Rel(w.root, p)
		if rerr != nil {
			return nil
		}
		ev := &filesystem.FilesystemEvent{Name: rel, Type: filesystem.EventType_EVENT_TYPE_CREATE}
		if w.opts.includeEntry {
			if fi, err := os.Lstat(p); err == nil {
				ev.Entry = w.s.entryInfo(p, fi)
			}
		}
		if !w.deliver(ev) {
			ok = false
			return filepath.SkipAll
		}
		return nil
	})
	return ok
}

// deliver queues ev for the watcher's consumer; false once it is closed.
func (w *watcher) deliver(ev *filesystem.FilesystemEvent) bool {
	if w.polled {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.pending) >= maxPendingEvents {
			w.dropped++
			return true
		}
		w.pending = append(w.pending, ev)
		return true
	}
	select {
	case w.events <- ev:
		return true
	case <-w.stop:
		return false
	}
}

// drain returns and forgets the events a polled watcher has collected.
func (w *watcher) drain() ([]*filesystem.FilesystemEvent, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	evs := w.pending
	w.pending = nil
	if w.dropped > 0 {
		w.s.log.Warn("watcher dropped events", "root", w.root, "dropped", w.dropped)
		w.dropped = 0
	}
	if len(evs) == 0 && w.failure != nil {
		return nil, w.failure
	}
	return evs, nil
}

// errInotifyRecord is a malformed inotify record.
var errInotifyRecord = errors.New("malformed inotify record")

// parseInotify walks the struct inotify_event records in buf:
//
//	int32 wd | uint32 mask | uint32 cookie | uint32 len | name[len] (NUL-padded)
//
// calling fn for each until it returns false. A record that overruns buf is
// an error.
func parseInotify(buf []byte, fn func(wd int32, mask uint32, name string) bool) error {
	for off := 0; off < len(buf); {
		if len(buf)-off < inotifyEventHeader {
			return fmt.Errorf("%w: %d bytes left, header is %d", errInotifyRecord, len(buf)-off, inotifyEventHeader)
		}
		wd := int32(binary.NativeEndian.Uint32(buf[off:]))
		mask := binary.NativeEndian.Uint32(buf[off+4:])
		nlen := binary.NativeEndian.Uint32(buf[off+12:])
		off += inotifyEventHeader
		if uint64(nlen) > uint64(len(buf)-off) {
			return fmt.Errorf("%w: name length %d overruns %d bytes", errInotifyRecord, nlen, len(buf)-off)
		}
		raw := buf[off : off+int(nlen)]
		off += int(nlen)
		for i, b := range raw {
			if b == 0 {
				raw = raw[:i]
				break
			}
		}
		if !fn(wd, mask, string(raw)) {
			return nil
		}
	}
	return nil
}
