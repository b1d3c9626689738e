package imports

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// An OVF File may be stored in chunks (ovf:chunkSize: href.000000000,
// href.000000001…, each chunkSize bytes but the last, ovf:size bytes in
// all) and gzip-compressed (ovf:compression="gzip", ovf:size then the
// compressed size; chunks are cut from the compressed file). qemu-img reads
// neither, so Inspect reads such a file through Go's readers once (its
// format and virtual size from its header, its decoded size bounded by the
// disk's ovf:capacity) and Convert writes it out decoded beside the volume
// before it checks and converts it like any file.

const (
	// maxChunks bounds the chunks of one file.
	maxChunks = 1000 // a spec lists them all: kept well below etcd's request size
	// scanKeep is how much of the start and the end of a decoded file
	// Inspect keeps to read its headers (a VHD footer, a VMDK footer).
	scanKeep = 64 << 10
)

// encoded reports whether src must be decoded before qemu-img reads it.
func (src Source) encoded() bool { return len(src.Chunks) > 0 || src.Compression != "" }

// chunkName is the file holding chunk i of an OVF file.
func chunkName(href string, i int) string { return fmt.Sprintf("%s.%09d", href, i) }

// chunkNames are the package files holding the OVF File f: its href, or
// for a chunked file each chunk, checked complete: as many as ovf:size and
// ovf:chunkSize make, each of chunkSize bytes but the last, and no more.
func chunkNames(f ovfFile, pkg pkgFiles) ([]string, error) {
	if f.ChunkSize == "" {
		return []string{f.Href}, nil
	}
	cs, _ := strconv.ParseInt(f.ChunkSize, 10, 64) // checkFile parsed both
	total, _ := strconv.ParseInt(f.Size, 10, 64)
	n := (total + cs - 1) / cs
	if n > maxChunks {
		return nil, malformed("OVF file %q: ovf:size %d in chunks of %d (ovf:chunkSize) makes %d chunks, more than %d", f.Href, total, cs, n, maxChunks)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = chunkName(f.Href, i)
		size, err := pkg.size(names[i])
		if errors.Is(err, ErrMalformed) || errors.Is(err, fs.ErrNotExist) {
			return nil, malformed("OVF file %q: chunk %d of %d (ovf:size %d, ovf:chunkSize %d): %v", f.Href, i+1, n, total, cs, err)
		}
		if err != nil {
			return nil, err
		}
		want := cs
		if i == len(names)-1 {
			want = total - cs*(n-1)
		}
		if size != want {
			return nil, malformed("OVF file %q: chunk %s has %d bytes, want %d (ovf:size %d, ovf:chunkSize %d)", f.Href, names[i], size, want, total, cs)
		}
	}
	if _, err := pkg.size(chunkName(f.Href, int(n))); err == nil {
		return nil, malformed("OVF file %q: chunk %s is beyond ovf:size %d (%d chunks of ovf:chunkSize %d)", f.Href, chunkName(f.Href, int(n)), total, n, cs)
	}
	return names, nil
}

