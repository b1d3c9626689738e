package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// MaxChainDepth is the longest backing chain (in files, the volume
// included) a new overlay may have.
const MaxChainDepth = 16

// maxWalk bounds chain walks over images made elsewhere.
const maxWalk = 4 * MaxChainDepth

// chainLink is one file of a backing chain.
type chainLink struct {
	path string // with symlinks resolved
	info ImageInfo
}

// infoCache shares qemu-img info results between the chain walks of one listing.
type infoCache struct {
	mu sync.Mutex
	m  map[string]ImageInfo
}

func (c *infoCache) get(path string) (ImageInfo, bool) {
	if c == nil {
		return ImageInfo{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	info, ok := c.m[path]
	return info, ok
}

func (c *infoCache) put(path string, info ImageInfo) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[path] = info
}

// walkChain follows the backing chain of the image at path, opened as
// format, with one qemu-img info -U per file (never --backing-chain): each
// backing file is checked before it is opened, and opened with the format
// its overlay records, so nothing is probed. With root != "" every file
// (backing and qcow2 data files) must resolve inside root, else
// ErrOutsidePool. Backing formats other than qcow2 and raw are refused.
func walkChain(ctx context.Context, path, format, root string, cache *infoCache) ([]chainLink, error) {
	top := path
	seen := map[string]bool{}
	var links []chainLink
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if len(links) >= maxWalk {
			return nil, fmt.Errorf("image %s: backing chain longer than %d files: %w", top, maxWalk, ErrChainTooDeep)
		}
		real, err := realPath(path)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", path, err)
		}
		if seen[real] {
			return nil, fmt.Errorf("image %s: backing chain loops at %s: %w", top, real, ErrInvalid)
		}
		seen[real] = true
		if root != "" && !within(root, real) {
			return nil, fmt.Errorf("image %s: %s: %w", top, path, ErrOutsidePool)
		}
		st, err := os.Stat(real)
		if err != nil {
			return nil, fmt.Errorf("image %s: backing file %s: %w", top, path, ErrNoImage)
		}
		if !st.Mode().IsRegular() && (root != "" || st.Mode()&os.ModeDevice == 0) {
			return nil, fmt.Errorf("image %s: %s is not a file: %w", top, path, ErrNoImage)
		}
		info, ok := cache.get(real)
		if !ok {
			if info, err = imageInfo(ctx, real, format, true); err != nil {
				return nil, fmt.Errorf("image %s: %w", path, err)
			}
			cache.put(real, info)
		}
		if info.DataFile != "" && root != "" {
			df, err := resolveRef(filepath.Dir(real), info.DataFile, "")
			if err != nil || !within(root, df) {
				return nil, fmt.Errorf("image %s: data file %s: %w", path, info.DataFile, ErrOutsidePool)
			}
		}
		links = append(links, chainLink{path: real, info: info})
		if info.BackingFilename == "" && info.FullBacking == "" {
			return links, nil
		}
		next, err := resolveRef(filepath.Dir(real), info.BackingFilename, info.FullBacking)
		if err != nil {
			return nil, fmt.Errorf("image %s: backing file %q: %w", path, info.BackingFilename, err)
		}
		if root != "" {
			// qemu opens full-backing-filename; both it and the name
			// resolved here must stay inside.
			full := next
			if info.FullBacking != "" {
				if full, err = realPath(absUnder(filepath.Dir(real), info.FullBacking)); err != nil {
					return nil, fmt.Errorf("image %s: backing file %q: %w", path, info.FullBacking, err)
				}
			}
			if !within(root, next) || !within(root, full) {
				return nil, fmt.Errorf("image %s: backing file %s: %w", path, next, ErrOutsidePool)
			}
		}
		switch info.BackingFormat {
		case "qcow2", "raw":
		case "":
			return nil, fmt.Errorf("image %s: backing file %s has no recorded format (it would be probed): %w", path, next, ErrInvalid)
		default:
			return nil, fmt.Errorf("image %s: backing file %s: format %s not supported: %w", path, next, info.BackingFormat, ErrInvalid)
		}
		path, format = next, info.BackingFormat
	}
}

