package imports

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
// open that file as the backing image, wherever it is.
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
	if bytes.Contains(b, []byte("parentFileNameHint")) {
		return malformed("%s: VMDK has a parent disk (parentFileNameHint): snapshots and linked clones are not supported", im.name)
	}
	return nil
}

// vmdkExtent is one extent line qemu would open.
type vmdkExtent struct {
	sectors int64
	kind    string // FLAT, SPARSE, VMFS, VMFSSPARSE, SESPARSE
	file    string
	offset  int64 // sectors, FLAT only
}

// descriptorTypes are the createType values qemu opens from a text
// descriptor, and whether this package imports them.
var descriptorTypes = map[string]bool{
	"monolithicFlat": true, "twoGbMaxExtentFlat": true, "twoGbMaxExtentSparse": true, "vmfs": true,
	"vmfsSparse": false, "seSparse": false,
}

// checkVMDKDescriptor checks a text descriptor and every extent it names:
// relative, inside dir after symlinks, present, large enough.
func checkVMDKDescriptor(im image, dir string) error {
	b, err := im.head(maxDescriptor)
	if err != nil {
		return err
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i] // qemu reads it as a C string
	}
	desc := string(b)
	if strings.Contains(desc, "parentFileNameHint") {
		return malformed("%s: VMDK has a parent disk (parentFileNameHint): snapshots and linked clones are not supported", im.name)
	}
	ct, ok := descriptorValue(desc, "createType")
	if !ok {
		return malformed("%s: VMDK descriptor without createType", im.name)
	}
	if !descriptorTypes[ct] {
		return malformed("%s: VMDK descriptor createType %q not supported", im.name, ct)
	}
	extents, err := parseExtents(desc)
	if err != nil {
		return malformed("%s: %v", im.name, err)
	}
	if len(extents) == 0 {
		return malformed("%s: VMDK descriptor has no extents", im.name)
	}
	for _, e := range extents {
		if err := checkExtent(im.name, dir, e); err != nil {
			return err
		}
	}
	return nil
}

// descriptorValue finds key="value" the way qemu does: the first occurrence
// of key anywhere, two characters skipped, up to the next quote.
func descriptorValue(desc, key string) (string, bool) {
	i := strings.Index(desc, key)
	if i < 0 || i+len(key)+2 >= len(desc) {
		return "", false
	}
	rest := desc[i+len(key)+2:]
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return "", false
	}
	return rest[:j], true
}

// parseExtents returns the extents qemu would open, scanning every line as
// qemu's sscanf does (from the line start to anywhere after it), so that no
// line qemu accepts escapes the checks.
func parseExtents(desc string) ([]vmdkExtent, error) {
	var out []vmdkExtent
	for p := 0; p < len(desc); p = nextLine(desc, p) {
		e, use, err := scanExtent(desc[p:])
		if err != nil {
			return nil, err
		}
		if use {
			out = append(out, e)
		}
		if len(out) > maxVMDKExtents {
			return nil, errors.New("too many VMDK extents")
		}
	}
	return out, nil
}

func nextLine(s string, p int) int {
	if i := strings.IndexByte(s[p:], '\n'); i >= 0 {
		return p + i + 1
	}
	return len(s)
}

// scanExtent applies qemu's
// sscanf(p, "%10s %ld %10s \"%511[^\n\r\"]\" %ld", ...) and its checks.
func scanExtent(s string) (vmdkExtent, bool, error) {
	var e vmdkExtent
	sc := cScanner{s: s}
	access, ok := sc.token(10)
	if !ok || access != "RW" {
		return e, false, nil
	}
	matches := 1
	if e.sectors, ok = sc.number(); ok {
		matches++
		if e.kind, ok = sc.token(10); ok {
			matches++
			if e.file, ok = sc.quoted(511); ok {
				matches++
				if e.offset, ok = sc.number(); ok {
					matches++
				}
			}
		}
	}
	if sc.overflow {
		return e, false, errors.New("VMDK extent line: number out of range")
	}
	if matches < 4 {
		return e, false, nil
	}
	switch {
	case e.kind == "FLAT" && (matches != 5 || e.offset < 0),
		e.kind == "VMFS" && matches != 4,
		e.kind != "FLAT" && e.kind != "VMFS" && matches != 4:
		return e, false, errors.New("invalid VMDK extent line: " + firstLine(s))
	}
	switch e.kind {
	case "FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE":
		return e, e.sectors > 0, nil
	}
	return e, false, nil
}

