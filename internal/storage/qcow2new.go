package storage

import (
	"encoding/binary"
	"fmt"
	"os"
	"syscall"
)

// The qcow2 a new disk is: version 3 (compat 1.1), 64 KiB clusters, 16-bit
// refcounts, zlib compression type, no feature bits — what qemu-img create
// -f qcow2 makes by default, written here without running it (issue 15: a
// qemu-img run costs 10-30 ms of every VM start; this costs a few writes).
const (
	newClusterBits  = 16
	newClusterSize  = 1 << newClusterBits
	newHeaderLength = 112 // the version 3 header with its compression type byte, padded to 8
	extBackingFmt   = 0xE2792ACA
	// qcow2MaxSize bounds a new image: 2^61 bytes would already overflow
	// QEMU's own checks; 64 TiB is more than any disk of Hangar's needs.
	qcow2MaxSize = 64 << 40
)

// newQcow2 writes, at path (created, never overwritten), an empty qcow2 of
// size bytes (a multiple of 512) or, with backing != "", an overlay on
// backing (the name as the overlay records it) opened as backingFormat.
// The caller syncs and publishes the file.
func newQcow2(path string, size int64, backing, backingFormat string) error {
	if size <= 0 || size%512 != 0 || size > qcow2MaxSize {
		return fmt.Errorf("qcow2 of %d bytes: want a positive multiple of 512 up to %d: %w", size, int64(qcow2MaxSize), ErrInvalid)
	}
	if len(backing) > qcow2MaxBackingNameLen || (backing == "") != (backingFormat == "") {
		return fmt.Errorf("qcow2 backing %q (%q): %w", backing, backingFormat, ErrInvalid)
	}
	// One L2 table maps newClusterSize/8 clusters; the L1 table has one
	// entry per L2 table, in as many clusters as it needs.
	perL2 := int64(newClusterSize/8) * newClusterSize
	l1Size := (size + perL2 - 1) / perL2
	l1Clusters := (l1Size*8 + newClusterSize - 1) / newClusterSize
	const refTable, refBlock, l1Table = 1 * newClusterSize, 2 * newClusterSize, 3 * newClusterSize
	clusters := 3 + l1Clusters // header, refcount table, refcount block, L1

	hdr := make([]byte, newClusterSize)
	be := binary.BigEndian
	copy(hdr, qcow2Magic)
	be.PutUint32(hdr[4:], 3)
	be.PutUint32(hdr[20:], newClusterBits)
	be.PutUint64(hdr[24:], uint64(size))
	be.PutUint32(hdr[36:], uint32(l1Size))
	be.PutUint64(hdr[40:], l1Table)
	be.PutUint64(hdr[48:], refTable)
	be.PutUint32(hdr[56:], 1) // refcount table clusters
	be.PutUint32(hdr[96:], 4) // refcount order: 16-bit refcounts
	be.PutUint32(hdr[100:], newHeaderLength)
	off := newHeaderLength // header extensions, each padded to 8 bytes
	if backing != "" {
		be.PutUint32(hdr[off:], extBackingFmt)
		be.PutUint32(hdr[off+4:], uint32(len(backingFormat)))
		copy(hdr[off+8:], backingFormat)
		off += 8 + (len(backingFormat)+7)/8*8
	}
	off += 8 // the end of the extensions: type 0, length 0
	if backing != "" {
		be.PutUint64(hdr[8:], uint64(off))
		be.PutUint32(hdr[16:], uint32(len(backing)))
		copy(hdr[off:], backing)
	}
	if off+len(backing) > newClusterSize {
		return fmt.Errorf("qcow2 header of %d bytes: %w", off+len(backing), ErrInvalid)
	}
	table := make([]byte, newClusterSize)
	be.PutUint64(table, refBlock)
	block := make([]byte, newClusterSize)
	for i := int64(0); i < clusters; i++ {
		be.PutUint16(block[2*i:], 1)
	}

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	for _, w := range []struct {
		b   []byte
		off int64
	}{{hdr, 0}, {table, refTable}, {block, refBlock}} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			f.Close()
			return err
		}
	}
	// The L1 table is zero: extending the file to its end writes it.
	if err := f.Truncate(l1Table + l1Size*8); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