// resolveRef is the file a backing (or data file) reference of an image in
// dir names, with symlinks resolved. qemu reads a name with a protocol
// prefix ("json:", "nbd:", "file:", any "xyz:" before the first slash) as
// something other than a plain file: those are refused as ErrOutsidePool.
func resolveRef(dir, name, full string) (string, error) {
	if name == "" {
		name = full
	}
	if hasProtocol(name) || hasProtocol(full) {
		return "", fmt.Errorf("%q is not a plain file name: %w", name, ErrOutsidePool)
	}
	return realPath(absUnder(dir, name))
}

func absUnder(dir, name string) string {
	if filepath.IsAbs(name) {
		return filepath.Clean(name)
	}
	return filepath.Join(dir, name)
}

// hasProtocol reports whether qemu would parse name as protocol:rest.
func hasProtocol(name string) bool {
	i := strings.IndexAny(name, ":/")
	return i >= 0 && name[i] == ':'
}

// qcow2 header fields (big endian), enough to find backing and data files
// without running qemu-img.
type qcow2Header struct {
	Version       uint32
	BackingOffset uint64
	BackingSize   uint32
	CryptMethod   uint32
	Incompatible  uint64 // version 3 only
}

const (
	qcow2Magic             = "QFI\xfb"
	qcow2IncompatDataFile  = 1 << 2
	qcow2MaxBackingNameLen = 1023
	headerSniffLen         = 512
)

var errNotQcow2 = errors.New("not a qcow2 image")

func readQcow2Header(r io.ReaderAt) (qcow2Header, error) {
	var b [104]byte
	n, err := r.ReadAt(b[:], 0)
	if n < 72 {
		if err == nil || errors.Is(err, io.EOF) {
			err = errNotQcow2
		}
		return qcow2Header{}, err
	}
	if string(b[:4]) != qcow2Magic {
		return qcow2Header{}, errNotQcow2
	}
	h := qcow2Header{
		Version:       binary.BigEndian.Uint32(b[4:]),
		BackingOffset: binary.BigEndian.Uint64(b[8:]),
		BackingSize:   binary.BigEndian.Uint32(b[16:]),
		CryptMethod:   binary.BigEndian.Uint32(b[32:]),
	}
	if h.Version >= 3 {
		if n < 80 {
			return qcow2Header{}, errNotQcow2
		}
		h.Incompatible = binary.BigEndian.Uint64(b[72:])
	}
	return h, nil
}

// qcow2Backing reads the backing file name recorded in a qcow2 header
// ("" if none); errNotQcow2 if the file is not qcow2.
func qcow2Backing(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h, err := readQcow2Header(f)
	if err != nil {
		return "", err
	}
	if h.BackingOffset == 0 {
		return "", nil
	}
	if h.BackingSize == 0 || h.BackingSize > qcow2MaxBackingNameLen {
		return "", fmt.Errorf("%s: bad backing file name length %d", path, h.BackingSize)
	}
	name := make([]byte, h.BackingSize)
	if _, err := f.ReadAt(name, int64(h.BackingOffset)); err != nil {
		return "", fmt.Errorf("%s: read backing file name: %w", path, err)
	}
	return string(name), nil
}

// foreignFormat names the image format a file's first bytes announce, ""
// for none (raw). These are the formats that qemu would detect by probing,
// several of which can point at other files.
func foreignFormat(head []byte) string {
	for _, m := range []struct{ magic, name string }{
		{qcow2Magic, "qcow2"},
		{"QED\x00", "qed"},
		{"KDMV", "vmdk"},
		{"COWD", "vmdk"},
		{"# Disk DescriptorFile", "vmdk"},
		{"vhdxfile", "vhdx"},
		{"conectix", "vpc"},
		{"<<< ", "vdi"},
		{"LUKS\xba\xbe", "luks"},
		{"WithoutFreeSpace", "parallels"},
		{"WithouFreSpacExt", "parallels"},
		{"Bochs Virtual HD Image", "bochs"},
		{"#!/bin/sh\n#V2.0 Format", "cloop"},
	} {
		if bytes.HasPrefix(head, []byte(m.magic)) {
			return m.name
		}
	}
	return ""
}