func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// cScanner reads the way C's sscanf does.
type cScanner struct {
	s        string
	i        int
	overflow bool
}

func isCSpace(c byte) bool { return c == ' ' || c >= '\t' && c <= '\r' }

func (c *cScanner) skipSpace() {
	for c.i < len(c.s) && isCSpace(c.s[c.i]) {
		c.i++
	}
}

// token is " %Ns": at most max non-space characters.
func (c *cScanner) token(max int) (string, bool) {
	c.skipSpace()
	start := c.i
	for c.i < len(c.s) && !isCSpace(c.s[c.i]) && c.i-start < max {
		c.i++
	}
	return c.s[start:c.i], c.i > start
}

// number is " %ld".
func (c *cScanner) number() (int64, bool) {
	c.skipSpace()
	start := c.i
	if c.i < len(c.s) && (c.s[c.i] == '+' || c.s[c.i] == '-') {
		c.i++
	}
	digits := c.i
	for c.i < len(c.s) && c.s[c.i] >= '0' && c.s[c.i] <= '9' {
		c.i++
	}
	if c.i == digits {
		return 0, false
	}
	v, err := strconv.ParseInt(c.s[start:c.i], 10, 64)
	if err != nil {
		c.overflow = true
	}
	return v, true
}

// quoted is " \"%N[^\n\r\"]\"": it counts as matched once the characters
// are read, even if the closing quote is missing (the name is then cut).
func (c *cScanner) quoted(max int) (string, bool) {
	c.skipSpace()
	if c.i >= len(c.s) || c.s[c.i] != '"' {
		return "", false
	}
	c.i++
	start := c.i
	for c.i < len(c.s) && c.i-start < max && !strings.ContainsRune("\n\r\"", rune(c.s[c.i])) {
		c.i++
	}
	name := c.s[start:c.i]
	if name == "" {
		return "", false
	}
	if c.i >= len(c.s) || c.s[c.i] != '"' {
		c.i = len(c.s) // sscanf stops here: no further field matches
		return name, true
	}
	c.i++
	return name, true
}

// checkExtent checks one extent file of a descriptor in dir.
func checkExtent(desc, dir string, e vmdkExtent) error {
	if strings.HasPrefix(e.file, "/") {
		return malformed("%s: VMDK extent %q: absolute paths are not allowed", desc, e.file)
	}
	if e.kind == "VMFSSPARSE" || e.kind == "SESPARSE" {
		return malformed("%s: VMDK extent %q: %s extents are not supported", desc, e.file, e.kind)
	}
	path, err := resolveInside(dir, e.file)
	if err != nil {
		return malformed("%s: VMDK extent %q: %v", desc, e.file, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return malformed("%s: VMDK extent %q is not a regular file", desc, e.file)
	}
	if e.sectors > maxVMDKSectors || e.offset > maxVMDKSectors {
		return malformed("%s: VMDK extent %q: size out of range", desc, e.file)
	}
	if e.kind == "SPARSE" {
		return checkSparseExtent(path, fi.Size(), e)
	}
	if need := (e.offset + e.sectors) * 512; fi.Size() < need {
		return malformed("%s: VMDK extent %q has %d bytes, the descriptor needs %d", desc, e.file, fi.Size(), need)
	}
	return nil
}

func checkSparseExtent(path string, size int64, e vmdkExtent) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	im := image{r: f, size: size, name: e.file}
	head, err := im.head(4)
	if err != nil {
		return err
	}
	if string(head) != magicVMDK {
		return malformed("%s: SPARSE VMDK extent without a sparse header", e.file)
	}
	return checkSparseVMDK(im, e.sectors)
}

// resolveInside resolves name below dir the way the kernel will open it
// (dir + "/" + name, symlinks followed, ".." after them) and refuses a result
// outside dir, a missing file or a loop.
func resolveInside(dir, name string) (string, error) {
	if !within(dir, filepath.Join(dir, name)) {
		return "", errors.New("leaves the import directory")
	}
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(dir + string(filepath.Separator) + name)
	if errors.Is(err, fs.ErrNotExist) {
		return "", errors.New("missing")
	}
	if err != nil {
		return "", err
	}
	if !within(root, real) {
		return "", errors.New("leaves the import directory")
	}
	return real, nil
}

// within reports whether path is root or below it (both clean).
func within(root, path string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}
