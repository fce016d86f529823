package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/envd/filesystem"
)

// filesystemService implements filesystem.Filesystem (PROTOCOL.md §3.4).
// Operations run as root, as in envd; the request's user decides what
// relative paths mean and who owns what is created.
type filesystemService struct{ s *Server }

const (
	maxListEntries = 100_000
	maxListDepth   = 1024
)

// fsError maps a filesystem error on path to its Connect code.
func fsError(op, path string, err error) error {
	var ce *connect.Error
	switch {
	case errors.As(err, &ce):
		return err
	case errors.Is(err, errBadPath):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, fs.ErrNotExist):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("path '%s' does not exist", path))
	case errors.Is(err, unix.ENOTDIR):
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s '%s': a path component is not a directory", op, path))
	case errors.Is(err, unix.ELOOP):
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s '%s': cyclic symlink", op, path))
	case errors.Is(err, fs.ErrPermission):
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s '%s': %w", op, path, err))
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s '%s': not enough disk space", op, path))
	case errors.Is(err, unix.ENAMETOOLONG), errors.Is(err, unix.EINVAL):
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s '%s': %w", op, path, err))
	default:
		return connect.NewError(connect.CodeInternal, fmt.Errorf("%s '%s': %w", op, path, err))
	}
}

// userPath resolves a request path for the request's user.
func (f *filesystemService) userPath(h http.Header, p string) (*User, string, error) {
	u, err := f.s.requestUser(h)
	if err != nil {
		return nil, "", err
	}
	abs, err := resolvePath(p, u.Home)
	if err != nil {
		return nil, "", connect.NewError(connect.CodeInvalidArgument, err)
	}
	return u, abs, nil
}

func (f *filesystemService) Stat(ctx context.Context, req *connect.Request[filesystem.StatRequest]) (*connect.Response[filesystem.StatResponse], error) {
	_, p, err := f.userPath(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	e, err := f.s.statEntry(p)
	if err != nil {
		return nil, fsError("stat", p, err)
	}
	return connect.NewResponse(&filesystem.StatResponse{Entry: e}), nil
}

func (f *filesystemService) MakeDir(ctx context.Context, req *connect.Request[filesystem.MakeDirRequest]) (*connect.Response[filesystem.MakeDirResponse], error) {
	u, p, err := f.userPath(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(p); err == nil {
		if fi.IsDir() {
			return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("directory '%s' already exists", p))
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path '%s' already exists but it is not a directory", p))
	}
	if err := mkdirAllOwned(p, u.UID, u.GID); err != nil {
		return nil, fsError("make directory", p, err)
	}
	e, err := f.s.statEntry(p)
	if err != nil {
		return nil, fsError("stat", p, err)
	}
	return connect.NewResponse(&filesystem.MakeDirResponse{Entry: e}), nil
}

func (f *filesystemService) Move(ctx context.Context, req *connect.Request[filesystem.MoveRequest]) (*connect.Response[filesystem.MoveResponse], error) {
	u, src, err := f.userPath(req.Header(), req.Msg.GetSource())
	if err != nil {
		return nil, err
	}
	dst, err := resolvePath(req.Msg.GetDestination(), u.Home)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("destination: %w", err))
	}
	if _, err := os.Lstat(src); err != nil {
		return nil, fsError("move", src, err)
	}
	if err := mkdirAllOwned(filepath.Dir(dst), u.UID, u.GID); err != nil {
		return nil, fsError("move", dst, err)
	}
	if err := os.Rename(src, dst); err != nil {
		if !errors.Is(err, unix.EXDEV) {
			return nil, fsError("move", src, err)
		}
		// Another filesystem (the guest's /tmp is a tmpfs): copy, then remove.
		if err := copyTree(src, dst); err != nil {
			os.RemoveAll(dst)
			return nil, fsError("move", src, err)
		}
		if err := os.RemoveAll(src); err != nil {
			return nil, fsError("move", src, err)
		}
	}
	e, err := f.s.statEntry(dst)
	if err != nil {
		return nil, fsError("stat", dst, err)
	}
	return connect.NewResponse(&filesystem.MoveResponse{Entry: e}), nil
}

// copyTree copies src to dst (which must not exist), keeping modes,
// ownership and symlinks.
func copyTree(src, dst string) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	own := func() error {
		if st == nil || os.Geteuid() != 0 {
			return nil
		}
		return os.Lchown(dst, int(st.Uid), int(st.Gid))
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		t, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(t, dst); err != nil {
			return err
		}
		return own()
	case fi.IsDir():
		if err := os.Mkdir(dst, fi.Mode().Perm()); err != nil {
			return err
		}
		ents, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := copyTree(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
		if err := os.Chmod(dst, fi.Mode().Perm()); err != nil {
			return err
		}
		return own()
	case fi.Mode().IsRegular():
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
		return own()
	default:
		return fmt.Errorf("copy %s: cannot move a %v across filesystems", src, fi.Mode().Type())
	}
}

