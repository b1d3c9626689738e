package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// TestSharedDisk: a raw volume is attached to two running VMs only when
// both attachments are shareable.
func TestSharedDisk(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	shared := filepath.Join(s.dataDir, "pools", "default", "shared")
	if err := os.MkdirAll(shared, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "raw", filepath.Join(shared, "quorum.raw"), "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	attach := func(share bool) func(*v1.VMSpec) {
		return func(sp *v1.VMSpec) {
			sp.Disks = append(sp.Disks, v1.Disk{Name: "quorum", Volume: "local-testhost/shared/quorum.raw", Shareable: share})
		}
	}
	s.createGuest("node1", attach(true))
	s.waitReady("node1", 0)
	// A second attachment that does not share is refused, naming the field.
	_, err := s.c.CreateVM(ctx, v1.VMSpec{Name: "node2", MemoryMiB: 256, Disks: []v1.Disk{{Image: guestImage}, {Name: "quorum", Volume: "local-testhost/shared/quorum.raw"}}}, true, 0)
	var e *v1.Error
	if !isCode(err, v1.CodeConflict) || !asAPI(err, &e) || e.Field != "disks[1].volume" {
		t.Fatalf("unshared second attach: %v", err)
	}
	// A qcow2 volume cannot be shared.
	_, err = s.c.CreateVM(ctx, v1.VMSpec{Name: "node3", MemoryMiB: 256, Disks: []v1.Disk{{Volume: "local-testhost/vms/node1/disk0.qcow2", Shareable: true}}}, false, 0)
	if !isCode(err, v1.CodeInvalidArgument) {
		t.Fatalf("shared qcow2: %v", err)
	}
	s.createGuest("node2", attach(true))
	s.waitReady("node2", 0)
	for _, n := range []string{"node1", "node2"} {
		s.waitState(n, 5*time.Second, v1.StateRunning)
	}
	// Deleting a VM leaves an attached volume alone.
	s.wait(s.c.DeleteVM(ctx, "node2", true, time.Minute))
	if _, err := os.Stat(filepath.Join(shared, "quorum.raw")); err != nil {
		t.Fatalf("shared volume removed with a vm: %v", err)
	}
}

// TestCDROMAndCloudInit: a VM with an ISO and a cloud-init seed boots; the
// seed holds the user-data; the medium is ejected and inserted while the VM
// runs (QEMU accepts the QMP changes) and stays across a restart. The test
// guest has no cdrom driver, so what the guest reads from the cdrom is not
// checked here.
func TestCDROMAndCloudInit(t *testing.T) {
	if _, err := exec.LookPath("genisoimage"); err != nil {
		t.Skip("genisoimage not installed (apt-get install genisoimage)")
	}
	s := newServer(t)
	ctx := context.Background()
	dir := s.importDir
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	iso := filepath.Join(dir, "tools.iso")
	if out, err := exec.Command("genisoimage", "-quiet", "-o", iso, "-V", "TOOLS", filepath.Join(dir, "hello.txt")).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	s.createGuest("cdvm", func(sp *v1.VMSpec) {
		sp.Disks = append(sp.Disks, v1.Disk{Name: "cd0", Media: "cdrom", Image: iso})
		sp.CloudInit = &v1.CloudInit{UserData: "#cloud-config\nhostname: cdvm\n"}
	})
	s.waitReady("cdvm", 0)
	v := s.waitState("cdvm", 5*time.Second, v1.StateRunning)
	seed := ""
	for _, d := range v.Status.Disks {
		if d.Name == "cidata" {
			seed = d.Path
		}
	}
	if b, err := os.ReadFile(seed); err != nil || !strings.Contains(string(b), "hostname: cdvm") {
		t.Fatalf("seed iso %q: %v (disks %+v, spec %+v)", seed, err, v.Status.Disks, v.Spec.Disks)
	}
	s.wait(s.c.ChangeMedia(ctx, "cdvm", "cd0", "", time.Minute))
	v, _ = s.c.VM(ctx, "cdvm")
	if v.Spec.Disks[1].Image != "" {
		t.Fatalf("spec still has a medium after eject: %+v", v.Spec.Disks[1])
	}
	s.wait(s.c.ChangeMedia(ctx, "cdvm", "cd0", iso, time.Minute))
	if _, err := s.c.ChangeMedia(ctx, "cdvm", "disk0", iso, 0); !isCode(err, v1.CodeInvalidArgument) {
		t.Fatalf("media on a disk: %v", err)
	}
	// A restart keeps the medium and the guest still boots.
	_, off := s.waitReady("cdvm", 0)
	s.action("cdvm", "stop", nil)
	s.action("cdvm", "start", nil)
	s.waitReady("cdvm", off)
}

func asAPI(err error, e **v1.Error) bool {
	var x *v1.Error
	ok := errors.As(err, &x)
	*e = x
	return ok
}

// TestBootFromISO: a VM boots from an ISO on its cdrom (ISOLINUX, as
// installers do) before its disk; the disk's own loader (extlinux) would
// have printed a "SYSLINUX 6…" banner instead.
func TestBootFromISO(t *testing.T) {
	for _, f := range []string{"/usr/lib/ISOLINUX/isolinux.bin", "/usr/lib/syslinux/modules/bios/ldlinux.c32"} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("%s missing (apt-get install isolinux syslinux-common)", f)
		}
	}
	if _, err := exec.LookPath("genisoimage"); err != nil {
		t.Skip("genisoimage not installed")
	}
	s := newServer(t)
	dir := filepath.Join(t.TempDir(), "iso")
	if err := os.MkdirAll(filepath.Join(dir, "isolinux"), 0o755); err != nil {
		t.Fatal(err)
	}
	guestDir := filepath.Dir(guestImage)
	cmdline, err := os.ReadFile(filepath.Join(guestDir, "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	copyFile := func(src, dst string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyFile("/usr/lib/ISOLINUX/isolinux.bin", "isolinux/isolinux.bin")
	copyFile("/usr/lib/syslinux/modules/bios/ldlinux.c32", "isolinux/ldlinux.c32")
	copyFile(filepath.Join(guestDir, "vmlinuz"), "vmlinuz")
	copyFile(filepath.Join(guestDir, "initrd.img"), "initrd.img")
	cfg := "SERIAL 0 115200\nDEFAULT guest\nPROMPT 0\nTIMEOUT 1\nLABEL guest\n  KERNEL /vmlinuz\n  APPEND initrd=/initrd.img " + strings.TrimSpace(string(cmdline)) + "\n"
	if err := os.WriteFile(filepath.Join(dir, "isolinux", "isolinux.cfg"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	iso := filepath.Join(s.importDir, "installer.iso")
	if out, err := exec.Command("genisoimage", "-quiet", "-o", iso, "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
		"-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", "-V", "INSTALLER", dir).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	s.createGuest("isoboot", func(sp *v1.VMSpec) {
		sp.Disks = append(sp.Disks, v1.Disk{Name: "cd0", Media: "cdrom", Image: iso})
		sp.Boot = []string{"cdrom", "disk"}
	})
	s.waitReady("isoboot", 0)
	log, _ := os.ReadFile(s.serialLog("isoboot"))
	if !strings.Contains(string(log), "ISOLINUX 6") || strings.Contains(string(log), "SYSLINUX 6") {
		t.Fatalf("the guest did not boot from the ISO; serial log:\n%s", tail(string(log), 1500))
	}
}
