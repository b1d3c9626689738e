package imports

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// pkgFiles are the files of an appliance: members of an OVA or files beside
// an .ovf. Every method refuses a name the package does not hold with an
// error matching ErrMalformed.
type pkgFiles interface {
	size(name string) (int64, error)
	open(name string) (io.ReadCloser, error)
	// disk returns a disk file to check, the Source locating it for
	// qemu-img, and the directory its VMDK extents may use ("" for none).
	disk(name string) (image, Source, string, error)
	// chunk locates a file's bytes (a chunk of a chunked file).
	chunk(name string) (Chunk, error)
	close()
}

// applianceFiles is an OVF package being planned.
type applianceFiles struct {
	kind     string // "ova" or "ovf"
	fallback string // VM name when the OVF has none
	ovfName  string
	ovf      []byte
	mfName   string // "" without a manifest
	pkg      pkgFiles
	opt      Options
}

// planAppliance checks an OVF package (references, sizes, manifest
// checksums, every disk's headers) and returns its plan.
func planAppliance(ctx context.Context, a applianceFiles) ([]Plan, error) {
	defer a.pkg.close()
	env, err := parseOVF(a.ovfName, a.ovf, a.opt)
	if err != nil {
		return nil, err
	}
	if err := checkSizes(env, a.pkg); err != nil {
		return nil, err
	}
	if err := verifyManifest(ctx, env, a); err != nil {
		return nil, err
	}
	var plans []Plan
	for _, sys := range env.systems {
		p, err := a.planVM(ctx, env, sys)
		if err != nil {
			return nil, err
		}
		plans = append(plans, p)
	}
	uniqueNames(plans)
	return plans, nil
}

// uniqueNames gives the VMs of a vApp distinct names: a VM named like an
// earlier one (two VirtualSystems of one Name, or names cut at 63
// characters) gets a "-2", "-3"… suffix and a warning.
func uniqueNames(plans []Plan) {
	seen := map[string]bool{}
	for i := range plans {
		if n := uniqueLabel(seen, plans[i].Name, 2); n != plans[i].Name {
			plans[i].Warnings = append(plans[i].Warnings, fmt.Sprintf("OVF vApp VM named %s like another VM of the vApp: imported as %s", plans[i].Name, n))
			plans[i].Name = n
		}
	}
}

// planVM plans one VirtualSystem of the package.
func (a applianceFiles) planVM(ctx context.Context, env *ovfEnvelope, sys *ovfNode) (Plan, error) {
	p, drives, err := env.plan(sys, a.ovfName, a.fallback)
	if err != nil {
		return Plan{}, err
	}
	p.Kind = a.kind
	disks := make([]ovfDisk, len(drives))
	for i, d := range drives {
		disks[i] = d.disk
	}
	names := diskNames(disks)
	for i, d := range drives {
		src := Source{VirtualSize: d.capacity}
		if d.capacity == 0 {
			if src, err = applianceChain(ctx, env, d, a.pkg); err != nil {
				return Plan{}, err
			}
		}
		src.Name, src.Bus = names[i], d.bus
		p.Disks = append(p.Disks, src)
	}
	if len(p.Disks) == 0 {
		msg := fmt.Sprintf("%s: OVF attaches no disk", a.ovfName)
		if p.DeploymentOption != "" {
			msg += fmt.Sprintf(" in deployment option %q", p.DeploymentOption)
		}
		if len(env.Disks) > 0 {
			var ids []string
			for _, d := range env.Disks {
				ids = append(ids, strconv.Quote(d.ID))
			}
			msg += fmt.Sprintf(" (no disk drive Item has HostResource ovf:/disk/ID for its DiskSection disks %s)", strings.Join(ids, ", "))
		}
		return Plan{}, malformed("%s", msg)
	}
	for _, w := range p.Warnings {
		slog.WarnContext(ctx, "import: the plan leaves out or changes part of the appliance", "ovf", a.ovfName, "warning", w)
	}
	return p, nil
}

