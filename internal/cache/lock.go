package cache

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Lock takes an exclusive flock(2) on path (created if missing), blocking
// until it is free, and returns the function that releases it. Builders lock
// "<entry>.lock" so that two processes do not build the same entry at once;
// the lock dies with the process, so a crashed build never wedges the cache.
func Lock(path string) (release func(), err error) {
	return lock(path, unix.LOCK_EX)
}

// TryLock is Lock without waiting: it returns ErrLocked if another open file
// description holds the lock.
func TryLock(path string) (release func(), err error) {
	return lock(path, unix.LOCK_EX|unix.LOCK_NB)
}

func lock(path string, how int) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
