package imports

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"hangar/internal/qemu/img"
)

// convertFlags are extra qemu-img convert options. Measured with
// BenchmarkConvertFlags (256 MiB of mixed data as VMDK, 2 cores): -W, -m 16
// and -t none made no difference beyond noise (±5%) for monolithicSparse and
// none for streamOptimized, which is bound by zlib inflating in qemu-img's
// single I/O thread; -t none was slower. So qemu-img's defaults stay (-m 8,
// in-order writes, which also keep the qcow2 clusters sequential).
var convertFlags []string

// targetOptions is the qcow2 layout of every imported volume.
const targetOptions = "cluster_size=65536"

// Convert writes src as a qcow2 at dst (dst.part first, renamed when
// complete; removed on any failure or ctx cancel), reporting progress 0..1.
// The source's headers are checked again before qemu-img opens it. A Source
// with neither Path nor Format is a blank disk of VirtualSize bytes.
func Convert(ctx context.Context, src Source, dst string, progress func(float64)) error {
	if progress == nil {
		progress = func(float64) {}
	}
	if err := convert(ctx, src, dst, progress); err != nil {
		return fmt.Errorf("import %s (%s) to %s: %w", src.Name, src.Path, dst, err)
	}
	return nil
}

func convert(ctx context.Context, src Source, dst string, progress func(float64)) (err error) {
	dst, err = filepath.Abs(dst)
	if err != nil {
		return err
	}
	part := dst + ".part"
	if err := removeIfExists(part); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if rerr := removeIfExists(part); rerr != nil {
				slog.WarnContext(ctx, "import: cannot remove partial volume", "path", part, "err", rerr)
			}
		}
	}()
	start := time.Now()
	if src.Path == "" && src.Format == "" {
		err = createBlank(ctx, src, part)
	} else {
		err = convertImage(ctx, src, part, progress)
	}
	if err != nil {
		return err
	}
	if err := commit(part, dst); err != nil {
		return err
	}
	slog.InfoContext(ctx, "import: volume written", "src", src.Path, "format", src.Format, "dst", dst,
		"duration", time.Since(start).Round(time.Millisecond))
	progress(1)
	return nil
}

func createBlank(ctx context.Context, src Source, part string) error {
	if src.VirtualSize <= 0 || src.VirtualSize%512 != 0 {
		return malformed("blank disk of %d bytes", src.VirtualSize)
	}
	_, err := runQemuImg(ctx, "create", "-q", "-f", "qcow2", "-o", targetOptions, part, strconv.FormatInt(src.VirtualSize, 10))
	return err
}

// convertImage checks src and runs qemu-img convert into part; a delta
// disk's chain is flattened into it, base first.
func convertImage(ctx context.Context, src Source, part string, progress func(float64)) error {
	if err := checkSource(src); err != nil {
		return err
	}
	chain := src.chain()
	for i := len(chain) - 1; i >= 0; i-- {
		// each disk of the chain gets an equal share of the progress
		done, share := float64(len(chain)-1-i)/float64(len(chain)), 1/float64(len(chain))
		step := func(v float64) { progress(done + v*share) }
		if err := convertLink(ctx, chain[i], part, i == len(chain)-1, step); err != nil {
			return err
		}
	}
	return nil
}

// convertLink converts one disk of a chain into part: the first (base)
// one, or a delta over what part holds. A chunked or compressed file, or
// the extents of a descriptor inside an archive, are written out beside
// part first (half the progress) and removed after.
func convertLink(ctx context.Context, src Source, part string, first bool, progress func(float64)) (err error) {
	var write func(context.Context, Source, string, func(float64)) (Source, error)
	var path string
	switch {
	case len(src.Extents) > 0: // a descriptor's extents inside an archive
		write, path = stageExtents, part+".src.d"
	case src.encoded() && !src.joinable():
		write, path = stage, part+".src"
	}
	if write != nil {
		if err := os.RemoveAll(path); err != nil {
			return err
		}
		defer func() {
			if rerr := os.RemoveAll(path); rerr != nil && err == nil {
				err = rerr
			}
		}()
		whole := progress
		if src, err = write(ctx, src, path, func(v float64) { whole(v / 2) }); err != nil {
			return err
		}
		progress = func(v float64) { whole(0.5 + v/2) }
	}
	if first {
		return convertOne(ctx, src, part, progress)
	}
	return applyDelta(ctx, src, part, progress)
}

