package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
)

// Upload stores the size bytes read from r as a new volume. The data goes
// to <name>.part, hashed while written; more than size bytes is refused
// without reading further than size+1, fewer is refused, and a sha256hex
// (if not "") that does not match is ErrChecksum. The file must then be
// the format declared (by format or the extension) and standalone: a qcow2
// with a backing file or an external data file (which could point outside
// the pool), an encrypted or corrupt qcow2, and a "raw" file that starts
// like another image format are refused (ErrInvalid). Only then is it
// renamed into place. Nothing is left on any failure. progress, if not
// nil, gets the fraction received.
func (p *Pool) Upload(ctx context.Context, name, format string, r io.Reader, size int64, sha256hex string, progress func(float64)) (Volume, error) {
	vol, err := p.upload(ctx, name, format, r, size, sha256hex, progress)
	if err != nil {
		return Volume{}, fmt.Errorf("upload volume %s: %w", name, err)
	}
	return vol, nil
}

func (p *Pool) upload(ctx context.Context, name, format string, r io.Reader, size int64, sha256hex string, progress func(float64)) (Volume, error) {
	v, err := p.volume(name, format)
	if err != nil {
		return Volume{}, err
	}
	if size <= 0 {
		return Volume{}, fmt.Errorf("size %d: want a positive number of bytes: %w", size, ErrInvalid)
	}
	var want []byte
	if sha256hex != "" {
		if want, err = hex.DecodeString(sha256hex); err != nil || len(want) != sha256.Size {
			return Volume{}, fmt.Errorf("sha256 %q: want 64 hex digits: %w", sha256hex, ErrInvalid)
		}
	}
	unlock, err := v.lock(ctx, false)
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	vol, err := p.build(ctx, v, func(tmp string) error {
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		h := sha256.New()
		count := &countWriter{size: size, fn: progress, last: -1}
		n, err := io.CopyBuffer(io.MultiWriter(f, h, count), &ctxReader{ctx: ctx, r: io.LimitReader(r, size+1)}, make([]byte, 1<<20))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		switch {
		case err != nil:
			return fmt.Errorf("receive: %w", err)
		case n > size:
			return fmt.Errorf("more data than the declared %d bytes: %w", size, ErrInvalid)
		case n < size:
			return fmt.Errorf("got %d of the declared %d bytes: %w", n, size, ErrInvalid)
		}
		if got := h.Sum(nil); want != nil && !bytes.Equal(got, want) {
			return fmt.Errorf("sha256 of the data is %x, want %x: %w", got, want, ErrChecksum)
		}
		return checkUpload(ctx, tmp, v.format)
	})
	if err != nil {
		return Volume{}, err
	}
	if progress != nil {
		progress(1)
	}
	return vol, nil
}

// checkUpload verifies that an uploaded file is a standalone image of format.
func checkUpload(ctx context.Context, path, format string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	head := make([]byte, headerSniffLen)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		f.Close()
		return err
	}
	head = head[:n]
	var h qcow2Header
	var herr error
	if format == "qcow2" {
		h, herr = readQcow2Header(f)
	}
	f.Close()
	switch format {
	case "raw":
		if name := foreignFormat(head); name != "" {
			return fmt.Errorf("declared raw, but the data is a %s image: %w", name, ErrInvalid)
		}
		if _, err := imageInfo(ctx, path, "raw", false); err != nil {
			return err
		}
		return nil
	case "qcow2":
	default:
		return fmt.Errorf("format %s: %w", format, ErrInvalid)
	}
	// Refuse from the header before qemu-img opens anything the image names.
	switch {
	case errors.Is(herr, errNotQcow2):
		return fmt.Errorf("declared qcow2, but the data is not a qcow2 image: %w", ErrInvalid)
	case herr != nil:
		return herr
	case h.Version != 2 && h.Version != 3:
		return fmt.Errorf("qcow2 version %d is not supported: %w", h.Version, ErrInvalid)
	case h.BackingOffset != 0:
		return fmt.Errorf("the qcow2 image has a backing file; upload standalone images only (qemu-img convert flattens): %w", ErrInvalid)
	case h.Incompatible&qcow2IncompatDataFile != 0:
		return fmt.Errorf("the qcow2 image has an external data file: %w", ErrInvalid)
	case h.CryptMethod != 0:
		return fmt.Errorf("the qcow2 image is encrypted: %w", ErrInvalid)
	}
	info, err := imageInfo(ctx, path, "qcow2", false)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("not a valid qcow2 image: %w: %w", err, ErrInvalid)
	}
	if info.BackingFilename != "" || info.FullBacking != "" || info.DataFile != "" || info.Encrypted {
		return fmt.Errorf("the qcow2 image is not standalone (backing %q, data file %q, encrypted %v): %w",
			info.BackingFilename, info.DataFile, info.Encrypted, ErrInvalid)
	}
	// Exit codes: 0 clean, 3 only leaked clusters (harmless), 2 corrupt.
	code, err := runQemuImg(ctx, io.Discard, "check", "-q", "-f", "qcow2", path)
	switch {
	case code == 0 || code == 3:
		return nil
	case code == 2:
		return fmt.Errorf("the qcow2 image is corrupt: %w: %w", err, ErrInvalid)
	default:
		return err
	}
}

// ctxReader stops reading when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// countWriter reports progress as bytes written / size, in steps of at
// least 0.5 %.
type countWriter struct {
	size, n int64
	fn      func(float64)
	last    float64
}

func (c *countWriter) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	if c.fn != nil {
		if v := min(float64(c.n)/float64(c.size), 1); v-c.last >= 0.005 {
			c.last = v
			c.fn(v)
		}
	}
	return len(b), nil
}

// CheckStandalone checks an image file outside the pools as AdoptImage
// will check its copy: qcow2 (by extension or magic) or raw, standalone (no
// backing or external data file, not encrypted, not corrupt), and a raw
// file not starting like another image format. It lets an API refuse such
// a file before it accepts the work.
//
// A file version that passed once passes again without qemu-img (the
// standalone memo): its bytes are the ones checked.
func CheckStandalone(ctx context.Context, path string) error {
	_, err := standalone.do(path, "", func() (struct{}, error) {
		format, err := hostImageFormat(path)
		if err != nil {
			return struct{}{}, fmt.Errorf("image %s: %w", path, err)
		}
		if err := checkUpload(ctx, path, format); err != nil {
			return struct{}{}, fmt.Errorf("image %s: %w", path, err)
		}
		return struct{}{}, nil
	})
	return err
}

// CheckVolumeName checks a volume name (its elements and its extension)
// and that format, if not "", agrees with the extension.
func CheckVolumeName(name, format string) error {
	f, err := formatOfName(name)
	if err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	if format != "" && format != f {
		return fmt.Errorf("format %q does not match the extension of %s (%s): %w", format, name, f, ErrInvalid)
	}
	return nil
}
