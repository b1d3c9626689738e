package imports

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

const maxTarMembers = 10000

// member is where a file's bytes are in the tar: tar stores each regular
// file contiguously right after its header(s).
type member struct{ offset, size int64 }

// ova is an OVA archive read in place.
type ova struct {
	path    string
	f       *os.File
	members map[string]member
}

// inspectOVA plans the import of an OVA without extracting it.
func inspectOVA(ctx context.Context, path string, f *os.File, size int64, opt Options) ([]Plan, error) {
	members, err := scanTar(f, size)
	if err != nil {
		return nil, err
	}
	o := &ova{path: path, f: f, members: members}
	ovfName, err := o.only(".ovf", "")
	if errors.Is(err, errNone) {
		return nil, malformed("%v", err)
	}
	if err != nil {
		return nil, err
	}
	desc, err := o.readSmall(ovfName)
	if err != nil {
		return nil, err
	}
	mfName, err := o.only(".mf", strings.TrimSuffix(ovfName, filepath.Ext(ovfName))+".mf")
	if errors.Is(err, errNone) {
		mfName, err = "", nil
	}
	if err != nil {
		return nil, err
	}
	return planAppliance(ctx, applianceFiles{
		kind: "ova", fallback: nameFromFile(path), ovfName: ovfName, ovf: desc, mfName: mfName, pkg: o, opt: opt,
	})
}

// scanTar reads the headers of a tar once, recording where each regular
// member's data starts; data is skipped with Seek, not read.
func scanTar(f *os.File, size int64) (map[string]member, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	cr := &countingReader{f: f}
	tr := tar.NewReader(cr)
	members := map[string]member{}
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return members, nil
		}
		if err != nil {
			return nil, malformed("tar: %v (truncated?)", err)
		}
		if n >= maxTarMembers {
			return nil, malformed("tar: more than %d members", maxTarMembers)
		}
		if err := addMember(members, hdr, cr.pos, size); err != nil {
			return nil, err
		}
	}
}

func addMember(members map[string]member, hdr *tar.Header, offset, size int64) error {
	if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != 0 {
		return nil // directories, links…: never used as package files
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return malformed("tar: %s is a sparse member: not supported", hdr.Name)
		}
	}
	name := strings.TrimPrefix(hdr.Name, "./")
	if _, dup := members[name]; dup {
		return malformed("tar: %s appears twice", name)
	}
	if hdr.Size < 0 || offset+hdr.Size > size {
		return malformed("tar: %s: truncated (%d bytes at offset %d, the archive has %d)", name, hdr.Size, offset, size)
	}
	members[name] = member{offset: offset, size: hdr.Size}
	return nil
}

// countingReader knows the offset archive/tar has reached.
type countingReader struct {
	f   *os.File
	pos int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.f.Read(p)
	c.pos += int64(n)
	return n, err
}

func (c *countingReader) Seek(off int64, whence int) (int64, error) {
	pos, err := c.f.Seek(off, whence)
	if err == nil {
		c.pos = pos
	}
	return pos, err
}

// errNone is only's error when the archive has no such member.
var errNone = errors.New("no such member")

