package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "hangar/api/v1"
)

func TestResolveRefusesEscapes(t *testing.T) {
	t.Parallel()
	p, err := OpenDirPool("t", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(p.Path, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "nothing-yet"), filepath.Join(p.Path, "dangling")); err != nil {
		t.Fatal(err)
	}
	for _, elem := range [][]string{{".."}, {"vms", "..", ".."}, {"/etc/passwd"}, {"link", "x"}, {""},
		{"link", "new", "deeper", "x.qcow2"}, {"dangling"}, {"dangling", "x"}, {"a\x00b"}} {
		if _, err := p.Resolve(elem...); !errors.Is(err, ErrOutsidePool) {
			t.Errorf("Resolve(%q) = %v, want ErrOutsidePool", elem, err)
		}
	}
	if got, err := p.Resolve("vms", "a", "disk0.qcow2"); err != nil || got != filepath.Join(p.Path, "vms/a/disk0.qcow2") {
		t.Errorf("Resolve inside = %q, %v", got, err)
	}
	// A symlink that stays inside is fine.
	if err := os.Symlink("vms", filepath.Join(p.Path, "alias")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Resolve("alias", "x.qcow2"); err != nil {
		t.Errorf("Resolve through inner symlink: %v", err)
	}
}

func TestOpenPool(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "a", "b")
	p, err := OpenDirPool("d", dir)
	if err != nil || p.Type != TypeDir || p.Path != dir {
		t.Fatalf("OpenDirPool = %+v, %v", p, err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("dir pool not created: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "not-mounted")
	if _, err := OpenPool("s", TypeShared, missing); err == nil {
		t.Fatal("shared pool on a missing directory opened")
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("shared pool directory was created: %v", err)
	}
	if p, err := OpenPool("s", TypeShared, dir); err != nil || p.Type != TypeShared {
		t.Fatalf("OpenPool shared = %+v, %v", p, err)
	}
	if _, err := OpenPool("x", "lvm", dir); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown type: %v", err)
	}
	if _, err := OpenPool("", TypeDir, dir); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty name: %v", err)
	}
}

func needQemuImg(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (apt-get install qemu-utils): skipping real-disk test")
	}
}

