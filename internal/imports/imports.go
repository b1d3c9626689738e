// Package imports turns foreign VM disks and appliances (VMDK, VHD, VHDX,
// qcow2, raw, block devices, OVF directories and OVA archives) into qcow2
// volumes.
//
// Inspect never trusts qemu-img with an unknown file: it reads the headers
// itself first (magic, sizes, tables pointing inside the file, no backing or
// external data files, VMDK extents inside the import directory, OVF hrefs
// and manifest checksums) and only then asks `qemu-img info`, always naming
// the driver (-f), so an image cannot choose how it is opened. Disks inside an
// OVA are read in place through a raw offset/size node; what qemu cannot
// read in place (a gzip-compressed or chunked OVF file, the SPARSE extents
// of a descriptor in an OVA) Convert writes out beside the volume, checks
// like any file and removes after the conversion.
package imports

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "hangar/api/v1"
	"hangar/internal/vm"
)

// ErrMalformed is wrapped by every error caused by the input itself: a bad
// or truncated header, a bad descriptor or OVF, a checksum mismatch, a path
// leaving the import directory, a missing extent, an unsupported variant.
var ErrMalformed = errors.New("malformed import")

// Source is one disk to import: what qemu-img reads.
type Source struct {
	Name   string // disk name in the appliance ("disk0" for single files)
	Path   string // the file qemu-img opens (descriptor for VMDK, the .ova for disks inside an OVA)
	Format string // qemu-img driver: vmdk, vpc, vhdx, qcow2, raw
	// Offset and Size are the byte range of a disk stored inside a tar (OVA)
	// in Path; 0,0 otherwise.
	Offset, Size int64
	VirtualSize  int64
	// Bus is the bus the appliance attaches the disk on, as Hangar has
	// it: "sata" for an IDE or SATA controller, "" for the default.
	Bus string
	// Base is the disk this one is a delta of (OVF ovf:parentRef): blocks
	// the delta does not hold read from Base. Convert writes the flattened
	// chain as one qcow2.
	Base *Source
	// Chunks continue the file at Path/Offset/Size (an OVF file in chunks):
	// the disk file is their bytes joined. Compression "gzip": that file is
	// gzip-compressed and holds a disk of at most Capacity bytes. Convert
	// writes such a file out decoded beside the volume, checks it like any
	// file, and converts it.
	Chunks      []Chunk
	Compression string
	Capacity    int64
	// Extents are the ranges a VMDK descriptor's extents read (members of
	// an OVA), in its order: Path/Offset/Size is the descriptor, which
	// names files qemu cannot find in the tar, so Convert writes them out
	// beside the volume under a descriptor of its own.
	Extents []Chunk
}

// Chunk is a byte range of a file: a whole file, or a member of an OVA.
type Chunk struct {
	Path         string
	Offset, Size int64
}

// maxChain is the longest delta chain (a disk and its bases) imported.
const maxChain = vm.MaxImportChain

// FromAPI is the Source of an API import source, each file of its chain
// resolved with resolve (the host path policy).
func FromAPI(name string, s *v1.ImportSource, resolve func(path string) (string, error)) (Source, error) {
	src := Source{Name: name}
	at := &src
	for i := 0; s != nil; i, s = i+1, s.Base {
		if i == maxChain {
			return Source{}, malformed("a chain of more than %d delta disks", maxChain)
		}
		p, err := resolve(s.Path)
		if err != nil {
			return Source{}, err
		}
		if i > 0 {
			at.Base = &Source{Name: fmt.Sprintf("%s-base%d", name, i)}
			at = at.Base
		}
		at.Path, at.Format, at.Offset, at.Size = p, s.Format, s.Offset, s.Size
		at.Compression, at.Capacity = s.Compression, s.Capacity
		if len(s.Chunks) >= maxChunks {
			return Source{}, malformed("%d chunks, more than %d", len(s.Chunks)+1, maxChunks)
		}
		if len(s.Extents) > maxVMDKExtents {
			return Source{}, malformed("%d VMDK extents, more than %d", len(s.Extents), maxVMDKExtents)
		}
		if at.Chunks, err = fromAPIChunks(s.Chunks, resolve); err != nil {
			return Source{}, err
		}
		if at.Extents, err = fromAPIChunks(s.Extents, resolve); err != nil {
			return Source{}, err
		}
	}
	return src, nil
}

