package storage

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "hangar/api/v1"
)

func TestResolveRefusesEscapes(t *testing.T) {
	p, err := OpenDirPool("t", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(p.Path, "link")); err != nil {
		t.Fatal(err)
	}
	for _, elem := range [][]string{{".."}, {"vms", "..", ".."}, {"/etc/passwd"}, {"link", "x"}, {""}} {
		if _, err := p.Resolve(elem...); !errors.Is(err, ErrOutsidePool) {
			t.Errorf("Resolve(%q) = %v, want ErrOutsidePool", elem, err)
		}
	}
	if got, err := p.Resolve("vms", "a", "disk0.qcow2"); err != nil || got != filepath.Join(p.Path, "vms/a/disk0.qcow2") {
		t.Errorf("Resolve inside = %q, %v", got, err)
	}
}

func needQemuImg(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (apt-get install qemu-utils): skipping real-disk test")
	}
}

func TestCreateDiskEmptyAndOverlay(t *testing.T) {
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
	if err != nil || info.BackingFilename != st.Path || info.VirtualSize != 64<<20 {
		t.Fatalf("overlay info %+v, %v", info, err)
	}
	if _, err := p.CreateDisk(ctx, "vm1", v1.Disk{Name: "disk2", Image: "/nonexistent.qcow2"}); !errors.Is(err, ErrNoImage) {
		t.Fatalf("missing image: %v", err)
	}
	if _, err := os.Stat(filepath.Join(p.Path, "vms/vm1/disk2.qcow2.part")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial file left behind: %v", err)
	}
	if err := p.DeleteVM("vm1", []v1.DiskStatus{st, ov}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p.Path, "vms/vm1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm dir left behind: %v", err)
	}
}