func TestCreateDiskEmptyAndOverlay(t *testing.T) {
	t.Parallel()
	needQemuImg(t)
	ctx := context.Background()
	p, err := OpenDirPool("t", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.CreateDisk(ctx, "vm1", v1.Disk{Name: "disk0", SizeMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	info, err := Info(ctx, st.Path)
	if err != nil || info.Format != "qcow2" || info.VirtualSize != 64<<20 {
		t.Fatalf("info %+v, %v", info, err)
	}
	// Idempotent.
	if _, err := p.CreateDisk(ctx, "vm1", v1.Disk{Name: "disk0", SizeMiB: 64}); err != nil {
		t.Fatal(err)
	}
	ov, err := p.CreateDisk(ctx, "vm1", v1.Disk{Name: "disk1", Image: st.Path})
	if err != nil {
		t.Fatal(err)
	}
	info, err = Info(ctx, ov.Path)
	if err != nil || info.BackingFilename != "disk0.qcow2" || info.FullBacking != st.Path || info.BackingFormat != "qcow2" || info.VirtualSize != 64<<20 {
		t.Fatalf("overlay info %+v, %v", info, err)
	}
	// What CreateDisk remembers of the files it wrote is what qemu-img says.
	for _, d := range []v1.DiskStatus{st, ov} {
		mine, ok := infos.get(d.Path, "qcow2")
		theirs, err := runImageInfo(ctx, d.Path, "qcow2", true)
		if !ok || err != nil || mine != theirs {
			t.Fatalf("%s: remembered %+v (%v), qemu-img says %+v (%v)", d.Name, mine, ok, theirs, err)
		}
	}
	// An image outside the pool is brought in once; overlays stay inside.
	outside := filepath.Join(t.TempDir(), "base image.qcow2")
	if _, err := qemuImg(ctx, "create", "-q", "-f", "qcow2", outside, "32M"); err != nil {
		t.Fatal(err)
	}
	o1, err := p.CreateDisk(ctx, "vm1", v1.Disk{Name: "disk3", Image: outside})
	if err != nil {
		t.Fatal(err)
	}
	o2, err := p.CreateDisk(ctx, "vm2", v1.Disk{Name: "disk0", Image: outside})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(o1.Backing, "images/base-image-") || o1.Backing != o2.Backing {
		t.Fatalf("adopted backings %q and %q", o1.Backing, o2.Backing)
	}
	for _, o := range []v1.DiskStatus{o1, o2} {
		rel, _ := filepath.Rel(p.Path, o.Path)
		if err := p.CheckChain(ctx, rel); err != nil {
			t.Fatalf("chain of %s leaves the pool: %v", rel, err)
		}
	}
	adopted := filepath.Join(p.Path, o1.Backing)
	if err := p.DeleteVM("vm2", []v1.DiskStatus{o2}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(adopted); err != nil {
		t.Fatalf("brought-in image removed while vm1 still builds on it: %v", err)
	}
	// An uploaded image is never released, even when unused.
	if _, err := p.CreateVolume(ctx, "images/mine.qcow2", "", 1<<20); err != nil {
		t.Fatal(err)
	}
	if removed, err := p.ReleaseImage(ctx, "images/mine.qcow2"); removed || err != nil {
		t.Fatalf("ReleaseImage(uploaded) = %v, %v", removed, err)
	}
	if _, err := p.CreateDisk(ctx, "vm1", v1.Disk{Name: "disk2", Image: "/nonexistent.qcow2"}); !errors.Is(err, ErrNoImage) {
		t.Fatalf("missing image: %v", err)
	}
	if _, err := os.Stat(filepath.Join(p.Path, "vms/vm1/disk2.qcow2.part")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial file left behind: %v", err)
	}
	if err := p.DeleteVM("vm1", []v1.DiskStatus{st, ov, o1}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p.Path, "vms/vm1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm dir left behind: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(p.Path, "images", "*"))
	hidden, _ := filepath.Glob(filepath.Join(p.Path, "images", ".*"))
	if want := []string{filepath.Join(p.Path, "images/mine.qcow2")}; len(hidden) != 0 || fmt.Sprint(left) != fmt.Sprint(want) {
		t.Fatalf("after the last vm on it was deleted, images/ holds %v %v; want %v", left, hidden, want)
	}
}

func TestInfoNeverProbesByName(t *testing.T) {
	t.Parallel()
	needQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	// A qcow2 under a .raw name is read as raw, and a file named .qcow2
	// that is not one is not an image.
	q := filepath.Join(dir, "disguised.raw")
	qemuImgT(t, "create", "-q", "-f", "qcow2", q, "1M")
	if info, err := Info(ctx, q); err != nil || info.Format != "raw" {
		t.Fatalf("Info(qcow2 named .raw) = %+v, %v", info, err)
	}
	bad := filepath.Join(dir, "text.qcow2")
	if err := os.WriteFile(bad, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Info(ctx, bad); !errors.Is(err, ErrNoImage) {
		t.Fatalf("Info(text named .qcow2) = %v, want ErrNoImage", err)
	}
	// Other names: the qcow2 magic decides.
	img := filepath.Join(dir, "cloud.img")
	qemuImgT(t, "create", "-q", "-f", "qcow2", img, "1M")
	if info, err := Info(ctx, img); err != nil || info.Format != "qcow2" {
		t.Fatalf("Info(qcow2 named .img) = %+v, %v", info, err)
	}
}

// TestAdoptImageConcurrently: many disks made at once from one image
// outside the pool bring it in once, and every one of them succeeds.
func TestAdoptImageConcurrently(t *testing.T) {
	t.Parallel()
	needQemuImg(t)
	ctx := context.Background()
	p, err := OpenDirPool("t", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "base.qcow2")
	if _, err := qemuImg(ctx, "create", "-q", "-f", "qcow2", outside, "16M"); err != nil {
		t.Fatal(err)
	}
	const n = 8
	errs := make(chan error, n)
	backings := make(chan string, n)
	for i := 0; i < n; i++ {
		go func() {
			st, err := p.CreateDisk(ctx, fmt.Sprintf("vm%d", i), v1.Disk{Name: "disk0", Image: outside})
			errs <- err
			backings <- st.Backing
		}()
	}
	first := ""
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent create from one image: %v", err)
		}
		b := <-backings
		if first == "" {
			first = b
		}
		if b != first {
			t.Fatalf("backings %q and %q: the image was brought in twice", first, b)
		}
	}
}
