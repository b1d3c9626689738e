package imports

import (
	"bytes"
	"context"
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

// convertImage checks src and runs qemu-img convert into part.
func convertImage(ctx context.Context, src Source, part string, progress func(float64)) error {
	if err := checkSource(src); err != nil {
		return err
	}
	spec, err := blockdevSpec(src)
	if err != nil {
		return err
	}
	args := append([]string{"convert", "-p", "-f", src.Format, "-O", "qcow2", "-o", targetOptions}, convertFlags...)
	return runConvert(ctx, append(args, spec, part), progress)
}

// checkSource repeats the header checks on what a Source names, so that a
// Source not produced by Inspect is no more trusted than a file.
func checkSource(src Source) error {
	if !formats[src.Format] {
		return malformed("unknown format %q", src.Format)
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
	im := image{r: f, size: fi.Size(), name: filepath.Base(src.Path)}
	dir := filepath.Dir(src.Path)
	if src.Offset != 0 || src.Size != 0 {
		if err := im.need(src.Offset, src.Size); err != nil {
			return err
		}
		im, dir = image{r: io.NewSectionReader(f, src.Offset, src.Size), size: src.Size, name: im.name}, ""
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