func fromAPIChunks(chunks []v1.ImportChunk, resolve func(path string) (string, error)) ([]Chunk, error) {
	var out []Chunk
	for _, c := range chunks {
		p, err := resolve(c.Path)
		if err != nil {
			return nil, err
		}
		out = append(out, Chunk{Path: p, Offset: c.Offset, Size: c.Size})
	}
	return out, nil
}

func apiChunks(chunks []Chunk) []v1.ImportChunk {
	var out []v1.ImportChunk
	for _, c := range chunks {
		out = append(out, v1.ImportChunk{Path: c.Path, Offset: c.Offset, Size: c.Size})
	}
	return out
}

// API is the API import source of src (nil for a blank disk).
func (src Source) API() *v1.ImportSource {
	if src.Path == "" {
		return nil
	}
	s := &v1.ImportSource{Path: src.Path, Format: src.Format, Offset: src.Offset, Size: src.Size, Compression: src.Compression, Capacity: src.Capacity}
	s.Chunks, s.Extents = apiChunks(src.Chunks), apiChunks(src.Extents)
	if src.Base != nil {
		s.Base = src.Base.API()
	}
	return s
}

// Plan is what an import will create.
type Plan struct {
	Name      string // VM name suggested by the source, a DNS label
	CPUs      int    // from the OVF, else 0 (the caller's default)
	MemoryMiB int    // from the OVF, else 0
	NICs      []NIC  // OVF network adapters, in order
	Disks     []Source
	Kind      string // "ova", "ovf", "vmdk", "vhd", "vhdx", "qcow2", "raw", "block"
	// DeploymentOption is the OVF configuration planned ("" when the OVF
	// has none); DeploymentOptions are all it offers, in order.
	DeploymentOption  string
	DeploymentOptions []string
	// Warnings say what of the source the plan leaves out or changes.
	Warnings []string
	// VApp is the multi-VM vApp the VM is one of ("" for none), and
	// StartOrder its start group there (the StartupSection's ovf:order; -1
	// when the vApp does not order it: after the others).
	VApp       string
	StartOrder int
}

// NIC is a network adapter of an appliance.
type NIC struct {
	Label   string // the OVF item's ElementName or InstanceID
	Network string // the OVF network it connects to (rasd:Connection), "" for none
	MAC     string // a unicast MAC the OVF gives, normalised; "" for none
}

// Formats are the qemu-img drivers a Source may name.
var formats = map[string]bool{"vmdk": true, "vpc": true, "vhdx": true, "qcow2": true, "raw": true}

// kinds maps a qemu-img driver to the Plan kind of a single-file import.
var kinds = map[string]string{"vmdk": "vmdk", "vpc": "vhd", "vhdx": "vhdx", "qcow2": "qcow2", "raw": "raw"}

// malformedError is an error caused by the input; it matches ErrMalformed.
type malformedError struct{ msg string }

func (e *malformedError) Error() string        { return e.msg }
func (e *malformedError) Is(target error) bool { return target == ErrMalformed }

// malformed returns an input error matching ErrMalformed.
func malformed(format string, a ...any) error {
	return &malformedError{msg: fmt.Sprintf(format, a...)}
}

// Inspect reads a file (or a block device, for P2V) and returns the plan
// without writing anything.
func Inspect(ctx context.Context, path string) (Plan, error) {
	return InspectWith(ctx, path, Options{})
}

// InspectWith is Inspect with choices among what an appliance offers; a
// multi-VM vApp is refused unless opt.VM picks one of its VMs.
func InspectWith(ctx context.Context, path string, opt Options) (Plan, error) {
	plans, err := inspect(ctx, path, opt)
	if err != nil {
		return Plan{}, fmt.Errorf("import %s: %w", path, err)
	}
	return plans[0], nil
}