// encodedDisk plans the OVF disk d whose file f is chunked or compressed:
// its bytes are read once, decoded, for the format and virtual size their
// header gives.
func encodedDisk(ctx context.Context, f ovfFile, d ovfDisk, pkg pkgFiles, delta bool) (Source, error) {
	capacity, err := quantityBytes(d.Capacity, d.Units, "byte")
	if f.Compression == "gzip" && (err != nil || capacity <= 0 || capacity > maxVMDKSectors*512) {
		return Source{}, malformed("OVF disk %q: file %q is gzip-compressed and needs a valid ovf:capacity to bound what it decodes to (got %q %q)", d.ID, f.Href, d.Capacity, d.Units)
	}
	names, err := chunkNames(f, pkg)
	if err != nil {
		return Source{}, err
	}
	var parts []Chunk
	for _, n := range names {
		c, err := pkg.chunk(n)
		if err != nil {
			return Source{}, err
		}
		parts = append(parts, c)
	}
	src := Source{Path: parts[0].Path, Offset: parts[0].Offset, Size: parts[0].Size, Chunks: parts[1:]}
	if f.Compression == "gzip" {
		src.Compression, src.Capacity = "gzip", capacity
	}
	if err := checkEncoded(src, f.Href); err != nil {
		return Source{}, err
	}
	im, err := scanDecoded(ctx, src, f.Href)
	if err != nil {
		return Source{}, err
	}
	im.delta = delta
	if src.Format, err = detectDisk(im, strings.ToLower(filepath.Ext(f.Href))); err != nil {
		return Source{}, err
	}
	if src.VirtualSize, err = headerSize(im, src.Format); err != nil {
		return Source{}, err
	}
	if src.Compression != "" && src.VirtualSize > src.Capacity {
		return Source{}, malformed("OVF disk %q: %s decompresses to a disk of %d bytes, more than its ovf:capacity %d", d.ID, f.Href, src.VirtualSize, src.Capacity)
	}
	return src, nil
}

// decodedBound is the most bytes a compressed file may decode to: its
// disk's capacity and room for its format's metadata (tables, markers,
// incompressible grains a little larger than the data), 1/64 and 1 MiB.
func decodedBound(capacity int64) int64 { return capacity + capacity/64 + 1<<20 }

// checkEncoded checks what can be checked of an encoded source without
// decoding it: the compression, the capacity bounding it, every range a
// regular file's, the first bytes of a gzip stream; name names the file.
func checkEncoded(src Source, name string) error {
	switch src.Compression {
	case "":
	case "gzip":
		if src.Capacity <= 0 || src.Capacity > maxVMDKSectors*512 || src.Capacity%512 != 0 {
			return malformed("capacity %d of a compressed disk: want a positive multiple of 512 up to %d", src.Capacity, maxVMDKSectors*512)
		}
	default:
		return malformed("compression %q: only gzip is supported", src.Compression)
	}
	if len(src.Chunks) >= maxChunks {
		return malformed("%d chunks, more than %d", len(src.Chunks)+1, maxChunks)
	}
	parts := src.parts()
	for i, c := range parts {
		if c.Size <= 0 {
			return malformed("%s: chunk %d: a range of %d bytes at %d", c.Path, i, c.Size, c.Offset)
		}
		if err := checkRange(c); err != nil {
			return err
		}
	}
	if src.Compression == "gzip" {
		head, err := readRange(parts[0], 2)
		if err != nil {
			return err
		}
		if !bytes.Equal(head, []byte{0x1f, 0x8b}) {
			return malformed("%s: ovf:compression says gzip but the file is not gzip-compressed", name)
		}
	}
	return nil
}

// parts are the ranges of src's file, in order.
func (src Source) parts() []Chunk {
	return append([]Chunk{{Path: src.Path, Offset: src.Offset, Size: src.Size}}, src.Chunks...)
}

// checkRange checks that c is inside a regular file.
func checkRange(c Chunk) error {
	if !filepath.IsAbs(c.Path) || c.Offset < 0 || c.Size < 0 {
		return malformed("source %q at %d+%d: want an absolute path and a valid range", c.Path, c.Offset, c.Size)
	}
	fi, err := os.Stat(c.Path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return malformed("%s is not a regular file", c.Path)
	}
	if c.Offset > fi.Size() || c.Size > fi.Size()-c.Offset {
		return malformed("%s: truncated: needs %d bytes at offset %d, has %d bytes", filepath.Base(c.Path), c.Size, c.Offset, fi.Size())
	}
	return nil
}

