package storage

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Ownership of the files an unprivileged QEMU opens. The agent (root)
// gives each VM's files to the VM's uid and shares a file several VMs
// open through a group only they hold; it never follows a symlink when it
// changes an owner or mode, so a file swapped for a link to a host file
// is refused instead of handed out.

// ChainFiles returns the files of the image at path and its backing chain,
// top first, with symlinks resolved: what QEMU opens for that disk. Every
// backing file is checked before it is opened, as walkChain does.
func ChainFiles(ctx context.Context, path, format string) ([]string, error) {
	links, err := walkChain(ctx, path, format, "", nil)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(links))
	for i, l := range links {
		out[i] = l.path
	}
	return out, nil
}

// Contains reports whether path (symlinks resolved) is inside the pool and
// returns its name relative to the pool.
func (p *Pool) Contains(path string) (string, bool) {
	root, err := p.root()
	if err != nil {
		return "", false
	}
	real, err := realPath(path)
	if err != nil || !within(root, real) {
		return "", false
	}
	rel, err := filepath.Rel(root, real)
	if err != nil || rel == "." {
		return "", false
	}
	return rel, true
}

// Grant sets the owner (uid, -1 keeps it), group and permission bits of the
// regular file at path. A symlink at path, a file with more than one hard
// link and anything but a regular file are refused.
func Grant(path string, uid, gid int, mode fs.FileMode) error {
	return grant(path, uid, gid, mode, false)
}

// GrantDir is Grant for a directory.
func GrantDir(path string, uid, gid int, mode fs.FileMode) error {
	return grant(path, uid, gid, mode, true)
}

func grant(path string, uid, gid int, mode fs.FileMode, dir bool) error {
	flags := os.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	if dir {
		flags |= syscall.O_DIRECTORY
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return fmt.Errorf("set owner of %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("set owner of %s: %w", path, err)
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	switch {
	case dir && !st.IsDir(), !dir && !st.Mode().IsRegular():
		return fmt.Errorf("set owner of %s: not a regular file: %w", path, ErrInvalid)
	case !dir && sys != nil && sys.Nlink > 1:
		return fmt.Errorf("set owner of %s: the file has %d hard links: %w", path, sys.Nlink, ErrInvalid)
	}
	if sys == nil || (uid >= 0 && int(sys.Uid) != uid) || int(sys.Gid) != gid {
		if err := f.Chown(uid, gid); err != nil {
			return fmt.Errorf("set owner of %s: %w", path, err)
		}
	}
	if st.Mode().Perm() != mode.Perm() || st.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
		if err := f.Chmod(mode.Perm()); err != nil {
			return fmt.Errorf("set mode of %s: %w", path, err)
		}
	}
	return nil
}

// OpenPath makes dir and every directory above it traversable (x) by
// everyone; nothing becomes listable or writable. QEMU running as a VM's
// uid reaches its files through them.
func OpenPath(dir string) error {
	d := filepath.Clean(dir)
	for {
		st, err := os.Lstat(d)
		if err != nil {
			return fmt.Errorf("open path to %s: %w", dir, err)
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			if d, err = filepath.EvalSymlinks(d); err != nil {
				return fmt.Errorf("open path to %s: %w", dir, err)
			}
			continue
		}
		if !st.IsDir() {
			return fmt.Errorf("open path to %s: %s is not a directory", dir, d)
		}
		if st.Mode().Perm()&0o001 == 0 {
			keep := st.Mode() & (fs.ModePerm | fs.ModeSetgid | fs.ModeSetuid | fs.ModeSticky)
			if err := os.Chmod(d, keep|0o001); err != nil {
				return fmt.Errorf("open path to %s: %w", dir, err)
			}
		}
		parent := filepath.Dir(d)
		if parent == d {
			return nil
		}
		d = parent
	}
}
