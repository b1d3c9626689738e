// Package storage manages storage pools and the volumes in them with
// qemu-img. Every path it builds stays inside its pool.
package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "hangar/api/v1"
)

// ErrOutsidePool is returned for a path that would leave its pool.
var ErrOutsidePool = errors.New("path escapes the storage pool")

// ErrNoImage is returned when an image file does not exist or is not a disk image.
var ErrNoImage = errors.New("no such image")

// Pool is a directory storage pool.
type Pool struct {
	Name string
	Path string // absolute, cleaned
}

// OpenDirPool opens (creating if needed) a directory pool.
func OpenDirPool(name, path string) (*Pool, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("pool %s: create %s: %w", name, abs, err)
	}
	return &Pool{Name: name, Path: filepath.Clean(abs)}, nil
}

// Resolve joins the relative path elements under the pool and refuses any
// result outside it (.., absolute elements, symlinks leading out).
func (p *Pool) Resolve(elem ...string) (string, error) {
	for _, e := range elem {
		if e == "" || filepath.IsAbs(e) || strings.ContainsRune(e, 0) {
			return "", fmt.Errorf("pool %s: %q: %w", p.Name, e, ErrOutsidePool)
		}
	}
	full := filepath.Join(append([]string{p.Path}, elem...)...)
	if !within(p.Path, full) {
		return "", fmt.Errorf("pool %s: %q: %w", p.Name, filepath.Join(elem...), ErrOutsidePool)
	}
	// Follow symlinks of the part that exists.
	if real, err := filepath.EvalSymlinks(filepath.Dir(full)); err == nil {
		root, _ := filepath.EvalSymlinks(p.Path)
		if !within(root, filepath.Join(real, filepath.Base(full))) {
			return "", fmt.Errorf("pool %s: %q: %w", p.Name, filepath.Join(elem...), ErrOutsidePool)
		}
	}
	return full, nil
}

func within(root, path string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
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
}

// Info runs qemu-img info (sharing the image with a running QEMU).
func Info(ctx context.Context, path string) (ImageInfo, error) {
	var info ImageInfo
	st, err := os.Stat(path)
	if err != nil {
		return info, fmt.Errorf("image %s: %w", path, ErrNoImage)
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		return info, fmt.Errorf("image %s: not a file: %w", path, ErrNoImage)
	}
	out, err := qemuImg(ctx, "info", "-U", "--output=json", path)
	if err != nil {
		return info, fmt.Errorf("image %s: %w", path, err)
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return info, fmt.Errorf("image %s: parse qemu-img info: %w", path, err)
	}
	return info, nil
}

// CreateDisk creates the volume of one VM disk: an empty qcow2 of SizeMiB,
// or a qcow2 overlay on Image. It is idempotent: an existing complete
// volume is returned as it is. The file appears under its final name only
// when complete.
func (p *Pool) CreateDisk(ctx context.Context, vmName string, d v1.Disk) (v1.DiskStatus, error) {
	dir, err := p.VMDir(vmName)
	if err != nil {
		return v1.DiskStatus{}, err
	}
	path, err := p.Resolve("vms", vmName, d.Name+".qcow2")
	if err != nil {
		return v1.DiskStatus{}, err
	}
	st := v1.DiskStatus{Name: d.Name, Path: path, Format: "qcow2", Created: true}
	if d.Image != "" {
		st.Backing = d.Image
	}
	if _, err := os.Stat(path); err == nil {
		return st, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return st, fmt.Errorf("create disk %s: %w", d.Name, err)
	}
	tmp := path + ".part"
	args := []string{"create", "-q", "-f", "qcow2"}
	size := ""
	if d.SizeMiB > 0 {
		size = fmt.Sprintf("%dM", d.SizeMiB)
	}
	if d.Image != "" {
		info, err := Info(ctx, d.Image)
		if err != nil {
			return st, fmt.Errorf("create disk %s: %w", d.Name, err)
		}
		if d.SizeMiB > 0 && d.SizeMiB<<20 < info.VirtualSize {
			return st, fmt.Errorf("create disk %s: size %d MiB is smaller than image %s (%d MiB)", d.Name, d.SizeMiB, d.Image, info.VirtualSize>>20)
		}
		args = append(args, "-b", d.Image, "-F", info.Format)
	}
	args = append(args, tmp)
	if size != "" {
		args = append(args, size)
	}
	if _, err := qemuImg(ctx, args...); err != nil {
		_ = os.Remove(tmp)
		return st, fmt.Errorf("create disk %s: %w", d.Name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return st, fmt.Errorf("create disk %s: %w", d.Name, err)
	}
	return st, nil
}

// DeleteVM removes the volumes Hangar created for a VM and its directory.
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
	return errors.Join(errs...)
}

func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("qemu-img %s: %s", args[0], msg)
	}
	return out, nil
}
