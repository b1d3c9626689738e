package storage

import (
	"os"
	"sync"
	"syscall"
)

// fileVersion identifies one version of a regular file's bytes: any write
// moves its mtime and any change of its metadata its ctime, which no user
// can set back, so a file with the same device, inode, size, mtime and
// ctime holds what it held. Block devices and the like have none (their
// node does not change when their data does).
type fileVersion struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // ns
}

func versionOf(path string) (fileVersion, bool) {
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return fileVersion{}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileVersion{}, false
	}
	return fileVersion{dev: uint64(st.Dev), ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}, true
}

// memoLimit bounds each memo; past it the memo starts over.
const memoLimit = 4096

// memo remembers, for the life of the process, what a qemu-img run found
// in a file version, so that an unchanged image is not inspected again at
// every VM start (issue 15: several qemu-img runs of 10-30 ms each per
// start, on the same base image). Only successes are kept, and only when
// the file was the same version before and after the run.
type memo[V any] struct {
	mu sync.Mutex
	m  map[memoKey]V
}

type memoKey struct {
	path, format string
	v            fileVersion
}

func (c *memo[V]) get(path, format string) (V, bool) {
	var zero V
	v, ok := versionOf(path)
	if !ok {
		return zero, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	val, ok := c.m[memoKey{path, format, v}]
	return val, ok
}

// do returns the remembered value of path's current version, or runs f
// and remembers its value when it succeeded on an unchanged file.
func (c *memo[V]) do(path, format string, f func() (V, error)) (V, error) {
	if val, ok := c.get(path, format); ok {
		return val, nil
	}
	before, known := versionOf(path)
	val, err := f()
	if err != nil || !known {
		return val, err
	}
	if after, ok := versionOf(path); ok && after == before {
		c.put(memoKey{path, format, before}, val)
	}
	return val, nil
}

func (c *memo[V]) put(k memoKey, val V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= memoLimit {
		c.m = map[memoKey]V{}
	}
	c.m[k] = val
}

// remember keeps val for path's current version: what the caller itself
// just wrote there.
func (c *memo[V]) remember(path, format string, val V) {
	if v, ok := versionOf(path); ok {
		c.put(memoKey{path, format, v}, val)
	}
}

var (
	// infos: qemu-img info -U of a file opened as a format.
	infos memo[ImageInfo]
	// standalone: files outside the pools CheckStandalone passed (format
	// "" : it finds the format itself).
	standalone memo[struct{}]
)
