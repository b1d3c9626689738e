// Package storage manages storage pools and the volumes in them with
// qemu-img. Every path it builds stays inside its pool.
//
// A pool is a directory: TypeDir on local disk, TypeShared on a file system
// every host of a cluster mounts (NFS, a cluster file system). The code is
// the same; only placement differs. A volume is a disk image file in a pool,
// named by its path relative to the pool ("images/debian.qcow2",
// "vms/web1/disk0.qcow2"). Its format follows from the extension (.qcow2 is
// qcow2, .raw and .img are raw) and qemu-img is always told the format with
// -f: images are never probed. Backing files of overlays are stored relative
// to the overlay's directory, so a pool can be mounted anywhere.
//
// Files appear under their final name only when complete: they are written
// as <name>.part, synced, and renamed (or linked, to refuse an existing
// name) into place, and the directory is synced.
package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "hangar/api/v1"
)

// Errors of this package. The API maps them: ErrInvalid, ErrNoImage,
// ErrOutsidePool and ErrChecksum are the caller's mistake (400), ErrNotFound
// is 404, ErrExists and ErrInUse are conflicts (409), ErrChainTooDeep is a
// failed precondition (412).
var (
	// ErrOutsidePool is returned for a path that would leave its pool.
	ErrOutsidePool = errors.New("path escapes the storage pool")
	// ErrNoImage is returned when an image file does not exist or is not a disk image.
	ErrNoImage = errors.New("no such image")
	// ErrInvalid is returned for a malformed request: a bad volume name, a
	// format that does not match the extension, a size that is not allowed,
	// an upload that is not the image it claims to be.
	ErrInvalid = errors.New("invalid volume request")
	// ErrNotFound is returned for a volume that does not exist.
	ErrNotFound = errors.New("no such volume")
	// ErrExists is returned when creating a volume whose name is taken.
	ErrExists = errors.New("volume already exists")
	// ErrInUse is returned for a volume other volumes are built on, or one
	// an image lock shows a running QEMU has open.
	ErrInUse = errors.New("volume in use")
	// ErrChainTooDeep is returned when an overlay would make a backing
	// chain longer than MaxChainDepth files.
	ErrChainTooDeep = errors.New("backing chain too deep: flatten first")
	// ErrChecksum is returned when uploaded data does not match its checksum.
	ErrChecksum = errors.New("checksum mismatch")
)

// Pool types.
const (
	TypeDir    = "dir"    // a directory on this host
	TypeShared = "shared" // a directory every host of the pool mounts (NFS, cluster fs)
)

// Pool is a directory storage pool.
type Pool struct {
	Name string
	Type string // TypeDir or TypeShared
	Path string // absolute, cleaned
}

