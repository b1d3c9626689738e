package imports

import (
	"bytes"
	"encoding/binary"
)

// VMDK limits and constants (see VMware's "Virtual Disk Format 5.0" and
// QEMU's block/vmdk.c, whose parsing the checks below mirror).
const (
	maxDescriptor       = 1<<20 - 1 // qemu reads at most this much of a descriptor
	parentDescSize      = 20 * 512  // qemu looks for parentFileNameHint in this much
	vmdkGDAtEnd         = ^uint64(0)
	vmdkFlagZeroGrain   = 1 << 2
	vmdkFlagMarkers     = 1 << 17
	vmdkCompressDeflate = 1
	vmdkMarkerEOS       = 0
	vmdkMarkerFooter    = 3
	maxVMDKSectors      = 1 << 37 // 64 TiB
	maxVMDKGrain        = 0x200000
	maxVMDKGDEntries    = 1 << 21
	maxVMDKExtents      = 4096
)

// vmdkHeader is the SparseExtentHeader after the magic, little-endian.
type vmdkHeader struct {
	Version      uint32
	Flags        uint32
	Capacity     uint64 // sectors
	GrainSize    uint64 // sectors
	DescOffset   uint64 // sectors
	DescSize     uint64 // sectors
	NumGTEsPerGT uint32
	RGDOffset    uint64
	GDOffset     uint64
	Overhead     uint64 // sectors before the first grain
	Unclean      uint8
	EOLChars     [4]byte
	Compress     uint16
}

// checkVMDK checks a sparse VMDK or a descriptor and its extents.
func checkVMDK(im image, dir string) error {
	head, err := im.head(4)
	if err != nil {
		return err
	}
	if string(head) == magicVMDK {
		return checkSparseVMDK(im, 0)
	}
	if dir == "" {
		return malformed("%s: a VMDK descriptor with separate extent files cannot be read from inside an archive", im.name)
	}
	return checkVMDKDescriptor(im, dir)
}

// checkSparseVMDK checks a hosted sparse extent (monolithicSparse,
// streamOptimized, a twoGbMaxExtentSparse piece): header or footer, grain
// directory and tables, every allocated grain inside the file. sectors, when
// not 0, is the capacity the descriptor declared for it.
func checkSparseVMDK(im image, sectors int64) error {
	h, err := readVMDKHeader(im, 0)
	if err != nil {
		return err
	}
	if h.Capacity == 0 {
		// qemu would open the embedded descriptor's extents instead.
		return malformed("%s: VMDK sparse header with capacity 0", im.name)
	}
	if err := checkNoParent(im, 0x200, parentDescSize); err != nil {
		return err
	}
	if h.DescOffset != 0 && h.DescOffset <= uint64(im.size)/512 {
		n := int64(min(h.DescSize, maxDescriptor/512)) * 512
		if err := checkNoParent(im, int64(h.DescOffset)*512, n); err != nil {
			return err
		}
	}
	if h.GDOffset == vmdkGDAtEnd {
		if h, err = readVMDKFooter(im); err != nil {
			return err
		}
	}
	if err := validVMDKHeader(im, h); err != nil {
		return err
	}
	if sectors != 0 && int64(h.Capacity) != sectors {
		return malformed("%s: VMDK extent has %d sectors, its descriptor says %d", im.name, h.Capacity, sectors)
	}
	return checkVMDKGrains(im, h)
}

func readVMDKHeader(im image, off int64) (vmdkHeader, error) {
	var h vmdkHeader
	b, err := im.read(off, 4+int64(binary.Size(h)))
	if err != nil {
		return h, err
	}
	if string(b[:4]) != magicVMDK {
		return h, malformed("%s: no VMDK header at offset %d", im.name, off)
	}
	err = binary.Read(bytes.NewReader(b[4:]), binary.LittleEndian, &h)
	return h, err
}

