package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"hangar/internal/qemu/img"
)

// Volume is a disk image file in a pool.
type Volume struct {
	Pool        string `json:"pool"`
	Name        string `json:"name"`   // relative to the pool: "images/debian.qcow2"
	Format      string `json:"format"` // qcow2 or raw
	VirtualSize int64  `json:"virtualSize"`
	ActualSize  int64  `json:"actualSize"`
	// Backing is the name of the backing volume, "" if none. A volume
	// whose chain leaves the pool is never described (ErrOutsidePool).
	Backing    string `json:"backing,omitempty"`
	ChainDepth int    `json:"chainDepth"` // files in the backing chain, 1 without backing
}

// nameElem is one element of a volume name: no hidden or temporary files,
// nothing qemu could read as a protocol or an option.
var nameElem = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._+-]*$`)

// formatOfName checks a volume name and returns the format its extension
// stands for.
func formatOfName(name string) (string, error) {
	if len(name) > 1024 {
		return "", fmt.Errorf("name longer than 1024 bytes: %w", ErrInvalid)
	}
	for e := range strings.SplitSeq(name, "/") {
		if len(e) > 255 || !nameElem.MatchString(e) {
			return "", fmt.Errorf("name element %q: want letters, digits, '.', '_', '+', '-', not starting with '.', '+' or '-': %w", e, ErrInvalid)
		}
	}
	switch filepath.Ext(name) {
	case ".qcow2":
		return "qcow2", nil
	case ".raw", ".img":
		return "raw", nil
	}
	return "", fmt.Errorf("name %q: want a .qcow2, .raw or .img extension: %w", name, ErrInvalid)
}

// volRef is a checked volume name.
type volRef struct {
	name   string
	real   string // path with symlinks resolved: the file to operate on
	format string
}

// volume checks name (first that it stays in the pool, then its form) and
// that format, if given, agrees with its extension.
func (p *Pool) volume(name, format string) (volRef, error) {
	_, real, err := p.resolve(name)
	if err != nil {
		return volRef{}, err
	}
	f, err := formatOfName(name)
	if err != nil {
		return volRef{}, err
	}
	if format != "" && format != f {
		return volRef{}, fmt.Errorf("format %q does not match the extension of %s (%s): %w", format, name, f, ErrInvalid)
	}
	return volRef{name: name, real: real, format: f}, nil
}

// exists reports whether the volume's file exists; anything but a regular
// file under a volume name is an error.
func (v volRef) exists() (bool, error) {
	st, err := os.Lstat(v.real)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !st.Mode().IsRegular() {
		return false, fmt.Errorf("%s is not a regular file: %w", v.name, ErrInvalid)
	}
	return true, nil
}

func (v volRef) mustExist() error {
	ok, err := v.exists()
	if err == nil && !ok {
		err = ErrNotFound
	}
	return err
}

func (v volRef) mustNotExist() error {
	ok, err := v.exists()
	if err == nil && ok {
		err = ErrExists
	}
	return err
}

// lock takes the volume's lock and checks that it exists (exist) or not;
// the caller defers the returned unlock.
func (v volRef) lock(ctx context.Context, exist bool) (func(), error) {
	unlock, err := volumeLocks.lock(ctx, nil, []string{v.real})
	if err != nil {
		return nil, err
	}
	check := v.mustNotExist
	if exist {
		check = v.mustExist
	}
	if err := check(); err != nil {
		unlock()
		return nil, err
	}
	return unlock, nil
}

func (v volRef) tmp() string { return v.real + ".part" }

// toVolume describes a volume by its backing chain.
func (p *Pool) toVolume(root, name, format string, links []chainLink) Volume {
	top := links[0].info
	vol := Volume{Pool: p.Name, Name: name, Format: format, VirtualSize: top.VirtualSize, ActualSize: top.ActualSize, ChainDepth: len(links)}
	if len(links) > 1 {
		vol.Backing = links[1].path
		if within(root, vol.Backing) {
			rel, _ := filepath.Rel(root, vol.Backing)
			vol.Backing = filepath.ToSlash(rel)
		}
	}
	return vol
}

// describe is Volume for a checked, locked volume.
func (p *Pool) describe(ctx context.Context, v volRef) (Volume, error) {
	root, err := p.root()
	if err != nil {
		return Volume{}, err
	}
	links, err := walkChain(ctx, v.real, v.format, root, nil)
	if err != nil {
		return Volume{}, err
	}
	return p.toVolume(root, v.name, v.format, links), nil
}

// Volume describes one volume, following its backing chain (qemu-img info
// -U per file, so volumes in use can be described).
func (p *Pool) Volume(ctx context.Context, name string) (Volume, error) {
	v, err := p.volume(name, "")
	if err != nil {
		return Volume{}, fmt.Errorf("volume %s: %w", name, err)
	}
	if err := v.mustExist(); err != nil {
		return Volume{}, fmt.Errorf("volume %s: %w", name, err)
	}
	vol, err := p.describe(ctx, v)
	if err != nil {
		return Volume{}, fmt.Errorf("volume %s: %w", name, err)
	}
	return vol, nil
}

// volFile is a file under a volume name found by walking a pool.
type volFile struct {
	name, real, format string
}

// walkVolumes lists the files of the pool that are named like volumes,
// sorted by name. Temporary (.part) and hidden files, other extensions,
// symlinks and special files are not volumes.
func (p *Pool) walkVolumes(ctx context.Context, root string) ([]volFile, error) {
	var files []volFile
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root {
				return err
			}
			slog.WarnContext(ctx, "storage: skip unreadable path", "pool", p.Name, "path", path, "err", err)
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if path == root {
			return nil
		}
		if d.IsDir() {
			if !nameElem.MatchString(d.Name()) {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || strings.HasSuffix(path, ".part") {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return nil
		}
		rel = filepath.ToSlash(rel)
		format, err := formatOfName(rel)
		if err != nil {
			return nil
		}
		files = append(files, volFile{name: rel, real: path, format: format})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pool %s: list: %w", p.Name, err)
	}
	return files, nil
}

// Volumes lists the volumes of the pool. A file that qemu-img cannot read
// as the format its name says is left out (and logged).
func (p *Pool) Volumes(ctx context.Context) ([]Volume, error) {
	root, err := p.root()
	if err != nil {
		return nil, err
	}
	files, err := p.walkVolumes(ctx, root)
	if err != nil {
		return nil, err
	}
	cache := &infoCache{m: map[string]ImageInfo{}}
	found := make([]*Volume, len(files))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(4, len(files)) {
		wg.Go(func() {
			for i := range work {
				f := files[i]
				links, err := walkChain(ctx, f.real, f.format, root, cache)
				if err != nil {
					if ctx.Err() == nil {
						slog.WarnContext(ctx, "storage: skip volume", "pool", p.Name, "volume", f.name, "err", err)
					}
					continue
				}
				vol := p.toVolume(root, f.name, f.format, links)
				found[i] = &vol
			}
		})
	}
feed:
	for i := range files {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pool %s: list: %w", p.Name, err)
	}
	vols := make([]Volume, 0, len(files))
	for _, v := range found {
		if v != nil {
			vols = append(vols, *v)
		}
	}
	return vols, nil
}

// CreateVolume creates an empty volume of size bytes (a multiple of 512).
// format may be "" (by extension).
func (p *Pool) CreateVolume(ctx context.Context, name, format string, size int64) (Volume, error) {
	vol, err := p.createVolume(ctx, name, format, size)
	if err != nil {
		return Volume{}, fmt.Errorf("create volume %s: %w", name, err)
	}
	return vol, nil
}

func (p *Pool) createVolume(ctx context.Context, name, format string, size int64) (Volume, error) {
	v, err := p.volume(name, format)
	if err != nil {
		return Volume{}, err
	}
	if size <= 0 || size%512 != 0 {
		return Volume{}, fmt.Errorf("size %d: want a positive multiple of 512 bytes: %w", size, ErrInvalid)
	}
	unlock, err := v.lock(ctx, false)
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	return p.build(ctx, v, func(tmp string) error {
		_, err := qemuImg(ctx, "create", "-q", "-f", v.format, tmp, strconv.FormatInt(size, 10))
		return err
	})
}

// build makes a new volume: write makes the complete file at tmp, which is
// then published under the volume's name (refusing an existing one). On
// any failure nothing is left.
func (p *Pool) build(ctx context.Context, v volRef, write func(tmp string) error) (Volume, error) {
	if err := mkdirAll(filepath.Dir(v.real)); err != nil {
		return Volume{}, err
	}
	tmp := v.tmp()
	if err := removeStale(tmp); err != nil {
		return Volume{}, err
	}
	if err := write(tmp); err != nil {
		_ = os.Remove(tmp)
		return Volume{}, err
	}
	if err := publish(tmp, v.real, false); err != nil {
		_ = os.Remove(tmp)
		return Volume{}, err
	}
	vol, err := p.describe(ctx, v)
	if err != nil {
		return Volume{}, fmt.Errorf("created, but: %w", err)
	}
	return vol, nil
}

// CreateOverlay creates a linked clone: a qcow2 volume name (.qcow2) whose
// backing file is the volume backing of the same pool, recorded relative to
// the overlay's directory with its format. The backing's whole chain must
// be inside the pool (ErrOutsidePool) and the new chain at most
// MaxChainDepth files (ErrChainTooDeep: flatten the backing first).
func (p *Pool) CreateOverlay(ctx context.Context, name, backing string) (Volume, error) {
	vol, err := p.createOverlay(ctx, name, backing)
	if err != nil {
		return Volume{}, fmt.Errorf("create overlay %s on %s: %w", name, backing, err)
	}
	return vol, nil
}

func (p *Pool) createOverlay(ctx context.Context, name, backing string) (Volume, error) {
	v, err := p.volume(name, "qcow2")
	if err != nil {
		return Volume{}, err
	}
	b, err := p.volume(backing, "")
	if err != nil {
		return Volume{}, err
	}
	unlock, err := volumeLocks.lock(ctx, []string{b.real}, []string{v.real})
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	if err := b.mustExist(); err != nil {
		return Volume{}, fmt.Errorf("backing %s: %w", backing, err)
	}
	if err := v.mustNotExist(); err != nil {
		return Volume{}, err
	}
	root, err := p.root()
	if err != nil {
		return Volume{}, err
	}
	links, err := walkChain(ctx, b.real, b.format, root, nil)
	if err != nil {
		return Volume{}, err
	}
	if len(links)+1 > MaxChainDepth {
		return Volume{}, fmt.Errorf("backing %s has a chain of %d files, the overlay would make %d (max %d): %w",
			backing, len(links), len(links)+1, MaxChainDepth, ErrChainTooDeep)
	}
	return p.build(ctx, v, func(tmp string) error {
		rel, err := filepath.Rel(filepath.Dir(v.real), b.real)
		if err != nil {
			return err
		}
		_, err = qemuImg(ctx, "create", "-q", "-f", "qcow2", "-b", rel, "-F", b.format, tmp)
		return err
	})
}

// Copy makes dst a full, standalone copy of src (a full clone, or a format
// conversion): qemu-img convert reads src's whole backing chain, which must
// stay inside the pool (ErrOutsidePool; every file is checked before it is
// opened to be a plain file with a recorded format). format may be "" (by
// dst's extension). progress, if not nil, gets 0…1 from qemu-img's progress output, called from another
// goroutine but never concurrently. On failure or cancellation nothing is
// left. A src a running QEMU writes to is ErrInUse (by its image lock).
func (p *Pool) Copy(ctx context.Context, src, dst, format string, progress func(float64)) (Volume, error) {
	vol, err := p.copy(ctx, src, dst, format, progress)
	if err != nil {
		return Volume{}, fmt.Errorf("copy volume %s to %s: %w", src, dst, err)
	}
	return vol, nil
}

func (p *Pool) copy(ctx context.Context, src, dst, format string, progress func(float64)) (Volume, error) {
	s, err := p.volume(src, "")
	if err != nil {
		return Volume{}, err
	}
	d, err := p.volume(dst, format)
	if err != nil {
		return Volume{}, err
	}
	unlock, err := volumeLocks.lock(ctx, []string{s.real}, []string{d.real})
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	if err := s.mustExist(); err != nil {
		return Volume{}, err
	}
	if err := d.mustNotExist(); err != nil {
		return Volume{}, err
	}
	root, err := p.root()
	if err != nil {
		return Volume{}, err
	}
	if _, err := walkChain(ctx, s.real, s.format, root, nil); err != nil {
		return Volume{}, err
	}
	vol, err := p.build(ctx, d, func(tmp string) error {
		return convert(ctx, s.real, s.format, tmp, d.format, "", progress)
	})
	if err == nil && progress != nil {
		progress(1)
	}
	return vol, err
}

// Flatten makes a volume standalone: its chain (inside the pool, as
// Copy's) is converted into a new file that replaces it (same format and
// cluster size, same content).
// Volumes built on it keep working. Offline only: the caller makes sure no
// VM uses it (a local QEMU's image lock is still reported as ErrInUse).
func (p *Pool) Flatten(ctx context.Context, name string, progress func(float64)) error {
	if err := p.flatten(ctx, name, progress); err != nil {
		return fmt.Errorf("flatten volume %s: %w", name, err)
	}
	return nil
}

func (p *Pool) flatten(ctx context.Context, name string, progress func(float64)) error {
	v, err := p.volume(name, "")
	if err != nil {
		return err
	}
	unlock, err := v.lock(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	root, err := p.root()
	if err != nil {
		return err
	}
	links, err := walkChain(ctx, v.real, v.format, root, nil)
	if err != nil {
		return err
	}
	if len(links) > 1 {
		opts := ""
		if cs := links[0].info.ClusterSize; v.format == "qcow2" && cs > 0 {
			opts = "cluster_size=" + strconv.FormatInt(cs, 10)
		}
		tmp := v.tmp()
		if err := removeStale(tmp); err != nil {
			return err
		}
		if err := convert(ctx, v.real, v.format, tmp, v.format, opts, progress); err != nil {
			_ = os.Remove(tmp)
			return err
		}
		if st, err := os.Stat(v.real); err == nil { // keep a read-only template read-only
			err = os.Chmod(tmp, st.Mode().Perm())
			if err != nil {
				_ = os.Remove(tmp)
				return err
			}
		}
		if err := publish(tmp, v.real, true); err != nil {
			_ = os.Remove(tmp)
			return err
		}
	}
	if progress != nil {
		progress(1)
	}
	return nil
}

// convert runs qemu-img convert from src to dst, both with explicit formats.
func convert(ctx context.Context, src, srcFormat, dst, dstFormat, opts string, progress func(float64)) error {
	args := []string{"convert"}
	var out io.Writer = io.Discard
	if progress != nil {
		args = append(args, "-p")
		out = img.ProgressWriter(progress, 1)
	}
	args = append(args, "-f", srcFormat, "-O", dstFormat)
	if opts != "" {
		args = append(args, "-o", opts)
	}
	args = append(args, src, dst)
	_, err := runQemuImg(ctx, out, args...)
	return err
}

// Resize grows a volume to newSize bytes (a multiple of 512) with
// qemu-img resize. Shrinking is refused (ErrInvalid); the same size is a
// no-op. Offline only: a local QEMU's image lock is reported as ErrInUse.
func (p *Pool) Resize(ctx context.Context, name string, newSize int64) error {
	if err := p.resize(ctx, name, newSize); err != nil {
		return fmt.Errorf("resize volume %s: %w", name, err)
	}
	return nil
}

func (p *Pool) resize(ctx context.Context, name string, newSize int64) error {
	v, err := p.volume(name, "")
	if err != nil {
		return err
	}
	if newSize <= 0 || newSize%512 != 0 {
		return fmt.Errorf("size %d: want a positive multiple of 512 bytes: %w", newSize, ErrInvalid)
	}
	unlock, err := v.lock(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	root, err := p.root()
	if err != nil {
		return err
	}
	links, err := walkChain(ctx, v.real, v.format, root, nil) // qemu-img resize opens the chain
	if err != nil {
		return err
	}
	info := links[0].info
	switch {
	case newSize < info.VirtualSize:
		return fmt.Errorf("new size %d bytes is smaller than the current %d bytes; shrinking is not supported: %w", newSize, info.VirtualSize, ErrInvalid)
	case newSize == info.VirtualSize:
		return nil
	}
	if _, err := qemuImg(ctx, "resize", "-q", "-f", v.format, v.real, strconv.FormatInt(newSize, 10)); err != nil {
		return err
	}
	return syncFile(v.real)
}

// DeleteVolume removes a volume. A volume other volumes of the pool are
// built on (their backing chain includes it) is ErrInUse; the caller
// separately refuses volumes attached to VMs.
func (p *Pool) DeleteVolume(ctx context.Context, name string) error {
	if err := p.deleteVolume(ctx, name); err != nil {
		return fmt.Errorf("delete volume %s: %w", name, err)
	}
	return nil
}

func (p *Pool) deleteVolume(ctx context.Context, name string) error {
	v, err := p.volume(name, "")
	if err != nil {
		return err
	}
	unlock, err := v.lock(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	deps, err := p.dependents(ctx, v.real)
	if err != nil {
		return err
	}
	if len(deps) > 0 {
		shown := deps[:min(len(deps), 5)]
		more := ""
		if len(deps) > len(shown) {
			more = fmt.Sprintf(" and %d more", len(deps)-len(shown))
		}
		return fmt.Errorf("%d volumes are built on it (%s%s): %w", len(deps), strings.Join(shown, ", "), more, ErrInUse)
	}
	if err := os.Remove(v.real); err != nil {
		return err
	}
	return syncDir(filepath.Dir(v.real))
}

// Dependents lists the volumes whose backing chain includes name (its
// reference count as a template), sorted. It reads the backing file names
// from the qcow2 headers, not through qemu-img, so it stays fast on big pools.
func (p *Pool) Dependents(ctx context.Context, name string) ([]string, error) {
	v, err := p.volume(name, "")
	if err != nil {
		return nil, fmt.Errorf("dependents of volume %s: %w", name, err)
	}
	if err := v.mustExist(); err != nil {
		return nil, fmt.Errorf("dependents of volume %s: %w", name, err)
	}
	deps, err := p.dependents(ctx, v.real)
	if err != nil {
		return nil, fmt.Errorf("dependents of volume %s: %w", name, err)
	}
	return deps, nil
}

func (p *Pool) dependents(ctx context.Context, target string) ([]string, error) {
	root, err := p.root()
	if err != nil {
		return nil, err
	}
	files, err := p.walkVolumes(ctx, root)
	if err != nil {
		return nil, err
	}
	raw := map[string]bool{}
	for _, f := range files {
		if f.format == "raw" {
			raw[f.real] = true
		}
	}
	// backingOf is the file a pool file's header names as its backing file
	// ("" if none or not a plain file). Files that are not volumes (odd
	// names in a chain) are read as qcow2 if they look like it: for a
	// reference count, too many edges are safer than too few.
	edges := map[string]string{}
	backingOf := func(path string) (string, error) {
		if b, ok := edges[path]; ok {
			return b, nil
		}
		b := ""
		if !raw[path] {
			name, err := qcow2Backing(path)
			switch {
			case errors.Is(err, errNotQcow2), errors.Is(err, fs.ErrNotExist):
			case err != nil:
				return "", err
			case name != "":
				if next, err := resolveRef(filepath.Dir(path), name, ""); err == nil {
					b = next
				}
			}
		}
		edges[path] = b
		return b, nil
	}
	var deps []string
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		cur := f.real
		for range maxWalk {
			next, err := backingOf(cur)
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", f.name, err)
			}
			if next == "" || !within(root, next) || next == f.real {
				break
			}
			if next == target {
				deps = append(deps, f.name)
				break
			}
			cur = next
		}
	}
	return deps, nil
}

// CheckChain verifies that every file of the volume's backing chain (and
// any qcow2 data file) resolves, after symlinks, inside the pool
// (ErrOutsidePool otherwise), is a plain file named without a protocol, and
// records its format. Each backing file is checked before it is opened.
func (p *Pool) CheckChain(ctx context.Context, name string) error {
	v, err := p.volume(name, "")
	if err != nil {
		return fmt.Errorf("check chain of volume %s: %w", name, err)
	}
	if err := v.mustExist(); err != nil {
		return fmt.Errorf("check chain of volume %s: %w", name, err)
	}
	root, err := p.root()
	if err != nil {
		return err
	}
	if _, err := walkChain(ctx, v.real, v.format, root, nil); err != nil {
		return fmt.Errorf("check chain of volume %s: %w", name, err)
	}
	return nil
}