// OpenPool opens a pool. A dir pool's directory is created if needed; a
// shared pool's directory must exist (is mounted): creating it would put
// the volumes on local disk.
func OpenPool(name, typ, path string) (*Pool, error) {
	if name == "" {
		return nil, fmt.Errorf("pool: empty name: %w", ErrInvalid)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	abs = filepath.Clean(abs)
	switch typ {
	case TypeDir:
		if err := os.MkdirAll(abs, 0o700); err != nil {
			return nil, fmt.Errorf("pool %s: create %s: %w", name, abs, err)
		}
	case TypeShared:
		st, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("pool %s: shared directory %s (is it mounted?): %w", name, abs, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("pool %s: %s is not a directory: %w", name, abs, ErrInvalid)
		}
	default:
		return nil, fmt.Errorf("pool %s: unknown type %q (want %s or %s): %w", name, typ, TypeDir, TypeShared, ErrInvalid)
	}
	return &Pool{Name: name, Type: typ, Path: abs}, nil
}

// OpenDirPool opens (creating if needed) a directory pool.
func OpenDirPool(name, path string) (*Pool, error) { return OpenPool(name, TypeDir, path) }

// Resolve joins the relative path elements under the pool and refuses any
// result outside it (.., absolute elements, NUL, empty elements, symlinks
// leading out, also dangling ones and ones in the middle of the path).
func (p *Pool) Resolve(elem ...string) (string, error) {
	full, _, err := p.resolve(elem...)
	return full, err
}

// resolve is Resolve that also returns the path with all symlinks of its
// existing part resolved; that is the path to operate on.
func (p *Pool) resolve(elem ...string) (full, real string, err error) {
	for _, e := range elem {
		if e == "" || filepath.IsAbs(e) || strings.ContainsRune(e, 0) {
			return "", "", fmt.Errorf("pool %s: %q: %w", p.Name, e, ErrOutsidePool)
		}
	}
	rel := filepath.Join(elem...)
	full = filepath.Join(p.Path, rel)
	if !within(p.Path, full) {
		return "", "", fmt.Errorf("pool %s: %q: %w", p.Name, rel, ErrOutsidePool)
	}
	root, err := p.root()
	if err != nil {
		return "", "", err
	}
	real, err = realPath(full)
	if err != nil {
		return "", "", fmt.Errorf("pool %s: %q: %w", p.Name, rel, err)
	}
	if !within(root, real) {
		return "", "", fmt.Errorf("pool %s: %q: %w", p.Name, rel, ErrOutsidePool)
	}
	return full, real, nil
}

// root is the pool directory with symlinks resolved.
func (p *Pool) root() (string, error) {
	root, err := filepath.EvalSymlinks(p.Path)
	if err != nil {
		return "", fmt.Errorf("pool %s: %w", p.Name, err)
	}
	return root, nil
}

func within(root, path string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// realPath resolves the symlinks of path like filepath.EvalSymlinks, but
// also when the path does not exist (yet): the existing prefix is resolved
// and the rest appended, and a dangling symlink is followed to where it
// points.
func realPath(path string) (string, error) {
	cur, tail := filepath.Clean(path), ""
	for hops := 0; ; {
		r, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(r, tail), nil
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, errNotDir) {
			return "", err
		}
		if fi, lerr := os.Lstat(cur); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			if hops++; hops > 40 {
				return "", fmt.Errorf("%s: too many symlinks", path)
			}
			target, err := os.Readlink(cur)
			if err != nil {
				return "", err
			}
			if !filepath.IsAbs(target) {
				dir, err := filepath.EvalSymlinks(filepath.Dir(cur))
				if err != nil {
					return "", err
				}
				target = filepath.Join(dir, target)
			}
			cur = filepath.Clean(target)
			continue
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return filepath.Join(cur, tail), nil
		}
		tail = filepath.Join(filepath.Base(cur), tail)
		cur = parent
	}
}

// VMDir is the directory of a VM's volumes. vm must be a validated name.
func (p *Pool) VMDir(vm string) (string, error) { return p.Resolve("vms", vm) }

// ImageInfo is what qemu-img reports of an image.
type ImageInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	ActualSize      int64  `json:"actual-size"`
	BackingFilename string `json:"backing-filename"`
	FullBacking     string `json:"full-backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
	ClusterSize     int64  `json:"cluster-size"`
	Encrypted       bool   `json:"encrypted"`
	DataFile        string `json:"-"` // qcow2 external data file
	Corrupt         bool   `json:"-"` // qcow2 corrupt flag
}

// Info runs qemu-img info (sharing the image with a running QEMU) on an
// image anywhere on the host. The format is taken from the extension
// (.qcow2, .raw) or, for other names, from the qcow2 magic (qcow2, else
// raw); qemu-img gets it with -f. Other image formats are refused.
func Info(ctx context.Context, path string) (ImageInfo, error) {
	var info ImageInfo
	st, err := os.Stat(path)
	if err != nil {
		return info, fmt.Errorf("image %s: %w", path, ErrNoImage)
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		return info, fmt.Errorf("image %s: not a file: %w", path, ErrNoImage)
	}
	format, err := hostImageFormat(path)
	if err != nil {
		return info, fmt.Errorf("image %s: %w", path, err)
	}
	info, err = imageInfo(ctx, path, format, true)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, ErrInUse) {
			err = fmt.Errorf("%w: %w", err, ErrNoImage)
		}
		return info, fmt.Errorf("image %s: %w", path, err)
	}
	return info, nil
}

// hostImageFormat is the format of an image outside any pool's naming rules.
func hostImageFormat(path string) (string, error) {
	switch filepath.Ext(path) {
	case ".qcow2":
		return "qcow2", nil
	case ".raw":
		return "raw", nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: %w", err, ErrNoImage)
	}
	defer f.Close()
	head := make([]byte, headerSniffLen)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("%w: %w", err, ErrNoImage)
	}
	switch name := foreignFormat(head[:n]); name {
	case "":
		return "raw", nil
	case "qcow2":
		return "qcow2", nil
	default:
		return "", fmt.Errorf("%s images are not supported (convert it to qcow2): %w", name, ErrNoImage)
	}
}

// imageInfo runs qemu-img info -f format on one file (never its backing
// chain); shared adds -U so that an image a QEMU has open can be read.
// With shared (-U: no lock taken, so a file in use can be read) the answer
// for an unchanged file is remembered (infos); without it every call runs
// qemu-img, whose lock check is part of the answer.
func imageInfo(ctx context.Context, path, format string, shared bool) (ImageInfo, error) {
	if shared {
		return infos.do(path, format, func() (ImageInfo, error) { return runImageInfo(ctx, path, format, true) })
	}
	return runImageInfo(ctx, path, format, false)
}

func runImageInfo(ctx context.Context, path, format string, shared bool) (ImageInfo, error) {
	args := []string{"info"}
	if shared {
		args = append(args, "-U")
	}
	args = append(args, "-f", format, "--output=json", path)
	out, err := qemuImg(ctx, args...)
	if err != nil {
		return ImageInfo{}, err
	}
	var raw struct {
		ImageInfo
		Specific struct {
			Data struct {
				DataFile string `json:"data-file"`
				Corrupt  bool   `json:"corrupt"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return ImageInfo{}, fmt.Errorf("parse qemu-img info: %w", err)
	}
	info := raw.ImageInfo
	info.DataFile = raw.Specific.Data.DataFile
	info.Corrupt = raw.Specific.Data.Corrupt
	return info, nil
}

