package imports

import (
	"bytes"
	"encoding/binary"
	"math/bits"
)

// VHD constants (Microsoft's "Virtual Hard Disk Image Format Specification").
const (
	vhdFixed        = 2
	vhdDynamic      = 3
	vhdDifferencing = 4
	vhdSparseCookie = "cxsparse"
	vhdUnused       = 0xffffffff
	maxVHDBlocks    = 1 << 22
)

// vhdFooter is what the checks need of the 512-byte footer, big-endian.
type vhdFooter struct {
	dataOffset  uint64
	currentSize uint64
	diskType    uint32
}

// checkVHD checks the footer at the end (and, for a dynamic disk, its copy
// at the start, the dynamic header and every allocated block).
func checkVHD(im image) error {
	f, err := readVHDFooter(im)
	if err != nil {
		return err
	}
	switch f.diskType {
	case vhdFixed:
		return im.need(0, int64(f.currentSize)+512)
	case vhdDynamic:
		return checkDynamicVHD(im, f)
	case vhdDifferencing:
		return malformed("%s: differencing VHD (it has a parent disk) is not supported", im.name)
	}
	return malformed("%s: VHD disk type %d not supported", im.name, f.diskType)
}

func readVHDFooter(im image) (vhdFooter, error) {
	if im.size < 512 {
		return vhdFooter{}, malformed("%s: truncated: too small for a VHD", im.name)
	}
	b, err := im.read(im.size-512, 512)
	if err != nil {
		return vhdFooter{}, err
	}
	if string(b[:8]) != magicVHD {
		return vhdFooter{}, malformed("%s: truncated: no VHD footer at the end", im.name)
	}
	be := binary.BigEndian
	if sum := be.Uint32(b[64:]); sum != vhdChecksum(b, 64) {
		return vhdFooter{}, malformed("%s: VHD footer checksum mismatch", im.name)
	}
	f := vhdFooter{dataOffset: be.Uint64(b[16:]), currentSize: be.Uint64(b[48:]), diskType: be.Uint32(b[60:])}
	if f.currentSize == 0 || f.currentSize > 1<<41 { // the format's own limit is 2 TiB
		return f, malformed("%s: VHD size %d out of range", im.name, f.currentSize)
	}
	return f, nil
}

// vhdChecksum is the ones' complement of the byte sum, skipping the 4-byte
// checksum field at skip.
func vhdChecksum(b []byte, skip int) uint32 {
	var sum uint32
	for i, c := range b {
		if i < skip || i >= skip+4 {
			sum += uint32(c)
		}
	}
	return ^sum
}

func checkDynamicVHD(im image, f vhdFooter) error {
	start, err := im.read(0, 512)
	if err != nil {
		return err
	}
	if end, _ := im.read(im.size-512, 512); !bytes.Equal(start, end) {
		return malformed("%s: dynamic VHD: the footer copy at the start differs from the footer", im.name)
	}
	if f.dataOffset > uint64(im.size) {
		return malformed("%s: truncated: VHD dynamic header at %d is past the end", im.name, f.dataOffset)
	}
	d, err := im.read(int64(f.dataOffset), 1024)
	if err != nil {
		return err
	}
	be := binary.BigEndian
	if string(d[:8]) != vhdSparseCookie || be.Uint32(d[36:]) != vhdChecksum(d, 36) {
		return malformed("%s: bad VHD dynamic header", im.name)
	}
	table, entries, block := be.Uint64(d[16:]), be.Uint32(d[28:]), be.Uint32(d[32:])
	switch {
	case block < 512 || bits.OnesCount32(block) != 1:
		return malformed("%s: VHD block size %d invalid", im.name, block)
	case entries > maxVHDBlocks || uint64(entries)*uint64(block) < f.currentSize:
		return malformed("%s: VHD block table of %d entries does not match its size", im.name, entries)
	case table > uint64(im.size):
		return malformed("%s: truncated: VHD block table at %d is past the end", im.name, table)
	}
	bat, err := im.read(int64(table), int64(entries)*4)
	if err != nil {
		return err
	}
	bitmap := (int64(block)/512/8 + 511) / 512 * 512
	for i := 0; i < len(bat); i += 4 {
		if s := be.Uint32(bat[i:]); s != vhdUnused {
			if err := im.need(int64(s)*512, bitmap+int64(block)+512); err != nil {
				return err
			}
		}
	}
	return nil
}
