package agent

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/qemu/config"
	"hangar/internal/storage"
	"hangar/internal/store"
)

func statOwner(t *testing.T, p string) (uid, gid int, mode os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid), fi.Mode().Perm()
}

// TestSandboxOwnership: before a start, the VM's own files become its
// uid's, a shared base gets a group the VM holds, a host ISO becomes an
// inherited descriptor, a chain file outside every pool is refused, and a
// deleted volume's group is released.
func TestSandboxOwnership(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing owners needs root")
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	ta := startAgent(t)
	a, ctx := ta.a, t.Context()
	pool := a.cfg.Pool
	img := "images/base.qcow2"
	if _, err := pool.CreateVolume(ctx, img, "qcow2", 16<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.CreateOverlay(ctx, "vms/vm1/disk0.qcow2", img); err != nil {
		t.Fatal(err)
	}
	disk, _ := pool.Resolve("vms/vm1/disk0.qcow2")
	base, _ := pool.Resolve(img)
	iso := filepath.Join(ta.base, "tools.iso")
	if err := os.WriteFile(iso, []byte("iso"), 0o600); err != nil {
		t.Fatal(err)
	}
	logDir, _ := a.logDir("vm1")
	if err := ensureDir(logDir); err != nil {
		t.Fatal(err)
	}
	spec := v1.VMSpec{Name: "vm1", Disks: []v1.Disk{{Name: "disk0"}, {Name: "cd0", Media: "cdrom", Image: iso}}}
	files := []config.DiskFile{{Path: disk, Format: "qcow2"}, {Path: iso, Format: "raw"}}
	m := &machine{a: a, name: "vm1", log: a.cfg.Log}
	sb, err := m.sandbox(ctx, spec, files, logDir)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(sb.Files)
	r := a.idRange()
	if !r.Contains(sb.UID) || sb.GID != sb.UID {
		t.Fatalf("uid %d gid %d, want one id of %s", sb.UID, sb.GID, r)
	}
	if u, g, mode := statOwner(t, disk); u != sb.UID || g != sb.UID || mode != 0o600 {
		t.Errorf("disk: %d:%d %v, want %d:%d 0600", u, g, mode, sb.UID, sb.UID)
	}
	if u, g, mode := statOwner(t, filepath.Dir(disk)); u != 0 || g != sb.UID || mode != 0o710 {
		t.Errorf("vm dir: %d:%d %v, want 0:%d 0710", u, g, mode, sb.UID)
	}
	if u, g, mode := statOwner(t, filepath.Join(logDir, config.SerialLog)); u != sb.UID || mode != 0o600 {
		t.Errorf("serial log: %d:%d %v", u, g, mode)
	}
	_, bg, bmode := statOwner(t, base)
	if len(sb.Groups) != 1 || sb.Groups[0] != bg || !r.Contains(bg) || bmode != 0o640 {
		t.Errorf("base: group %d mode %v, qemu groups %v: want the base's own group, 0640", bg, bmode, sb.Groups)
	}
	if files[1].FD != 3 || len(sb.Files) != 1 {
		t.Errorf("cdrom: fd %d, %d files, want fd 3", files[1].FD, len(sb.Files))
	}
	if u, _, mode := statOwner(t, iso); u != 0 || mode != 0o600 {
		t.Errorf("the host iso was changed: %d %v", u, mode)
	}
	// The same VM again: the same uid and group.
	sb2, err := m.sandbox(ctx, spec, files, logDir)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(sb2.Files)
	if sb2.UID != sb.UID || len(sb2.Groups) != 1 || sb2.Groups[0] != bg {
		t.Errorf("second start: uid %d groups %v, want %d %v", sb2.UID, sb2.Groups, sb.UID, sb.Groups)
	}

	// A disk chain that leaves the pools is refused.
	outside := filepath.Join(ta.base, "outside.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", outside, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	bad := []config.DiskFile{{Path: outside, Format: "qcow2"}}
	if _, err := m.sandbox(ctx, v1.VMSpec{Name: "vm1", Disks: []v1.Disk{{Name: "disk0"}}}, bad, logDir); !errors.Is(err, storage.ErrOutsidePool) {
		t.Errorf("a disk outside the pools: %v, want ErrOutsidePool", err)
	}
	if u, _, _ := statOwner(t, outside); u != 0 {
		t.Errorf("the outside file was given to uid %d", u)
	}

	// Deleting the image (no VM uses it in the store) releases its group.
	if err := pool.DeleteVolume(ctx, "vms/vm1/disk0.qcow2"); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteVolume(ctx, "local-testhost", img); err != nil {
		t.Fatal(err)
	}
	o := inventory.IDOwner{Kind: inventory.IDKindFile, Name: "local-testhost/" + img}
	if _, _, err := a.inv.IDOf(ctx, r, o); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("group of the deleted image: %v, want released", err)
	}
}