// CreateDisk creates the volume of one VM disk: an empty qcow2 of SizeMiB,
// or a qcow2 overlay on Image (an absolute path; the overlay records it as
// it is). It is idempotent: an existing complete volume is returned as it
// is. The file appears under its final name only when complete. An image
// whose chain is already MaxChainDepth files long is refused
// (ErrChainTooDeep).
func (p *Pool) CreateDisk(ctx context.Context, vmName string, d v1.Disk) (v1.DiskStatus, error) {
	st, err := p.createDisk(ctx, vmName, d)
	if errors.Is(err, errReleased) {
		// The copy brought in was released (its last VM deleted) between
		// bringing it in and layering on it: bring it in once more.
		st, err = p.createDisk(ctx, vmName, d)
	}
	return st, err
}

// errReleased: the image createDisk brought in is gone before the overlay
// was made on it.
var errReleased = fmt.Errorf("the image was released meanwhile: %w", ErrNoImage)

func (p *Pool) createDisk(ctx context.Context, vmName string, d v1.Disk) (v1.DiskStatus, error) {
	dir, err := p.VMDir(vmName)
	if err != nil {
		return v1.DiskStatus{}, err
	}
	path, err := p.Resolve("vms", vmName, d.Name+".qcow2")
	if err != nil {
		return v1.DiskStatus{}, err
	}
	st := v1.DiskStatus{Name: d.Name, Path: path, Format: "qcow2", Created: true}
	if _, err := os.Stat(path); err == nil {
		if d.Image != "" {
			if vol, err := p.Volume(ctx, "vms/"+vmName+"/"+d.Name+".qcow2"); err == nil {
				st.Backing = vol.Backing
			}
		}
		return st, nil
	}
	if d.Image != "" {
		// The overlay's backing must live in the pool: an image from
		// elsewhere is brought in once (images/), then layered on with a
		// relative backing path.
		rel, err := p.AdoptImage(ctx, d.Image)
		if err != nil {
			return st, fmt.Errorf("create disk %s: %w", d.Name, err)
		}
		if d.Image, err = p.Resolve(rel); err != nil {
			return st, fmt.Errorf("create disk %s: %w", d.Name, err)
		}
		st.Backing = rel
	}
	// Like CreateOverlay: the image cannot be deleted (as a pool volume)
	// while the overlay is being made on it.
	lockKeys := [2][]string{nil, {path}}
	if d.Image != "" {
		if real, err := realPath(d.Image); err == nil {
			lockKeys[0] = []string{real}
		}
	}
	if real, err := realPath(path); err == nil {
		lockKeys[1] = []string{real}
	}
	unlock, err := volumeLocks.lock(ctx, lockKeys[0], lockKeys[1])
	if err != nil {
		return st, fmt.Errorf("create disk %s: %w", d.Name, err)
	}
	defer unlock()
	if _, err := os.Stat(path); err == nil {
		return st, nil
	}
	tmp := path + ".part"
	size := int64(d.SizeMiB) << 20
	backing, format := "", ""
	if d.Image != "" {
		if format, err = p.diskImageFormat(d.Image); err != nil {
			return st, fmt.Errorf("create disk %s: %w", d.Name, err)
		}
		if _, err := os.Stat(d.Image); err != nil {
			return st, fmt.Errorf("create disk %s: image %s: %w", d.Name, d.Image, errReleased)
		}
		root, err := p.root()
		if err != nil {
			return st, err
		}
		links, err := walkChain(ctx, d.Image, format, root, nil)
		if err != nil {
			return st, fmt.Errorf("create disk %s: %w", d.Name, err)
		}
		if len(links)+1 > MaxChainDepth {
			return st, fmt.Errorf("create disk %s: image %s has a backing chain of %d files, an overlay would exceed %d: %w",
				d.Name, d.Image, len(links), MaxChainDepth, ErrChainTooDeep)
		}
		info := links[0].info
		if d.SizeMiB > 0 && d.SizeMiB<<20 < info.VirtualSize {
			return st, fmt.Errorf("create disk %s: size %d MiB is smaller than image %s (%d MiB)", d.Name, d.SizeMiB, d.Image, info.VirtualSize>>20)
		}
		if size == 0 {
			size = info.VirtualSize
		}
		if backing, err = filepath.Rel(dir, d.Image); err != nil {
			return st, fmt.Errorf("create disk %s: %w", d.Name, err)
		}
	}
	if err := mkdirAll(dir); err != nil {
		return st, fmt.Errorf("create disk %s: %w", d.Name, err)
	}
	// A .part is what a crash left in the middle of this: start over.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("create disk %s: %w", d.Name, err)
	}
	if err := newQcow2(tmp, size, backing, format); err != nil {
		_ = os.Remove(tmp)
		return st, fmt.Errorf("create disk %s: %w", d.Name, err)
	}
	if err := publish(tmp, path, true); err != nil {
		_ = os.Remove(tmp)
		return st, fmt.Errorf("create disk %s: %w", d.Name, err)
	}
	// What qemu-img info would say of the file just written (the start
	// that follows walks its chain).
	info := ImageInfo{Format: "qcow2", VirtualSize: size, ClusterSize: newClusterSize, BackingFilename: backing, BackingFormat: format}
	if backing != "" {
		info.FullBacking = filepath.Join(dir, backing)
	}
	if fi, err := os.Stat(path); err == nil {
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			info.ActualSize = sys.Blocks * 512
		}
	}
	infos.remember(path, "qcow2", info)
	return st, nil
}