// checkSizes compares each referenced file with its ovf:size (a chunked
// file: its chunks, complete).
func checkSizes(env *ovfEnvelope, pkg pkgFiles) error {
	for _, f := range env.Files {
		if f.ChunkSize != "" {
			if _, err := chunkNames(f, pkg); err != nil {
				return err
			}
			continue
		}
		n, err := pkg.size(f.Href)
		if err != nil {
			return err
		}
		if f.Size != "" && f.Size != strconv.FormatInt(n, 10) {
			return malformed("%s: %d bytes, the OVF says %s", f.Href, n, f.Size)
		}
	}
	return nil
}

// verifyManifest checks the manifest, when there is one: it must list the
// descriptor and every referenced file, and every file it lists must match.
func verifyManifest(ctx context.Context, env *ovfEnvelope, a applianceFiles) error {
	if a.mfName == "" {
		slog.WarnContext(ctx, "import: appliance without a manifest: contents not verified", "ovf", a.ovfName)
		return nil
	}
	r, err := a.pkg.open(a.mfName)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(r, maxOVF+1))
	r.Close()
	if err != nil {
		return err
	}
	if len(b) > maxOVF {
		return malformed("%s: manifest too large", a.mfName)
	}
	m, err := parseManifest(a.mfName, b)
	if err != nil {
		return err
	}
	listed := []string{a.ovfName}
	for _, f := range env.Files {
		names, err := chunkNames(f, a.pkg) // a chunked file's digests are its chunks'
		if err != nil {
			return err
		}
		listed = append(listed, names...)
	}
	if err := m.requireListed(a.mfName, listed); err != nil {
		return err
	}
	return m.verify(ctx, a.mfName, a.pkg.open)
}

// applianceChain checks a drive's disk and the disks it is a delta of, and
// returns its Source (with its Base chain).
func applianceChain(ctx context.Context, env *ovfEnvelope, d drive, pkg pkgFiles) (Source, error) {
	src, err := applianceDisk(ctx, env, d.disk, pkg, len(d.bases) > 0)
	if err != nil {
		return Source{}, err
	}
	at, child := &src, d.disk
	for i, b := range d.bases {
		if !deltaFormats[at.Format] {
			return Source{}, malformed("OVF disk %q is a delta of disk %q (ovf:parentRef) but its file is %s, which holds no unallocated blocks (want VMDK or qcow2)", child.ID, b.ID, at.Format)
		}
		base, err := applianceDisk(ctx, env, b, pkg, i < len(d.bases)-1)
		if err != nil {
			return Source{}, err
		}
		if base.Path == "" { // a blank base: the delta's unallocated blocks are zeroes anyway
			break
		}
		base.Name = b.ID
		at.Base = &base
		at, child = at.Base, b
	}
	return src, nil
}

// applianceDisk checks one OVF disk and returns its Source; a disk without
// a file is a blank disk of its capacity (Path and Format empty).
func applianceDisk(ctx context.Context, env *ovfEnvelope, d ovfDisk, pkg pkgFiles, delta bool) (Source, error) {
	capacity, capErr := quantityBytes(d.Capacity, d.Units, "byte")
	if d.FileRef == "" {
		if capErr != nil || capacity <= 0 || capacity%512 != 0 {
			return Source{}, malformed("OVF disk %q: no file and bad capacity %q %q", d.ID, d.Capacity, d.Units)
		}
		return Source{VirtualSize: capacity}, nil
	}
	f, ok := env.file(d.FileRef)
	if !ok {
		return Source{}, malformed("OVF disk %q: fileRef %q matches no File", d.ID, d.FileRef)
	}
	if f.ChunkSize != "" || f.Compression == "gzip" {
		return encodedDisk(ctx, f, d, pkg, delta)
	}
	im, src, dir, err := pkg.disk(f.Href)
	if err != nil {
		return Source{}, err
	}
	for _, n := range append([]string{im.name}, im.parts...) {
		if _, ok := env.fileByHref(n); !ok { // a descriptor's extent: sized and in the manifest only as a File
			return Source{}, malformed("OVF disk %q: %s, an extent of %s, is not a File of the OVF's References", d.ID, n, f.Href)
		}
	}
	if len(src.Chunks) > 0 || len(src.Extents) > 0 { // extents in the archive: sized by the descriptor, checked
		return src, nil
	}
	im.delta = delta
	if src, err = inspectDisk(ctx, im, src, dir, strings.ToLower(filepath.Ext(f.Href))); err != nil {
		return Source{}, err
	}
	if capErr == nil && capacity != src.VirtualSize {
		slog.InfoContext(ctx, "import: OVF capacity differs from the image's size; using the image's",
			"disk", d.ID, "capacity", capacity, "virtual_size", src.VirtualSize)
	}
	return src, nil
}