// chain is src, its base, its base's base…
func (src Source) chain() []Source {
	var c []Source
	for s := &src; s != nil; s = s.Base {
		c = append(c, *s)
	}
	return c
}

// convertOne converts src into part; the ranges of a joinable source
// (a descriptor's FLAT extents) are qemu-img's several sources, which it
// writes one after the other.
func convertOne(ctx context.Context, src Source, part string, progress func(float64)) error {
	var specs []string
	for _, c := range src.parts() {
		one := src
		one.Path, one.Offset, one.Size, one.Chunks = c.Path, c.Offset, c.Size, nil
		spec, err := blockdevSpec(one)
		if err != nil {
			return err
		}
		specs = append(specs, spec)
	}
	return runConvert(ctx, convertArgs(src.Format, specs, part), progress)
}

// joinable reports whether qemu-img reads src's ranges joined itself: raw
// ranges of whole sectors.
func (src Source) joinable() bool {
	if src.Format != "raw" || src.Compression != "" {
		return false
	}
	for _, c := range src.parts() {
		if c.Size%512 != 0 {
			return false
		}
	}
	return true
}

// convertArgs is the qemu-img convert of specs (format, joined) into the
// qcow2 out; extra options go before the file names.
func convertArgs(format string, specs []string, out string, extra ...string) []string {
	args := append([]string{"convert", "-p", "-f", format, "-O", "qcow2", "-o", targetOptions}, extra...)
	return append(append(append(args, convertFlags...), specs...), out)
}

// applyDelta writes the blocks the delta disk src holds over part, which
// holds its base flattened, and sizes part as src. The delta is read with
// part as its backing, which qemu-img never reads through it (-B: blocks the
// delta does not hold are left to the backing; a VMDK delta would check its
// parentCID against a backing it reads), so only its own blocks land in an
// overlay of part, then committed into part.
func applyDelta(ctx context.Context, src Source, part string, progress func(float64)) (err error) {
	size, err := virtualSize(ctx, src, true)
	if err != nil {
		return err
	}
	if err := resize(ctx, part, size); err != nil {
		return err
	}
	// file.filename named: qemu takes this backing, never the file the
	// delta names (parentFileNameHint)
	spec, err := blockdevSpecBacking(src, map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "file", "filename": part}})
	if err != nil {
		return err
	}
	delta := part + ".delta"
	if err := removeIfExists(delta); err != nil {
		return err
	}
	defer func() {
		if rerr := removeIfExists(delta); rerr != nil && err == nil {
			err = rerr
		}
	}()
	if err := runConvert(ctx, convertArgs(src.Format, []string{spec}, delta, "-B", part, "-F", "qcow2"), func(v float64) { progress(v * 0.9) }); err != nil {
		return err
	}
	if _, err := runQemuImg(ctx, "commit", "-q", "-f", "qcow2", delta); err != nil {
		return err
	}
	progress(0.99)
	return nil
}

// resize makes the qcow2 at path size bytes long (a delta may be larger or
// smaller than its base).
func resize(ctx context.Context, path string, size int64) error {
	out, err := runQemuImg(ctx, "info", "--output=json", "-f", "qcow2", path)
	if err != nil {
		return err
	}
	var info qemuInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return fmt.Errorf("qemu-img info: %w", err)
	}
	if info.VirtualSize == size {
		return nil
	}
	_, err = runQemuImg(ctx, "resize", "-q", "-f", "qcow2", "--shrink", path, strconv.FormatInt(size, 10))
	return err
}