// diskImageFormat is the format of the image of a VM disk: by the pool's
// naming rule when the image is in this pool (a guest-written raw volume
// must never be read as qcow2), else as Info determines it.
func (p *Pool) diskImageFormat(image string) (string, error) {
	if !filepath.IsAbs(image) {
		return "", fmt.Errorf("image %s: not an absolute path: %w", image, ErrNoImage)
	}
	root, err := p.root()
	if err != nil {
		return "", err
	}
	real, err := realPath(image)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", image, err)
	}
	if within(root, real) {
		rel, _ := filepath.Rel(root, real)
		format, err := formatOfName(rel)
		if err != nil {
			return "", fmt.Errorf("image %s: %w", image, err)
		}
		return format, nil
	}
	return hostImageFormat(image)
}

// AdoptImage brings an image file into the pool once, as a standalone
// volume under images/ (checked like an upload: the declared format, no
// backing file), and returns its pool-relative name. An image already in
// the pool is returned as it is. The name is derived from the file's path,
// size and modification time, so a changed file is brought in anew.
func (p *Pool) AdoptImage(ctx context.Context, image string) (string, error) {
	format, err := p.diskImageFormat(image)
	if err != nil {
		return "", err
	}
	real, err := realPath(image)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", image, ErrNoImage)
	}
	root, err := p.root()
	if err != nil {
		return "", err
	}
	if within(root, real) {
		rel, _ := filepath.Rel(root, real)
		return rel, nil
	}
	f, err := os.Open(real)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", image, ErrNoImage)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("image %s: not a regular file: %w", image, ErrNoImage)
	}
	key := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%d", real, fi.Size(), fi.ModTime().UnixNano())))
	base := strings.TrimSuffix(filepath.Base(real), filepath.Ext(real))
	base = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, base)
	if len(base) > 40 {
		base = base[:40]
	}
	ext := ".qcow2"
	if format == "raw" {
		ext = ".raw"
	}
	name := fmt.Sprintf("images/%s-%s%s", strings.TrimLeft(base, "-_"), hex.EncodeToString(key[:6]), ext)
	marker, err := p.adoptedMarker(name)
	if err != nil {
		return "", err
	}
	// One at a time per copy: two creates from one image (say, resumed
	// together after a restart) would otherwise both write the marker's
	// .part, and the second rename finds it gone.
	unlock, err := volumeLocks.lock(ctx, nil, []string{marker})
	if err != nil {
		return "", fmt.Errorf("bring image %s into pool %s: %w", image, p.Name, err)
	}
	defer unlock()
	if _, err := p.Volume(ctx, name); err == nil {
		return name, nil
	}
	// The marker goes first: a copy without one would never be released.
	if err := writeMarker(marker, real); err != nil {
		return "", fmt.Errorf("bring image %s into pool %s: %w", image, p.Name, err)
	}
	if _, err := p.Upload(ctx, name, format, f, fi.Size(), "", nil); err != nil && !errors.Is(err, ErrExists) {
		return "", fmt.Errorf("bring image %s into pool %s: %w", image, p.Name, err)
	}
	return name, nil
}