// inspectDir plans the import of a plain OVF directory: the one .ovf at
// its top and the files beside it.
func inspectDir(ctx context.Context, dir string, opt Options) ([]Plan, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var found []string
	for _, e := range entries {
		if strings.EqualFold(filepath.Ext(e.Name()), ".ovf") {
			found = append(found, e.Name())
		}
	}
	if len(found) != 1 {
		return nil, malformed("directory %s: %d .ovf files at its top, want one (an OVF directory holds one descriptor and its files)", filepath.Base(dir), len(found))
	}
	p, err := resolveInside(dir, found[0])
	if err != nil {
		return nil, malformed("%s: %v", found[0], err)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, malformed("%s: not a regular file", found[0])
	}
	im := image{r: f, size: fi.Size(), name: found[0]}
	if kind, err := detectContainer(im); err != nil || kind != "ovf" {
		return nil, malformed("%s: not an OVF descriptor", found[0])
	}
	return inspectOVF(ctx, p, im, opt)
}

// inspectOVF plans the import of an .ovf and the files beside it.
func inspectOVF(ctx context.Context, path string, im image, opt Options) ([]Plan, error) {
	if im.size > maxOVF {
		return nil, malformed("%s: %d bytes, too large for an OVF", im.name, im.size)
	}
	desc, err := im.read(0, im.size)
	if err != nil {
		return nil, err
	}
	dir := &ovfDir{dir: filepath.Dir(path)}
	a := applianceFiles{kind: "ovf", fallback: nameFromFile(path), ovfName: im.name, ovf: desc, pkg: dir, opt: opt}
	mf := strings.TrimSuffix(im.name, filepath.Ext(im.name)) + ".mf"
	if _, err := os.Lstat(filepath.Join(dir.dir, mf)); err == nil {
		a.mfName = mf
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return planAppliance(ctx, a)
}

// ovfDir is the directory of an .ovf: files are resolved inside it.
type ovfDir struct {
	dir   string
	files []*os.File
}

func (o *ovfDir) resolve(name string) (string, os.FileInfo, error) {
	p, err := resolveInside(o.dir, name)
	if err != nil {
		return "", nil, malformed("%s: %v", name, err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return "", nil, err
	}
	if !fi.Mode().IsRegular() {
		return "", nil, malformed("%s: not a regular file", name)
	}
	return p, fi, nil
}

func (o *ovfDir) size(name string) (int64, error) {
	_, fi, err := o.resolve(name)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (o *ovfDir) open(name string) (io.ReadCloser, error) {
	p, _, err := o.resolve(name)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

// disk opens a disk file beside the OVF; its VMDK extents must be beside it.
func (o *ovfDir) disk(name string) (image, Source, string, error) {
	p, fi, err := o.resolve(name)
	if err != nil {
		return image{}, Source{}, "", err
	}
	f, err := os.Open(p)
	if err != nil {
		return image{}, Source{}, "", err
	}
	o.files = append(o.files, f)
	return image{r: f, size: fi.Size(), name: name}, Source{Path: p}, filepath.Dir(p), nil
}

func (o *ovfDir) chunk(name string) (Chunk, error) {
	p, fi, err := o.resolve(name)
	if err != nil {
		return Chunk{}, err
	}
	return Chunk{Path: p, Size: fi.Size()}, nil
}

func (o *ovfDir) close() {
	for _, f := range o.files {
		f.Close()
	}
}
