// Package cpio writes initramfs archives in the kernel's "newc" format
// (Documentation/driver-api/early-userspace/buffer-format.rst): each entry is a
// 110-byte ASCII header of 13 eight-digit hex fields, the NUL-terminated name,
// padding to 4 bytes, the data, padding to 4 bytes; the archive ends with the
// entry "TRAILER!!!".
package cpio

import (
	"fmt"
	"io"
	"strings"
)

// File modes as the kernel's initramfs unpacker reads them.
const (
	ModeDir     = 0o040000
	ModeRegular = 0o100000
	ModeSymlink = 0o120000
	ModeCharDev = 0o020000
)

const trailer = "TRAILER!!!"

// Writer appends entries to a newc archive. Close writes the trailer.
type Writer struct {
	w     io.Writer
	ino   uint32
	n     int64
	err   error
	names map[string]bool
}

// NewWriter returns a Writer that writes the archive to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, ino: 1, names: map[string]bool{}}
}

// Dir adds a directory.
func (w *Writer) Dir(name string, perm uint32) error {
	return w.entry(name, ModeDir|perm&0o7777, 0, 0, nil, 0)
}

// File adds a regular file whose contents are data.
func (w *Writer) File(name string, perm uint32, data []byte) error {
	return w.entry(name, ModeRegular|perm&0o7777, 0, 0, strings.NewReader(string(data)), int64(len(data)))
}

// FileFrom adds a regular file of size bytes read from r.
func (w *Writer) FileFrom(name string, perm uint32, r io.Reader, size int64) error {
	return w.entry(name, ModeRegular|perm&0o7777, 0, 0, r, size)
}

// Symlink adds a symbolic link name pointing to target.
func (w *Writer) Symlink(name, target string) error {
	return w.entry(name, ModeSymlink|0o777, 0, 0, strings.NewReader(target), int64(len(target)))
}

// CharDev adds a character device node.
func (w *Writer) CharDev(name string, perm, major, minor uint32) error {
	return w.entry(name, ModeCharDev|perm&0o7777, major, minor, nil, 0)
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if err := w.entry(trailer, 0, 0, 0, nil, 0); err != nil {
		return err
	}
	return w.pad()
}

func (w *Writer) entry(name string, mode, rmajor, rminor uint32, data io.Reader, size int64) error {
	if w.err != nil {
		return w.err
	}
	name = strings.TrimPrefix(name, "/")
	if name == "" || strings.ContainsRune(name, 0) {
		return fmt.Errorf("cpio: bad entry name %q", name)
	}
	if name != trailer {
		if w.names[name] {
			return fmt.Errorf("cpio: duplicate entry %q", name)
		}
		w.names[name] = true
	}
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("cpio: entry %q: size %d out of range", name, size)
	}
	ino := w.ino
	w.ino++
	if name == trailer {
		ino = 0
	}
	nlink := uint32(1)
	if mode&0o170000 == ModeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, rmajor, rminor, len(name)+1, 0)
	w.write([]byte(hdr))
	w.write([]byte(name))
	w.write([]byte{0})
	w.pad()
	if data != nil && size > 0 {
		n, err := io.CopyN(w.w, data, size)
		w.n += n
		if err != nil && w.err == nil {
			w.err = fmt.Errorf("cpio: entry %q: %w", name, err)
		}
	}
	w.pad()
	return w.err
}

func (w *Writer) write(b []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(b)
	w.n += int64(n)
	if err != nil {
		w.err = fmt.Errorf("cpio: %w", err)
	}
}

func (w *Writer) pad() error {
	if r := w.n % 4; r != 0 {
		w.write(make([]byte, 4-r))
	}
	return w.err
}