func readRange(c Chunk, n int64) ([]byte, error) {
	f, err := os.Open(c.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return image{r: io.NewSectionReader(f, c.Offset, c.Size), size: c.Size, name: filepath.Base(c.Path)}.head(n)
}

// decoded reads src's file: its ranges joined, decompressed.
type decoded struct {
	io.Reader
	files []*os.File
	read  *countingBytes // compressed bytes consumed, for progress
	total int64          // compressed bytes in all
}

type countingBytes struct {
	r io.Reader
	n int64
}

func (c *countingBytes) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (d *decoded) Close() {
	for _, f := range d.files {
		f.Close()
	}
}

// openDecoded opens src's ranges and joins them, through gzip when
// compressed; name names the file in messages.
func openDecoded(src Source, name string) (*decoded, error) {
	d := &decoded{}
	var readers []io.Reader
	open := map[string]*os.File{} // the chunks of an OVA are all in it: opened once
	for _, c := range src.parts() {
		f := open[c.Path]
		if f == nil {
			var err error
			if f, err = os.Open(c.Path); err != nil {
				d.Close()
				return nil, err
			}
			open[c.Path] = f
			d.files = append(d.files, f)
		}
		readers = append(readers, io.NewSectionReader(f, c.Offset, c.Size))
		d.total += c.Size
	}
	d.read = &countingBytes{r: io.MultiReader(readers...)}
	d.Reader = d.read
	if src.Compression == "gzip" {
		zr, err := gzip.NewReader(d.read)
		if err != nil {
			d.Close()
			return nil, malformed("%s: gzip: %v", name, err)
		}
		d.Reader = zr
	}
	return d, nil
}

// limit is the most bytes src's file may decode to.
func (src Source) limit() int64 {
	if src.Compression != "" {
		return decodedBound(src.Capacity)
	}
	var n int64
	for _, c := range src.parts() {
		n += c.Size
	}
	return n
}

// copyDecoded copies src's decoded file to w, refusing more than its
// limit and a stream that does not decode, reporting the share of the
// input read.
func copyDecoded(ctx context.Context, src Source, name string, w io.Writer, progress func(float64)) (int64, error) {
	d, err := openDecoded(src, name)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	limit := src.limit()
	pw := &progressWriter{w: w, d: d, progress: progress}
	n, err := io.CopyBuffer(pw, ctxReader{ctx, io.LimitReader(d, limit+1)}, make([]byte, 1<<20))
	switch {
	case ctx.Err() != nil:
		return n, ctx.Err()
	case err != nil && (errors.Is(err, gzip.ErrHeader) || errors.Is(err, gzip.ErrChecksum) || errors.Is(err, io.ErrUnexpectedEOF) || strings.HasPrefix(err.Error(), "flate:")):
		return n, malformed("%s: gzip: %v", name, err)
	case err != nil:
		return n, err
	case n > limit:
		return n, malformed("%s decompresses to more than %d bytes: more than its disk's capacity %d holds (with 1/64 and 1 MiB for its format's metadata)", name, limit, src.Capacity)
	}
	return n, nil
}

// progressWriter reports the share of the input consumed, in increasing
// steps of at least 1%, below 1 (the caller's next step starts there).
type progressWriter struct {
	w        io.Writer
	d        *decoded
	progress func(float64)
	last     float64
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if v := float64(p.d.read.n) / float64(max(p.d.total, 1)); v >= p.last+0.01 && v < 0.99 {
		p.last = v
		p.progress(v)
	}
	return n, err
}

// scanDecoded reads src's file once and keeps its start and end: an image
// whose reads there answer (format detection and headers) and elsewhere
// fail as truncated.
func scanDecoded(ctx context.Context, src Source, name string) (image, error) {
	ht := &headTail{}
	n, err := copyDecoded(ctx, src, name, ht, func(float64) {})
	if err != nil {
		return image{}, err
	}
	if n == 0 {
		return image{}, malformed("%s: empty once decoded", name)
	}
	ht.size = n
	return image{r: ht, size: n, name: name}, nil
}

// headTail keeps the first and the last scanKeep bytes written to it.
type headTail struct {
	head, tail []byte
	size       int64
}

func (h *headTail) Write(b []byte) (int, error) {
	n := len(b)
	if room := scanKeep - len(h.head); room > 0 {
		k := min(room, len(b))
		h.head = append(h.head, b[:k]...)
	}
	h.tail = append(h.tail, b...)
	if len(h.tail) > 2*scanKeep {
		h.tail = append(h.tail[:0], h.tail[len(h.tail)-scanKeep:]...)
	}
	return n, nil
}

func (h *headTail) ReadAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if end <= int64(len(h.head)) {
		return copy(p, h.head[off:]), nil
	}
	if start := h.size - int64(len(h.tail)); off >= start && end <= h.size {
		return copy(p, h.tail[off-start:]), nil
	}
	return 0, malformed("reads at %d beyond what a header check keeps of a decoded file", off)
}