// checkSource repeats the header checks on what a Source names, so that a
// Source not produced by Inspect is no more trusted than a file.
func checkSource(src Source) error {
	chain := src.chain()
	if len(chain) > maxChain {
		return malformed("a chain of %d delta disks, more than %d", len(chain), maxChain)
	}
	for i, s := range chain {
		if i < len(chain)-1 && !deltaFormats[s.Format] {
			return malformed("%s: a %s disk cannot be a delta (only VMDK and qcow2 hold unallocated blocks)", s.Name, s.Format)
		}
		if err := checkOneSource(s); err != nil {
			return err
		}
	}
	return nil
}

// deltaFormats are the formats a delta disk may have: their unallocated
// blocks are the base's.
var deltaFormats = map[string]bool{"vmdk": true, "qcow2": true}

func checkOneSource(src Source) error {
	if !formats[src.Format] {
		return malformed("unknown format %q", src.Format)
	}
	if src.encoded() { // its headers are checked once it is decoded (stage)
		return checkEncoded(src, filepath.Base(src.Path))
	}
	if len(src.Extents) > 0 { // checked once written out (stageExtents)
		return checkExtentRanges(src)
	}
	if !filepath.IsAbs(src.Path) || src.Offset < 0 || src.Size < 0 {
		return malformed("source %q at %d+%d: want an absolute path and a valid range", src.Path, src.Offset, src.Size)
	}
	f, err := os.Open(src.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0 {
		if src.Format != "raw" || src.Offset != 0 || src.Size != 0 {
			return malformed("a block device is imported whole, as raw")
		}
		return nil
	}
	if !fi.Mode().IsRegular() {
		return malformed("%s is not a regular file", src.Path)
	}
	im := image{r: f, size: fi.Size(), name: filepath.Base(src.Path), delta: src.Base != nil}
	dir := filepath.Dir(src.Path)
	if src.Offset != 0 || src.Size != 0 {
		if err := im.need(src.Offset, src.Size); err != nil {
			return err
		}
		im, dir = image{r: io.NewSectionReader(f, src.Offset, src.Size), size: src.Size, name: im.name, delta: im.delta}, ""
	}
	if im.size == 0 {
		return malformed("%s: empty", im.name)
	}
	return checkDisk(im, src.Format, dir)
}

// runConvert runs qemu-img convert -p, turning its "(12.34/100%)" lines
// into increasing progress values below 1.
func runConvert(ctx context.Context, args []string, progress func(float64)) error {
	cmd := exec.CommandContext(ctx, qemuImg, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu-img convert: %w", err)
	}
	_, _ = io.Copy(img.ProgressWriter(progress, 0.99), stdout) // 1 means the volume is in place
	err = cmd.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) && strings.Contains(stderr.String(), "error while reading"):
		// A source whose headers passed the checks but whose data does
		// not decode (a corrupt compressed grain…).
		return malformed("qemu-img convert: %s", lastLine(stderr.String()))
	case errors.As(err, &exit):
		return &qemuImgError{op: "convert", msg: lastLine(stderr.String())}
	case err != nil:
		return fmt.Errorf("qemu-img convert: %w", err)
	}
	return nil
}

// commit makes part durable and moves it to dst.
func commit(part, dst string) error {
	f, err := os.Open(part)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", part, err)
	}
	if err := os.Rename(part, dst); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Check runs the header checks Convert will run on src (format, range,
// file type, headers, tables, VMDK extents inside the source's directory)
// without qemu-img, so that an API can refuse a bad source before it
// accepts the work.
func Check(src Source) error {
	if err := checkSource(src); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = malformed("%s: %v", src.Path, err)
		}
		return fmt.Errorf("import %s: %w", src.Path, err)
	}
	return nil
}