// InspectAll is InspectWith planning every VM of a multi-VM vApp (unless
// opt.VM picks one), in the vApp's startup order, each named after the
// vApp and the VM; any other source gives one plan.
func InspectAll(ctx context.Context, path string, opt Options) ([]Plan, error) {
	opt.all = true
	plans, err := inspect(ctx, path, opt)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	return plans, nil
}

func inspect(ctx context.Context, path string, opt Options) ([]Plan, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, err
	}
	switch {
	case fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0:
		if err := opt.checkSingle(); err != nil {
			return nil, err
		}
		p, err := inspectBlock(ctx, abs)
		return []Plan{p}, err
	case fi.IsDir():
		return inspectDir(ctx, abs, opt)
	case !fi.Mode().IsRegular():
		return nil, malformed("not a regular file or block device (%s)", fi.Mode().Type())
	case fi.Size() == 0:
		return nil, malformed("empty file")
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	im := image{r: f, size: fi.Size(), name: filepath.Base(abs)}
	kind, err := detectContainer(im)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "ova":
		return inspectOVA(ctx, abs, f, fi.Size(), opt)
	case "ovf":
		return inspectOVF(ctx, abs, im, opt)
	}
	if err := opt.checkSingle(); err != nil {
		return nil, err
	}
	src, err := inspectDisk(ctx, im, Source{Path: abs}, filepath.Dir(abs), strings.ToLower(filepath.Ext(abs)))
	if err != nil {
		return nil, err
	}
	src.Name = "disk0"
	return []Plan{{Name: nameFromFile(abs), Kind: kinds[src.Format], Disks: []Source{src}}}, nil
}

// checkSingle refuses options only an appliance has for a single disk.
func (opt Options) checkSingle() error {
	switch {
	case opt.DeploymentOption != "":
		return fmt.Errorf("%w %q: only an OVA or OVF offers deployment options", ErrDeploymentOption, opt.DeploymentOption)
	case opt.VM != "":
		return fmt.Errorf("%w %q: only an OVA or OVF holds virtual systems", ErrVirtualSystem, opt.VM)
	}
	return nil
}

// inspectDisk detects the format of the disk im (which src locates for
// qemu-img; ext is its file name's extension), checks its headers (extents
// of a VMDK descriptor must live in dir, "" for none) and only then asks
// qemu-img for its virtual size.
func inspectDisk(ctx context.Context, im image, src Source, dir, ext string) (Source, error) {
	format, err := src.Format, error(nil)
	if format == "" { // else the package knows (a VMDK descriptor's extent in an OVA)
		format, err = detectDisk(im, ext)
	}
	if err != nil {
		return Source{}, err
	}
	if err := checkDisk(im, format, dir); err != nil {
		return Source{}, err
	}
	src.Format = format
	if src.VirtualSize, err = virtualSize(ctx, src, im.delta); err != nil {
		return Source{}, err
	}
	return src, nil
}

// inspectBlock plans the import of a whole block device as a raw disk. Its
// content is never probed: a disk is raw whatever its first bytes say.
func inspectBlock(ctx context.Context, path string) (Plan, error) {
	size, err := deviceSize(path)
	if err != nil {
		return Plan{}, err
	}
	if size == 0 || size%512 != 0 {
		return Plan{}, malformed("block device size %d is not a positive multiple of 512", size)
	}
	src := Source{Name: "disk0", Path: path, Format: "raw", VirtualSize: size}
	return Plan{Name: nameFromFile(path), Kind: "block", Disks: []Source{src}}, nil
}

// deviceSize is the size of a block device: the end its reads can reach.
func deviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}

// nameFromFile suggests a VM name from a file's base name without extension.
func nameFromFile(path string) string {
	base := filepath.Base(path)
	return dnsLabel(strings.TrimSuffix(base, filepath.Ext(base)))
}

// dnsLabel turns s into a DNS label (RFC 1123): lower-case letters, digits and
// '-', starting and ending with a letter or digit, at most 63 characters.
func dnsLabel(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(r)
			dash = false
		default:
			dash = true
		}
	}
	label := b.String()
	if len(label) > 63 {
		label = strings.TrimRight(label[:63], "-")
	}
	if label == "" {
		return "imported"
	}
	return label
}
