package imports

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// guestImage returns the bootable test guest (guest/build.sh), building it
// when missing; it skips when that is impossible here (needs root).
func guestImage(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("HANGAR_GUEST_DIR")
	if dir == "" {
		dir = "/var/cache/hangar/guest"
	}
	p := filepath.Join(dir, "hangar-guest.qcow2")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	cmd := exec.Command("bash", "../../guest/build.sh", dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Skipf("no guest image at %s and guest/build.sh failed: %v", p, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// TestGuestOVA imports the real guest image exported as an OVA with a
// streamOptimized VMDK, as VMware and VirtualBox export, and checks the
// qcow2 against the original (booting it is the integration tests' job).
func TestGuestOVA(t *testing.T) {
	needQemuImg(t)
	guest := guestImage(t)
	dir := t.TempDir()
	vmdk := qemuConvert(t, guest, "qcow2", filepath.Join(dir, "guest.vmdk"), "vmdk", "subformat=streamOptimized")
	ova := filepath.Join(dir, "hangar-guest.ova")
	disk := fileEntry(t, "hangar-guest-disk1.vmdk", vmdk)
	desc := tarEntry{name: "hangar-guest.ovf", data: testOVF("hangar-guest", ovfDiskRef{
		id: "vmdisk1", file: disk.name, size: int64(len(disk.data)), capacity: "128", units: "byte * 2^20"})}
	writeTar(t, ova, []tarEntry{desc, {name: "hangar-guest.mf", data: manifestFor(desc, disk)}, disk})

	plan, err := Inspect(context.Background(), ova)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Name != "hangar-guest" || len(plan.Disks) != 1 || plan.Disks[0].VirtualSize != 128<<20 {
		t.Fatalf("plan %+v", plan)
	}
	dst := filepath.Join(dir, "guest.qcow2")
	convertChecked(t, plan.Disks[0], dst)
	sameDisk(t, guest, "qcow2", dst)
}

// realisticRaw writes a raw disk of mib MiB mixing what disks hold:
// incompressible data, text, zeros and repetitive binary.
func realisticRaw(tb testing.TB, path string, mib int) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	chacha := rand.NewChaCha8([32]byte{1})
	words := strings.Fields("the quick brown fox jumps over lazy dog kernel module init systemd journal " +
		"usr lib share etc passwd config service network interface address route")
	buf := make([]byte, 1<<20)
	for i := range mib {
		switch i % 4 {
		case 0:
			chacha.Read(buf)
		case 1:
			var sb strings.Builder
			for sb.Len() < len(buf) {
				sb.WriteString(words[rng.IntN(len(words))])
				sb.WriteByte(" \n"[rng.IntN(2)])
			}
			copy(buf, sb.String())
		case 2:
			clear(buf)
		case 3:
			for j := range buf {
				buf[j] = byte(j % 251)
			}
		}
		if _, err := f.Write(buf); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkConvertVsQemuImg converts the same VMDK with Convert (checks,
// qemu-img with convertFlags, fsync, rename) and with a plain
// `qemu-img convert -O qcow2`, alternating, and reports both and their ratio.
func BenchmarkConvertVsQemuImg(b *testing.B) {
	needQemuImg(b)
	dir := b.TempDir()
	fixture := filepath.Join(dir, "realistic.raw")
	realisticRaw(b, fixture, 256)
	sources := map[string]struct{ path, format string }{
		"guest":        {guestImage(b), "qcow2"},
		"realistic256": {fixture, "raw"},
	}
	for name, s := range sources {
		for _, sub := range []string{"streamOptimized", "monolithicSparse"} {
			vmdk := qemuConvert(b, s.path, s.format, filepath.Join(dir, name+"-"+sub+".vmdk"), "vmdk", "subformat="+sub)
			b.Run(name+"/"+sub, func(b *testing.B) { benchConvert(b, vmdk) })
		}
	}
}

func benchConvert(b *testing.B, vmdk string) {
	plan, err := Inspect(context.Background(), vmdk)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	ours, plain := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "plain.qcow2")
	var tOurs, tPlain time.Duration
	n := 0
	for b.Loop() {
		os.Remove(ours)
		os.Remove(plain)
		start := time.Now()
		if err := Convert(context.Background(), plan.Disks[0], ours, nil); err != nil {
			b.Fatal(err)
		}
		tOurs += time.Since(start)
		start = time.Now()
		run(b, qemuImg, "convert", "-O", "qcow2", vmdk, plain)
		tPlain += time.Since(start)
		n++
	}
	b.ReportMetric(float64(tOurs.Milliseconds())/float64(n), "convert-ms/op")
	b.ReportMetric(float64(tPlain.Milliseconds())/float64(n), "qemuimg-ms/op")
	b.ReportMetric(float64(tOurs)/float64(tPlain), "ratio")
}

// BenchmarkConvertFlags measures qemu-img convert option sets Convert could
// use (how convertFlags was chosen).
func BenchmarkConvertFlags(b *testing.B) {
	needQemuImg(b)
	dir := b.TempDir()
	fixture := filepath.Join(dir, "realistic.raw")
	realisticRaw(b, fixture, 256)
	saved := convertFlags
	defer func() { convertFlags = saved }()
	for _, sub := range []string{"streamOptimized", "monolithicSparse"} {
		vmdk := qemuConvert(b, fixture, "raw", filepath.Join(dir, sub+".vmdk"), "vmdk", "subformat="+sub)
		plan, err := Inspect(context.Background(), vmdk)
		if err != nil {
			b.Fatal(err)
		}
		for name, flags := range map[string][]string{
			"default": nil, "W": {"-W"}, "m16": {"-m", "16"}, "W-m16": {"-W", "-m", "16"}, "t-none": {"-t", "none"}, "W-t-none": {"-W", "-t", "none"},
		} {
			b.Run(sub+"/"+name, func(b *testing.B) {
				convertFlags = flags
				dst := filepath.Join(dir, "out.qcow2")
				for b.Loop() {
					os.Remove(dst)
					if err := Convert(context.Background(), plan.Disks[0], dst, nil); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