// only returns the member named want, or else the one member (at the top
// level) ending in ext; an error wrapping errNone when there is none, one
// matching ErrMalformed when there are several.
func (o *ova) only(ext, want string) (string, error) {
	if _, ok := o.members[want]; ok && want != "" {
		return want, nil
	}
	var found []string
	for n := range o.members {
		if strings.EqualFold(filepath.Ext(n), ext) && !strings.Contains(n, "/") {
			found = append(found, n)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%s: no %s file at the top of the archive: %w", filepath.Base(o.path), ext, errNone)
	case 1:
		return found[0], nil
	}
	return "", malformed("%s: %d %s files at the top of the archive, want one", filepath.Base(o.path), len(found), ext)
}

func (o *ova) member(name string) (member, error) {
	m, ok := o.members[name]
	if !ok {
		return m, malformed("%s: %s is missing from the archive", filepath.Base(o.path), name)
	}
	return m, nil
}

func (o *ova) readSmall(name string) ([]byte, error) {
	m, err := o.member(name)
	if err != nil {
		return nil, err
	}
	if m.size > maxOVF {
		return nil, malformed("%s: %d bytes, too large", name, m.size)
	}
	return image{r: o.f, size: m.offset + m.size, name: name}.read(m.offset, m.size)
}

func (o *ova) size(name string) (int64, error) {
	m, err := o.member(name)
	return m.size, err
}

func (o *ova) open(name string) (io.ReadCloser, error) {
	m, err := o.member(name)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(io.NewSectionReader(o.f, m.offset, m.size)), nil
}

// disk is a disk inside the archive: qemu-img will read the byte range of
// the .ova through a raw offset/size node. A VMDK text descriptor is
// replaced by its FLAT extents (other members), the disk's raw bytes; a
// descriptor of a sparse extent is refused (qemu cannot take it from
// inside the tar).
func (o *ova) disk(name string) (image, Source, string, error) {
	m, err := o.member(name)
	if err != nil {
		return image{}, Source{}, "", err
	}
	im := image{r: io.NewSectionReader(o.f, m.offset, m.size), size: m.size, name: name}
	if head, err := im.head(4096); err == nil && isVMDKDescriptor(im, head, strings.ToLower(path.Ext(name))) {
		return o.extentDisk(im)
	}
	return im, Source{Path: o.path, Offset: m.offset, Size: m.size}, "", nil
}

// extentDisk is the disk a VMDK descriptor inside the archive describes:
// its FLAT extents, members named relative to the descriptor (the image's
// name and parts, which the caller checks the OVF references), read as the
// raw bytes they hold, joined in order.
func (o *ova) extentDisk(desc image) (image, Source, string, error) {
	extents, err := parseVMDKDescriptor(desc)
	if err != nil {
		return image{}, Source{}, "", err
	}
	if len(extents) > maxChunks {
		return image{}, Source{}, "", malformed("%s: %d VMDK extents inside an archive, more than %d", desc.name, len(extents), maxChunks)
	}
	var raw image
	var src Source
	for i, e := range extents {
		if e.kind == "SPARSE" {
			// qemu opens a SPARSE extent only through a descriptor naming
			// files: Convert writes the extents out beside the volume
			return o.sparseExtents(desc, extents)
		}
		name, c, err := o.extent(desc.name, e)
		if err != nil {
			return image{}, Source{}, "", err
		}
		if i == 0 {
			raw = image{r: io.NewSectionReader(o.f, c.Offset, c.Size), size: c.Size, name: name}
			src = Source{Path: o.path, Format: "raw", Offset: c.Offset, Size: c.Size}
		} else {
			raw.parts = append(raw.parts, name)
			src.Chunks = append(src.Chunks, c)
		}
		src.VirtualSize += c.Size
	}
	if len(extents) > 1 && src.VirtualSize > maxVMDKSectors*512 {
		return image{}, Source{}, "", malformed("%s: VMDK extents of %d bytes in all: out of range", desc.name, src.VirtualSize)
	}
	if len(extents) == 1 {
		src.VirtualSize = 0 // qemu-img tells, as for any disk
	}
	return raw, src, "", nil
}

// sparseExtents is a VMDK descriptor inside the archive with a SPARSE
// extent: each extent (members named relative to the descriptor, each a
// File the caller checks) is checked in place, a SPARSE one's header and
// tables, and the Source lists their ranges in the descriptor's order
// (Extents); Convert writes them out as files beside the volume under a
// descriptor of its own.
func (o *ova) sparseExtents(desc image, extents []vmdkExtent) (image, Source, string, error) {
	m, err := o.member(desc.name)
	if err != nil {
		return image{}, Source{}, "", err
	}
	src := Source{Path: o.path, Format: "vmdk", Offset: m.offset, Size: m.size}
	im := desc
	for i, e := range extents {
		name, c, err := o.extent(desc.name, e)
		if err != nil {
			return image{}, Source{}, "", err
		}
		src.Extents = append(src.Extents, c)
		src.VirtualSize += e.sectors * 512
		if i == 0 {
			im.name = name
		} else {
			im.parts = append(im.parts, name)
		}
	}
	if src.VirtualSize > maxVMDKSectors*512 {
		return image{}, Source{}, "", malformed("%s: VMDK extents of %d bytes in all: out of range", desc.name, src.VirtualSize)
	}
	return im, src, "", nil
}

// extent is the member holding the extent e of the descriptor desc (named
// relative to it) and the range of the archive e reads, checked.
func (o *ova) extent(desc string, e vmdkExtent) (string, Chunk, error) {
	name := path.Join(path.Dir(desc), e.file)
	if err := checkHref(e.file); err != nil {
		return "", Chunk{}, malformed("%s: VMDK extent %q %v", desc, e.file, err)
	}
	m, err := o.member(name)
	if err != nil {
		return "", Chunk{}, err
	}
	c, err := extentRange(desc, e, image{r: io.NewSectionReader(o.f, m.offset, m.size), size: m.size, name: name})
	c.Path, c.Offset = o.path, m.offset+c.Offset
	return name, c, err
}

// extentRange checks the extent e of the descriptor desc held by ext and
// returns the range of ext it reads: a FLAT extent's sectors from its
// offset, a SPARSE extent whole (its header and tables checked against
// e's size).
func extentRange(desc string, e vmdkExtent, ext image) (Chunk, error) {
	if e.sectors > maxVMDKSectors || e.offset > maxVMDKSectors {
		return Chunk{}, malformed("%s: VMDK extent %q: size out of range", desc, e.file)
	}
	switch e.kind {
	case "FLAT", "VMFS":
		off, n := e.offset*512, e.sectors*512
		if err := ext.need(off, n); err != nil {
			return Chunk{}, malformed("%s: VMDK extent %q has %d bytes, the descriptor needs %d", desc, e.file, ext.size, off+n)
		}
		return Chunk{Offset: off, Size: n}, nil
	case "SPARSE":
		head, err := ext.head(4)
		if err != nil {
			return Chunk{}, err
		}
		if string(head) != magicVMDK {
			return Chunk{}, malformed("%s: SPARSE VMDK extent %q without a sparse header", desc, e.file)
		}
		if err := checkSparseVMDK(ext, e.sectors); err != nil {
			return Chunk{}, err
		}
		return Chunk{Size: ext.size}, nil
	}
	return Chunk{}, malformed("%s: VMDK extent %q: %s extents are not supported", desc, e.file, e.kind)
}

func (o *ova) chunk(name string) (Chunk, error) {
	m, err := o.member(name)
	return Chunk{Path: o.path, Offset: m.offset, Size: m.size}, err
}

func (o *ova) close() {}