func (f *filesystemService) ListDir(ctx context.Context, req *connect.Request[filesystem.ListDirRequest]) (*connect.Response[filesystem.ListDirResponse], error) {
	_, p, err := f.userPath(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	depth := int(min(req.Msg.GetDepth(), maxListDepth))
	if depth == 0 {
		depth = 1
	}
	fi, err := os.Stat(p) // follows a symlink at the root
	if err != nil {
		return nil, fsError("list", p, err)
	}
	if !fi.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path '%s' is not a directory", p))
	}
	var entries []*filesystem.EntryInfo
	var walk func(dir string, level int) error
	walk = func(dir string, level int) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		des, err := os.ReadDir(dir)
		if err != nil {
			if level == 1 {
				return fsError("list", dir, err)
			}
			return nil // an unreadable subdirectory is listed but not entered
		}
		for _, de := range des {
			path := filepath.Join(dir, de.Name())
			info, err := de.Info()
			if err != nil {
				continue // removed meanwhile
			}
			if len(entries) >= maxListEntries {
				return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("list '%s': more than %d entries; list with a smaller depth", p, maxListEntries))
			}
			entries = append(entries, f.s.entryInfo(path, info))
			if info.IsDir() && level < depth {
				if err := walk(path, level+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(p, 1); err != nil {
		var ce *connect.Error
		if errors.As(err, &ce) {
			return nil, err
		}
		return nil, ctxErrorOr(ctx, err)
	}
	return connect.NewResponse(&filesystem.ListDirResponse{Entries: entries}), nil
}

func ctxErrorOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctxError(ctx)
	}
	return connect.NewError(connect.CodeInternal, err)
}

func (f *filesystemService) Remove(ctx context.Context, req *connect.Request[filesystem.RemoveRequest]) (*connect.Response[filesystem.RemoveResponse], error) {
	_, p, err := f.userPath(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(p); err != nil {
		return nil, fsError("remove", p, err)
	}
	return connect.NewResponse(&filesystem.RemoveResponse{}), nil
}

func (f *filesystemService) WatchDir(ctx context.Context, req *connect.Request[filesystem.WatchDirRequest], stream *connect.ServerStream[filesystem.WatchDirResponse]) error {
	_, p, err := f.userPath(req.Header(), req.Msg.GetPath())
	if err != nil {
		return err
	}
	w, err := f.s.watchers.open(p, watchOptions{
		recursive:     req.Msg.GetRecursive(),
		includeEntry:  req.Msg.GetIncludeEntry(),
		networkMounts: req.Msg.GetAllowNetworkMounts(),
	}, false)
	if err != nil {
		return err
	}
	defer f.s.watchers.remove(w.id)
	if err := stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Start{Start: &filesystem.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	keepalive := keepaliveInterval(req.Header())
	idle := time.NewTimer(keepalive)
	defer idle.Stop()
	for {
		select {
		case ev, ok := <-w.events:
			if !ok {
				if err := w.err(); err != nil {
					return connect.NewError(connect.CodeInternal, err)
				}
				return nil
			}
			if err := stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: ev}}); err != nil {
				return err
			}
			idle.Reset(keepalive)
		case <-idle.C:
			if err := stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Keepalive{Keepalive: &filesystem.WatchDirResponse_KeepAlive{}}}); err != nil {
				return err
			}
			idle.Reset(keepalive)
		case <-ctx.Done():
			return ctxError(ctx)
		}
	}
}

func (f *filesystemService) CreateWatcher(ctx context.Context, req *connect.Request[filesystem.CreateWatcherRequest]) (*connect.Response[filesystem.CreateWatcherResponse], error) {
	_, p, err := f.userPath(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	w, err := f.s.watchers.open(p, watchOptions{
		recursive:     req.Msg.GetRecursive(),
		includeEntry:  req.Msg.GetIncludeEntry(),
		networkMounts: req.Msg.GetAllowNetworkMounts(),
	}, true)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&filesystem.CreateWatcherResponse{WatcherId: w.id}), nil
}

func (f *filesystemService) GetWatcherEvents(ctx context.Context, req *connect.Request[filesystem.GetWatcherEventsRequest]) (*connect.Response[filesystem.GetWatcherEventsResponse], error) {
	w, err := f.s.watchers.get(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	evs, err := w.drain()
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return connect.NewResponse(&filesystem.GetWatcherEventsResponse{Events: evs}), nil
}

func (f *filesystemService) RemoveWatcher(ctx context.Context, req *connect.Request[filesystem.RemoveWatcherRequest]) (*connect.Response[filesystem.RemoveWatcherResponse], error) {
	if _, err := f.s.watchers.get(req.Msg.GetWatcherId()); err != nil {
		return nil, err
	}
	f.s.watchers.remove(req.Msg.GetWatcherId())
	return connect.NewResponse(&filesystem.RemoveWatcherResponse{}), nil
}
