package imports

import (
	"encoding/binary"
)

// qcow2 constants (QEMU's docs/interop/qcow2.txt).
const (
	qcow2IncompatCorrupt  = 1 << 1
	qcow2IncompatDataFile = 1 << 2
	qcow2IncompatKnown    = 1<<0 | 1<<1 | 1<<2 | 1<<3 | 1<<4 // dirty, corrupt, data file, compression type, extended L2
	qcow2IncompatExtL2    = 1 << 4
	qcow2ExtDataFile      = 0x44415441
	qcow2ExtEncryption    = 0x0537be77
	qcow2OffsetMask       = 0x00fffffffffffe00
	qcow2Compressed       = 1 << 62
	maxQcow2L1Bytes       = 32 << 20 // qemu's QCOW_MAX_L1_SIZE
)

// qcow2Header is the fixed part of a qcow2 header, big-endian.
type qcow2Header struct {
	version       uint32
	backingOffset uint64
	clusterBits   uint32
	size          uint64
	cryptMethod   uint32
	l1Size        uint32
	l1Offset      uint64
	incompatible  uint64
	headerLength  uint32
	l2EntryBytes  int64
}

// checkQcow2 refuses what would make qemu-img read anything but this file
// (backing file, external data file), encrypted images, images marked
// corrupt, and any L1/L2 table or data cluster past the end of the file.
func checkQcow2(im image) error {
	h, err := readQcow2Header(im)
	if err != nil {
		return err
	}
	if err := validQcow2Header(im, h); err != nil {
		return err
	}
	if err := checkQcow2Extensions(im, h); err != nil {
		return err
	}
	return checkQcow2Tables(im, h)
}

func readQcow2Header(im image) (qcow2Header, error) {
	b, err := im.read(0, 72)
	if err != nil {
		return qcow2Header{}, err
	}
	be := binary.BigEndian
	h := qcow2Header{
		version:       be.Uint32(b[4:]),
		backingOffset: be.Uint64(b[8:]),
		clusterBits:   be.Uint32(b[20:]),
		size:          be.Uint64(b[24:]),
		cryptMethod:   be.Uint32(b[32:]),
		l1Size:        be.Uint32(b[36:]),
		l1Offset:      be.Uint64(b[40:]),
		headerLength:  72,
		l2EntryBytes:  8,
	}
	if h.version >= 3 {
		v3, err := im.read(72, 32)
		if err != nil {
			return h, err
		}
		h.incompatible = be.Uint64(v3[0:])
		h.headerLength = be.Uint32(v3[28:])
	}
	if h.incompatible&qcow2IncompatExtL2 != 0 {
		h.l2EntryBytes = 16
	}
	return h, nil
}

func validQcow2Header(im image, h qcow2Header) error {
	switch {
	case h.version != 2 && h.version != 3:
		return malformed("%s: qcow2 version %d not supported", im.name, h.version)
	case h.backingOffset != 0:
		return malformed("%s: qcow2 has a backing file: import the whole chain flattened instead", im.name)
	case h.incompatible&qcow2IncompatDataFile != 0:
		return malformed("%s: qcow2 has an external data file", im.name)
	case h.incompatible&qcow2IncompatCorrupt != 0:
		return malformed("%s: qcow2 is marked corrupt", im.name)
	case h.incompatible&^qcow2IncompatKnown != 0:
		return malformed("%s: qcow2 has unknown incompatible features %#x", im.name, h.incompatible&^qcow2IncompatKnown)
	case h.cryptMethod != 0:
		return malformed("%s: encrypted qcow2 is not supported", im.name)
	case h.clusterBits < 9 || h.clusterBits > 21:
		return malformed("%s: qcow2 cluster size 2^%d out of range", im.name, h.clusterBits)
	case h.size == 0 || h.size > 1<<56:
		return malformed("%s: qcow2 virtual size %d out of range", im.name, h.size)
	case h.version >= 3 && (h.headerLength < 104 || h.headerLength%8 != 0 || h.headerLength > 1<<h.clusterBits):
		return malformed("%s: qcow2 header length %d invalid", im.name, h.headerLength)
	case int64(h.l1Size)*8 > maxQcow2L1Bytes:
		return malformed("%s: qcow2 L1 table of %d entries too large", im.name, h.l1Size)
	}
	perL2 := uint64(1) << h.clusterBits / uint64(h.l2EntryBytes)
	if need := (h.size + perL2<<h.clusterBits - 1) / (perL2 << h.clusterBits); uint64(h.l1Size) < need {
		return malformed("%s: qcow2 L1 table of %d entries too small for %d bytes", im.name, h.l1Size, h.size)
	}
	return nil
}

// checkQcow2Extensions walks the header extensions of the first cluster.
func checkQcow2Extensions(im image, h qcow2Header) error {
	cluster := int64(1) << h.clusterBits
	off := int64(h.headerLength)
	for off+8 <= cluster && off+8 <= im.size {
		b, err := im.read(off, 8)
		if err != nil {
			return err
		}
		typ, n := binary.BigEndian.Uint32(b), int64(binary.BigEndian.Uint32(b[4:]))
		switch typ {
		case 0:
			return nil
		case qcow2ExtDataFile:
			return malformed("%s: qcow2 names an external data file", im.name)
		case qcow2ExtEncryption:
			return malformed("%s: encrypted qcow2 is not supported", im.name)
		}
		off += 8 + (n+7)/8*8
	}
	return nil
}

// checkQcow2Tables checks the active L1 table, its L2 tables and every data
// cluster they point to: qemu reads past-the-end clusters as zeros, so a
// truncated image would convert "successfully" into a damaged disk.
func checkQcow2Tables(im image, h qcow2Header) error {
	cluster := int64(1) << h.clusterBits
	l1, err := im.read(int64(h.l1Offset), int64(h.l1Size)*8)
	if err != nil {
		return err
	}
	be := binary.BigEndian
	for i := 0; i < len(l1); i += 8 {
		l2Off := int64(be.Uint64(l1[i:]) & qcow2OffsetMask)
		if l2Off == 0 {
			continue
		}
		l2, err := im.read(l2Off, cluster)
		if err != nil {
			return err
		}
		for j := 0; j < len(l2); j += int(h.l2EntryBytes) {
			if err := checkQcow2Cluster(im, h, be.Uint64(l2[j:])); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkQcow2Cluster(im image, h qcow2Header, e uint64) error {
	if e&qcow2Compressed != 0 {
		bits := 62 - (h.clusterBits - 8)
		off := int64(e & (1<<bits - 1))
		return im.need(off, 1)
	}
	off := int64(e & qcow2OffsetMask)
	if off == 0 {
		return nil
	}
	n := int64(1) << h.clusterBits
	if h.l2EntryBytes == 16 {
		n = 1 // subclusters may leave the last cluster short
	}
	return im.need(off, n)
}
