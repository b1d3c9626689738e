package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

var errNotDir = syscall.ENOTDIR

// mkdirAll creates dir and its missing parents (0700) and syncs the
// directory each new one was created in.
func mkdirAll(dir string) error {
	dir = filepath.Clean(dir)
	st, err := os.Stat(dir)
	if err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s: not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

// syncFile flushes a file's data to stable storage (fsync on a read-only
// descriptor flushes the inode on Linux).
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

// syncDir makes the entries of a directory (renames, links, removals) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, syscall.EINVAL) { // some file systems cannot sync directories
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// publish syncs the complete file tmp and gives it its final name dst in
// the same directory, then syncs the directory. Without replace an
// existing dst is ErrExists, decided atomically by link(2) (so also
// between hosts of a shared pool); file systems without hard links fall
// back to check-and-rename.
func publish(tmp, dst string, replace bool) error {
	if err := syncFile(tmp); err != nil {
		return err
	}
	if replace {
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
		return syncDir(filepath.Dir(dst))
	}
	err := os.Link(tmp, dst)
	switch {
	case err == nil:
		if err := os.Remove(tmp); err != nil {
			return err
		}
	case errors.Is(err, fs.ErrExist):
		return ErrExists
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EOPNOTSUPP), errors.Is(err, syscall.ENOSYS):
		if _, err := os.Lstat(dst); err == nil {
			return ErrExists
		}
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
	default:
		return err
	}
	return syncDir(filepath.Dir(dst))
}

// removeStale removes a leftover temporary file of an earlier, interrupted
// attempt (the link itself if it is a symlink, never what it points to).
func removeStale(tmp string) error {
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", filepath.Base(tmp), err)
	}
	return nil
}