// readVMDKFooter reads the header copy a streamOptimized VMDK keeps at its
// end when the grain directory is written last; it is framed by a footer
// marker and an end-of-stream marker.
func readVMDKFooter(im image) (vmdkHeader, error) {
	end := im.size &^ 511
	if end < 4*512 {
		return vmdkHeader{}, malformed("%s: truncated: no room for the VMDK footer", im.name)
	}
	b, err := im.read(end-1536, 1536)
	if err != nil {
		return vmdkHeader{}, err
	}
	le := binary.LittleEndian
	if le.Uint32(b[8:]) != 0 || le.Uint32(b[12:]) != vmdkMarkerFooter ||
		le.Uint64(b[1024:]) != 0 || le.Uint32(b[1032:]) != 0 || le.Uint32(b[1036:]) != vmdkMarkerEOS {
		return vmdkHeader{}, malformed("%s: streamOptimized VMDK without footer and end-of-stream marker (truncated?)", im.name)
	}
	return readVMDKHeader(im, end-1024)
}

func validVMDKHeader(im image, h vmdkHeader) error {
	switch {
	case h.Version < 1 || h.Version > 3:
		return malformed("%s: VMDK version %d not supported", im.name, h.Version)
	case h.Capacity == 0 || h.Capacity > maxVMDKSectors:
		return malformed("%s: VMDK capacity of %d sectors out of range", im.name, h.Capacity)
	case h.GrainSize == 0 || h.GrainSize > maxVMDKGrain:
		return malformed("%s: VMDK grain size of %d sectors out of range", im.name, h.GrainSize)
	case h.NumGTEsPerGT == 0 || h.NumGTEsPerGT > 512:
		return malformed("%s: VMDK grain table of %d entries out of range", im.name, h.NumGTEsPerGT)
	case h.Compress > vmdkCompressDeflate:
		return malformed("%s: VMDK compression algorithm %d not supported", im.name, h.Compress)
	case h.Overhead > uint64(im.size)/512:
		return malformed("%s: truncated: VMDK data starts at sector %d, the file has %d bytes", im.name, h.Overhead, im.size)
	case h.GDOffset > uint64(im.size)/512:
		return malformed("%s: truncated: VMDK grain directory at sector %d, the file has %d bytes", im.name, h.GDOffset, im.size)
	}
	if gdEntries(h) > maxVMDKGDEntries {
		return malformed("%s: VMDK grain directory of %d entries too large", im.name, gdEntries(h))
	}
	return nil
}

func gdEntries(h vmdkHeader) uint64 {
	per := uint64(h.NumGTEsPerGT) * h.GrainSize
	return (h.Capacity + per - 1) / per
}

// checkVMDKGrains walks the grain directory and tables: every table and
// every allocated grain must lie inside the file.
func checkVMDKGrains(im image, h vmdkHeader) error {
	gd, err := im.read(int64(h.GDOffset)*512, int64(gdEntries(h))*4)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	for i := 0; i < len(gd); i += 4 {
		gt := le.Uint32(gd[i:])
		if gt == 0 {
			continue
		}
		entries, err := im.read(int64(gt)*512, int64(h.NumGTEsPerGT)*4)
		if err != nil {
			return err
		}
		for j := 0; j < len(entries); j += 4 {
			if err := checkVMDKGrain(im, h, le.Uint32(entries[j:])); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkVMDKGrain(im image, h vmdkHeader, gte uint32) error {
	if gte == 0 || gte == 1 && h.Flags&vmdkFlagZeroGrain != 0 {
		return nil // unallocated or zero grain
	}
	off := int64(gte) * 512
	switch {
	case h.Compress == vmdkCompressDeflate && h.Flags&vmdkFlagMarkers != 0:
		m, err := im.read(off, 12)
		if err != nil {
			return err
		}
		return im.need(off+12, int64(binary.LittleEndian.Uint32(m[8:])))
	case h.Compress == vmdkCompressDeflate:
		return im.need(off, 1)
	}
	return im.need(off, int64(h.GrainSize)*512)
}

// checkNoParent refuses an image whose descriptor names a parent: qemu would
// open that file as the backing image, wherever it is (unless the image is
// a delta, whose backing Hangar names).
func checkNoParent(im image, off, n int64) error {
	if off >= im.size {
		return nil
	}
	b, err := im.read(off, min(n, im.size-off))
	if err != nil {
		return err
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	if bytes.Contains(b, []byte("parentFileNameHint")) && !im.delta {
		return malformed("%s: VMDK has a parent disk (parentFileNameHint): snapshots and linked clones are not supported", im.name)
	}
	return nil
}
