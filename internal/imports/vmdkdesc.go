package imports

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

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
	extents, err := parseVMDKDescriptor(im)
	if err != nil {
		return err
	}
	for _, e := range extents {
		if err := checkExtent(im.name, dir, e); err != nil {
			return err
		}
	}
	return nil
}

// parseVMDKDescriptor checks a text descriptor (no parent unless a delta,
// a createType this package imports) and returns the extents qemu would
// open, at least one.
func parseVMDKDescriptor(im image) ([]vmdkExtent, error) {
	b, err := im.head(maxDescriptor)
	if err != nil {
		return nil, err
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i] // qemu reads it as a C string
	}
	desc := string(b)
	if strings.Contains(desc, "parentFileNameHint") && !im.delta {
		return nil, malformed("%s: VMDK has a parent disk (parentFileNameHint): snapshots and linked clones are not supported", im.name)
	}
	ct, ok := descriptorValue(desc, "createType")
	if !ok {
		return nil, malformed("%s: VMDK descriptor without createType", im.name)
	}
	if !descriptorTypes[ct] {
		return nil, malformed("%s: VMDK descriptor createType %q not supported", im.name, ct)
	}
	extents, err := parseExtents(desc)
	if err != nil {
		return nil, malformed("%s: %v", im.name, err)
	}
	if len(extents) == 0 {
		return nil, malformed("%s: VMDK descriptor has no extents", im.name)
	}
	return extents, nil
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

// checkExtentRanges checks a VMDK descriptor inside an archive and the
// ranges its extents read (Source.Extents) before they are written out:
// every range inside a regular file, one per extent.
func checkExtentRanges(src Source) error {
	if src.Format != "vmdk" || src.encoded() || len(src.Extents) > maxVMDKExtents {
		return malformed("%s: VMDK extents given for a %s source (chunked or compressed: %v, %d extents)", src.Path, src.Format, src.encoded(), len(src.Extents))
	}
	for _, c := range append([]Chunk{{Path: src.Path, Offset: src.Offset, Size: src.Size}}, src.Extents...) {
		if c.Size <= 0 {
			return malformed("%s: a range of %d bytes at %d", c.Path, c.Size, c.Offset)
		}
		if err := checkRange(c); err != nil {
			return err
		}
	}
	return nil
}

// stageExtents writes the extents of the VMDK descriptor src names inside
// an archive into dir (extent-N.vmdk, FLAT ones their range only) under a
// descriptor of its own (disk.vmdk), and returns the Source reading it,
// checked like any descriptor and its extents.
func stageExtents(ctx context.Context, src Source, dir string, progress func(float64)) (Source, error) {
	if err := checkExtentRanges(src); err != nil {
		return Source{}, err
	}
	f, err := os.Open(src.Path)
	if err != nil {
		return Source{}, err
	}
	defer f.Close()
	desc := image{r: io.NewSectionReader(f, src.Offset, src.Size), size: src.Size, name: filepath.Base(src.Path), delta: src.Base != nil}
	extents, err := parseVMDKDescriptor(desc)
	if err != nil {
		return Source{}, err
	}
	if len(extents) != len(src.Extents) {
		return Source{}, malformed("%s: the VMDK descriptor has %d extents, the source gives %d", desc.name, len(extents), len(src.Extents))
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return Source{}, err
	}
	var total, done int64
	for _, c := range src.Extents {
		total += c.Size
	}
	var b strings.Builder
	b.WriteString("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\n# Extent description\n")
	for i, e := range extents {
		name := fmt.Sprintf("extent-%d.vmdk", i)
		c := src.Extents[i]
		if err := copyRange(ctx, f, c, filepath.Join(dir, name)); err != nil {
			return Source{}, err
		}
		done += c.Size
		progress(0.99 * float64(done) / float64(max(total, 1)))
		switch e.kind {
		case "FLAT", "VMFS":
			fmt.Fprintf(&b, "RW %d FLAT \"%s\" 0\n", e.sectors, name)
		default:
			fmt.Fprintf(&b, "RW %d %s \"%s\"\n", e.sectors, e.kind, name)
		}
	}
	staged := src
	staged.Path, staged.Offset, staged.Size, staged.Extents = filepath.Join(dir, "disk.vmdk"), 0, 0, nil
	if err := os.WriteFile(staged.Path, []byte(b.String()), 0o600); err != nil {
		return Source{}, err
	}
	if err := checkOneSource(staged); err != nil {
		return Source{}, err
	}
	return staged, nil
}

// copyRange copies the range c of f (c.Path) to a new file at to.
func copyRange(ctx context.Context, f *os.File, c Chunk, to string) error {
	if c.Path != f.Name() {
		g, err := os.Open(c.Path)
		if err != nil {
			return err
		}
		defer g.Close()
		f = g
	}
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.CopyBuffer(out, ctxReader{ctx, io.NewSectionReader(f, c.Offset, c.Size)}, make([]byte, 1<<20))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
