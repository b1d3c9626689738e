package imports

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math/bits"
)

// VHDX layout ([MS-VHDX]). GUIDs are written in their on-disk byte order.
const (
	vhdxHeader1     = 64 << 10
	vhdxHeader2     = 128 << 10
	vhdxRegionTable = 192 << 10
	vhdxMiB         = 1 << 20
	vhdxHasParent   = 1 << 1
	vhdxBlockFull   = 6
	vhdxBlockPart   = 7
	maxVHDXSize     = 64 << 40
	maxVHDXEntries  = 2047
)

var (
	vhdxBAT        = []byte{0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08}
	vhdxMetadata   = []byte{0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e}
	vhdxFileParams = []byte{0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b}
	vhdxDiskSize   = []byte{0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8}
	vhdxSectorSize = []byte{0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f}
	castagnoli     = crc32.MakeTable(crc32.Castagnoli)
)

// vhdxRegion is a region table entry.
type vhdxRegion struct{ offset, length int64 }

// vhdxParams is what the metadata region says about the disk.
type vhdxParams struct {
	blockSize, sectorSize, flags uint32
	size                         uint64
}

// checkVHDX checks a header, the region table, the metadata and every
// allocated payload block of the block allocation table.
func checkVHDX(im image) error {
	if err := checkVHDXHeaders(im); err != nil {
		return err
	}
	bat, meta, err := readVHDXRegions(im)
	if err != nil {
		return err
	}
	p, err := readVHDXMetadata(im, meta)
	if err != nil {
		return err
	}
	return checkVHDXBAT(im, bat, p)
}

// checkVHDXHeaders needs at least one of the two headers to be intact.
func checkVHDXHeaders(im image) error {
	for _, off := range []int64{vhdxHeader1, vhdxHeader2} {
		b, err := im.read(off, 4096)
		if err != nil {
			return err
		}
		if string(b[:4]) == "head" && vhdxCRC(b) && binary.LittleEndian.Uint16(b[66:]) == 1 {
			return nil
		}
	}
	return malformed("%s: no valid VHDX header", im.name)
}

// vhdxCRC checks the CRC-32C at b[4:8], computed with that field zeroed.
func vhdxCRC(b []byte) bool {
	want := binary.LittleEndian.Uint32(b[4:])
	c := bytes.Clone(b)
	clear(c[4:8])
	return crc32.Checksum(c, castagnoli) == want
}

func readVHDXRegions(im image) (bat, meta vhdxRegion, err error) {
	b, err := im.read(vhdxRegionTable, 64<<10)
	if err != nil {
		return bat, meta, err
	}
	le := binary.LittleEndian
	n := le.Uint32(b[8:])
	if string(b[:4]) != "regi" || !vhdxCRC(b) || n > maxVHDXEntries {
		return bat, meta, malformed("%s: bad VHDX region table", im.name)
	}
	for i := range int(n) {
		e := b[16+32*i : 48+32*i]
		r := vhdxRegion{offset: int64(le.Uint64(e[16:])), length: int64(le.Uint32(e[24:]))}
		if r.offset < vhdxMiB || r.offset%vhdxMiB != 0 || r.length%vhdxMiB != 0 {
			return bat, meta, malformed("%s: VHDX region at %d misaligned", im.name, r.offset)
		}
		if err := im.need(r.offset, r.length); err != nil {
			return bat, meta, err
		}
		switch {
		case bytes.Equal(e[:16], vhdxBAT):
			bat = r
		case bytes.Equal(e[:16], vhdxMetadata):
			meta = r
		case le.Uint32(e[28:])&1 != 0:
			return bat, meta, malformed("%s: VHDX has an unknown required region", im.name)
		}
	}
	if bat.length == 0 || meta.length == 0 {
		return bat, meta, malformed("%s: VHDX without block table or metadata region", im.name)
	}
	return bat, meta, nil
}

func readVHDXMetadata(im image, meta vhdxRegion) (vhdxParams, error) {
	var p vhdxParams
	b, err := im.read(meta.offset, min(meta.length, 64<<10))
	if err != nil {
		return p, err
	}
	le := binary.LittleEndian
	n := int(le.Uint16(b[10:]))
	if string(b[:8]) != "metadata" || n > maxVHDXEntries {
		return p, malformed("%s: bad VHDX metadata table", im.name)
	}
	for i := range n {
		e := b[32+32*i : 64+32*i]
		off, length := int64(le.Uint32(e[16:])), int64(le.Uint32(e[20:]))
		if off+length > meta.length || length < 4 {
			continue
		}
		v, err := im.read(meta.offset+off, min(length, 8))
		if err != nil {
			return p, err
		}
		switch {
		case bytes.Equal(e[:16], vhdxFileParams) && length >= 8:
			p.blockSize, p.flags = le.Uint32(v), le.Uint32(v[4:])
		case bytes.Equal(e[:16], vhdxDiskSize) && length >= 8:
			p.size = le.Uint64(v)
		case bytes.Equal(e[:16], vhdxSectorSize):
			p.sectorSize = le.Uint32(v)
		}
	}
	return p, validVHDXParams(im, p)
}

func validVHDXParams(im image, p vhdxParams) error {
	switch {
	case p.flags&vhdxHasParent != 0:
		return malformed("%s: differencing VHDX (it has a parent disk) is not supported", im.name)
	case p.blockSize < vhdxMiB || p.blockSize > 256*vhdxMiB || bits.OnesCount32(p.blockSize) != 1:
		return malformed("%s: VHDX block size %d invalid", im.name, p.blockSize)
	case p.sectorSize != 512 && p.sectorSize != 4096:
		return malformed("%s: VHDX logical sector size %d invalid", im.name, p.sectorSize)
	case p.size == 0 || p.size > maxVHDXSize:
		return malformed("%s: VHDX size %d out of range", im.name, p.size)
	}
	return nil
}

// checkVHDXBAT checks that every fully or partially present payload block
// lies inside the file; sector bitmap entries are interleaved every
// chunkRatio payload entries.
func checkVHDXBAT(im image, bat vhdxRegion, p vhdxParams) error {
	chunk := (uint64(1) << 23) * uint64(p.sectorSize) / uint64(p.blockSize)
	blocks := (p.size + uint64(p.blockSize) - 1) / uint64(p.blockSize)
	total := blocks + (blocks-1)/chunk
	if total*8 > uint64(bat.length) {
		return malformed("%s: VHDX block table too small for its size", im.name)
	}
	const perRead = 1 << 17 // entries: read the table 1 MiB at a time
	for first := uint64(0); first < total; first += perRead {
		b, err := im.read(bat.offset+int64(first)*8, int64(min(perRead, total-first))*8)
		if err != nil {
			return err
		}
		for j := 0; j < len(b); j += 8 {
			i := first + uint64(j/8)
			if (i+1)%(chunk+1) == 0 {
				continue // sector bitmap block
			}
			if err := checkVHDXBlock(im, binary.LittleEndian.Uint64(b[j:]), p.blockSize); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkVHDXBlock checks that a present payload block is inside the file.
func checkVHDXBlock(im image, e uint64, blockSize uint32) error {
	if s := e & 7; s != vhdxBlockFull && s != vhdxBlockPart {
		return nil
	}
	return im.need(int64(e>>20)*vhdxMiB, int64(blockSize))
}