// adoptedMarker is the hidden file beside a copy AdoptImage made (holding
// the source's path): only such copies are released when unused, never a
// volume somebody uploaded.
func (p *Pool) adoptedMarker(name string) (string, error) {
	dir, base := filepath.Split(name)
	return p.Resolve(dir, "."+base+".adopted")
}

func writeMarker(path, source string) error {
	if err := mkdirAll(filepath.Dir(path)); err != nil {
		return err
	}
	tmp := path + ".part"
	if err := os.WriteFile(tmp, []byte(source+"\n"), 0o600); err != nil {
		return err
	}
	if err := publish(tmp, path, true); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// ReleaseImage removes a copy AdoptImage brought into the pool once no
// volume of the pool is built on it any more. Other names (volumes that
// were not brought in) are left alone.
func (p *Pool) ReleaseImage(ctx context.Context, name string) (removed bool, err error) {
	if !strings.HasPrefix(name, "images/") {
		return false, nil
	}
	marker, err := p.adoptedMarker(name)
	if err != nil {
		return false, err
	}
	if _, err := os.Lstat(marker); err != nil {
		return false, nil
	}
	v, err := p.volume(name, "")
	if err != nil {
		return false, fmt.Errorf("release image %s: %w", name, err)
	}
	unlock, err := volumeLocks.lock(ctx, nil, []string{v.real})
	if err != nil {
		return false, fmt.Errorf("release image %s: %w", name, err)
	}
	defer unlock()
	deps, err := p.dependents(ctx, v.real)
	if err != nil {
		return false, fmt.Errorf("release image %s: %w", name, err)
	}
	if len(deps) > 0 {
		return false, nil
	}
	if err := os.Remove(v.real); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("release image %s: %w", name, err)
	}
	_ = os.Remove(marker)
	return true, syncDir(filepath.Dir(v.real))
}

// DeleteVM removes the volumes Hangar created for a VM and its directory,
// and the images brought into the pool for them that no other volume
// builds on any more (ReleaseImage).
func (p *Pool) DeleteVM(vmName string, disks []v1.DiskStatus) error {
	dir, err := p.VMDir(vmName)
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range disks {
		if !d.Created {
			continue
		}
		if !within(dir, d.Path) {
			errs = append(errs, fmt.Errorf("delete disk %s: %s: %w", d.Name, d.Path, ErrOutsidePool))
			continue
		}
		if err := os.Remove(d.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete disk %s: %w", d.Name, err))
		}
		_ = os.Remove(d.Path + ".part")
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("delete vm dir: %w", err))
	}
	// Images brought in for these disks go when nothing builds on them.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, d := range disks {
		if d.Created && d.Backing != "" {
			if _, err := p.ReleaseImage(ctx, d.Backing); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// qemuImg runs qemu-img (no shell) and returns its standard output.
func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	var out bytes.Buffer
	if _, err := runQemuImg(ctx, &out, args...); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// runQemuImg runs qemu-img with stdout going to w and returns its exit
// code. The error names the subcommand and carries qemu-img's message; a
// lock held by another process is ErrInUse, a cancelled ctx its error.
func runQemuImg(ctx context.Context, w io.Writer, args ...string) (int, error) {
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	var stderr bytes.Buffer
	cmd.Stdout = w
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err == nil {
		return 0, nil
	}
	if ctx.Err() != nil {
		return -1, fmt.Errorf("qemu-img %s: %w", args[0], ctx.Err())
	}
	code := -1
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	msg := strings.TrimSpace(stderr.String())
	if msg == "" {
		msg = err.Error()
	}
	msg = strings.ReplaceAll(msg, "\n", "; ")
	if len(msg) > 400 { // qemu-img check lists every bad cluster
		msg = strings.ToValidUTF8(msg[:400], "") + "…"
	}
	if strings.Contains(msg, "Failed to get") && strings.Contains(msg, "lock") {
		return code, fmt.Errorf("qemu-img %s: %s: %w", args[0], msg, ErrInUse)
	}
	return code, fmt.Errorf("qemu-img %s: %s", args[0], msg)
}