// headerSize is the virtual size a disk's header gives, for the formats a
// compressed or chunked file may hold.
func headerSize(im image, format string) (int64, error) {
	var size int64
	switch format {
	case "raw":
		size = im.size
	case "vmdk":
		head, err := im.head(4)
		if err != nil {
			return 0, err
		}
		if string(head) != magicVMDK {
			return 0, malformed("%s: a VMDK text descriptor cannot be compressed or chunked: its extents are other files", im.name)
		}
		h, err := readVMDKHeader(im, 0)
		if err != nil {
			return 0, err
		}
		// the rest is checked once decoded (stage); a parent it names
		// is refused now, from the start Inspect keeps
		if err := checkNoParent(im, 0x200, min(parentDescSize, scanKeep-0x200)); err != nil {
			return 0, err
		}
		if h.GDOffset == vmdkGDAtEnd && h.Capacity == 0 {
			if h, err = readVMDKFooter(im); err != nil {
				return 0, err
			}
		}
		if h.Capacity > maxVMDKSectors {
			return 0, malformed("%s: VMDK capacity %d sectors out of range", im.name, h.Capacity)
		}
		size = int64(h.Capacity) * 512
	case "qcow2":
		b, err := im.read(24, 8)
		if err != nil {
			return 0, err
		}
		size = int64(binary.BigEndian.Uint64(b) & (1<<62 - 1))
	case "vpc":
		f, err := readVHDFooter(im)
		if err != nil {
			return 0, err
		}
		size = int64(f.currentSize)
	default:
		return 0, malformed("%s: a compressed or chunked %s disk is not supported (VMDK, VHD, qcow2 and raw are)", im.name, format)
	}
	if size <= 0 {
		return 0, malformed("%s: %s virtual size %d", im.name, format, size)
	}
	return size, nil
}

// stage writes src's file decoded to file (a plain file beside the volume)
// and returns the Source reading it, checked like any file; a compressed
// disk larger than its capacity is refused.
func stage(ctx context.Context, src Source, file string, progress func(float64)) (Source, error) {
	if err := checkEncoded(src, filepath.Base(src.Path)); err != nil {
		return Source{}, err
	}
	out, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return Source{}, err
	}
	n, err := copyDecoded(ctx, src, filepath.Base(src.Path), out, progress)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Source{}, err
	}
	staged := src
	// a range, not the whole file: checked as a file inside an archive,
	// so a descriptor naming other files is refused
	staged.Path, staged.Offset, staged.Size, staged.Chunks, staged.Compression, staged.Capacity = file, 0, n, nil, "", 0
	if err := checkOneSource(staged); err != nil {
		return Source{}, err
	}
	if src.Compression != "" {
		size, err := virtualSize(ctx, staged, staged.Base != nil)
		if err != nil {
			return Source{}, err
		}
		if size > src.Capacity {
			return Source{}, malformed("%s decompresses to a disk of %d bytes, more than its capacity %d", filepath.Base(src.Path), size, src.Capacity)
		}
	}
	return staged, nil
}
