package config

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	v1 "hangar/api/v1"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestArgvGolden(t *testing.T) {
	cases := map[string]Params{
		"user-net-overlay-tcg": {
			Spec: v1.VMSpec{Name: "web1", CPUs: 2, MemoryMiB: 512, Machine: "q35", CPUModel: "max",
				UUID:  "0b6c2b6e-8a3e-4b1e-9a55-0d5c0c7a1f00",
				Disks: []v1.Disk{{Name: "disk0", Image: "/img/base.qcow2", Bus: "virtio"}},
				NICs: []v1.NIC{{Mode: "user", MAC: "52:54:00:12:34:56",
					Forwards: []v1.Forward{{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}, {HostPort: 2222, GuestPort: 22, Protocol: "tcp"}}}},
				Boot: []string{"disk", "cdrom", "network"}},
			Accel: "tcg", RunDir: "/run/hangar/vms/web1", LogDir: "/var/lib/hangar/logs/web1",
			Disks: []DiskFile{{Path: "/var/lib/hangar/pools/default/vms/web1/disk0.qcow2", Format: "qcow2"}},
			Taps:  []string{""},
		},
		"bridge-kvm-multi-disk": {
			Spec: v1.VMSpec{Name: "db", CPUs: 4, MemoryMiB: 4096, Machine: "q35", CPUModel: "host",
				Disks:         []v1.Disk{{Name: "root", SizeMiB: 10240, Bus: "virtio"}, {Name: "data", SizeMiB: 1024, Bus: "scsi", IOErrorPolicy: "report"}, {Name: "legacy", SizeMiB: 64, Bus: "sata"}},
				IOErrorPolicy: "ignore",
				Resources:     &v1.Resources{BalloonMiB: 2048, Hugepages: true},
				NICs:          []v1.NIC{{Mode: "bridge", Bridge: "br0", MAC: "52:54:00:aa:bb:cc"}},
				Boot:          []string{"network", "disk"}},
			Accel: "kvm", RunDir: "/run/hangar/vms/db", LogDir: "/var/lib/hangar/logs/db",
			Disks: []DiskFile{{Path: "/p/root.qcow2", Format: "qcow2"}, {Path: "/p/data.raw", Format: "raw"}, {Path: "/p/legacy.qcow2", Format: "qcow2"}},
			Taps:  []string{"hgt1a2b3c4d"},
		},
	}
	cases["cdrom-shared-raw"] = Params{
		Spec: v1.VMSpec{Name: "node1", CPUs: 1, MemoryMiB: 256, Machine: "q35", CPUModel: "max",
			Disks: []v1.Disk{{Name: "disk0", SizeMiB: 64, Bus: "virtio", Media: "disk"},
				{Name: "quorum", Volume: "shared/quorum.raw", Bus: "virtio", Media: "disk", Shareable: true},
				{Name: "cd0", Image: "/iso/install.iso", Bus: "sata", Media: "cdrom"},
				{Name: "seed", Bus: "sata", Media: "cdrom"}},
			Boot: []string{"cdrom", "disk"}},
		Accel: "tcg", RunDir: "/run/hangar/vms/node1", LogDir: "/var/lib/hangar/logs/node1",
		Disks: []DiskFile{{Path: "/p/disk0.qcow2", Format: "qcow2"}, {Path: "/shared/quorum.raw", Format: "raw"},
			{Path: "/iso/install.iso", Format: "raw"}, {}},
	}
	// A host ISO handed to an unprivileged QEMU as an inherited descriptor.
	cases["cdrom-fd"] = Params{
		Spec: v1.VMSpec{Name: "iso1", CPUs: 1, MemoryMiB: 256, Machine: "pc", CPUModel: "max",
			Disks: []v1.Disk{{Name: "cd0", Image: "/srv/isos/install.iso", Bus: "sata", Media: "cdrom"}},
			Boot:  []string{"cdrom"}},
		Accel: "tcg", RunDir: "/run/hangar/vms/iso1", LogDir: "/var/lib/hangar/logs/iso1",
		Disks: []DiskFile{{Path: "/srv/isos/install.iso", Format: "raw", FD: 3}},
	}
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			argv, err := Argv(p)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(argv, "\n") + "\n"
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run go test -update): %v", err)
			}
			if got != string(want) {
				t.Errorf("argv differs from %s (go test -update rewrites it)\n--- got\n%s", path, got)
			}
		})
	}
}

func TestArgvRejectsMismatch(t *testing.T) {
	p := Params{Spec: v1.VMSpec{Name: "a", Disks: []v1.Disk{{Name: "d"}}}}
	if _, err := Argv(p); err == nil {
		t.Fatal("want error for missing disk file")
	}
	p = Params{Spec: v1.VMSpec{Name: "a", Disks: []v1.Disk{{Name: "d", Bus: "virtio"}}}, Disks: []DiskFile{{Path: "/x", Format: "vmdk"}}}
	if _, err := Argv(p); err == nil || !strings.Contains(err.Error(), "format") {
		t.Fatalf("want format error, got %v", err)
	}
}

func TestIncomingStaysPaused(t *testing.T) {
	p := Params{Spec: v1.VMSpec{Name: "a", Machine: "q35", CPUModel: "max", CPUs: 1, MemoryMiB: 64}, Incoming: "defer"}
	argv, err := Argv(p)
	if err != nil {
		t.Fatal(err)
	}
	j := strings.Join(argv, " ")
	if !strings.Contains(j, "-incoming defer -S") {
		t.Fatalf("argv: %s", j)
	}
}

// TestTCGMemoryIsNotWordAligned: under TCG the guest's RAM is never a whole
// number of 64-page bitmap words (QEMU < 9.0 loses dirty pages of such a
// block when it migrates; see TCGRAMPadKiB); under KVM it is what the spec
// asks.
func TestTCGMemoryIsNotWordAligned(t *testing.T) {
	for _, mib := range []int{16, 64, 256, 1000, 4096, 65536} {
		if got, want := memory(mib, "kvm"), strconv.Itoa(mib); got != want {
			t.Errorf("kvm -m for %d MiB: %q, want %q", mib, got, want)
		}
		v, ok := strings.CutSuffix(memory(mib, "tcg"), "k")
		kib, err := strconv.Atoi(v)
		if !ok || err != nil {
			t.Fatalf("tcg -m for %d MiB: %q, want a KiB value", mib, memory(mib, "tcg"))
		}
		if kib < mib*1024 || kib%(64*4) == 0 || kib%8 != 0 {
			t.Errorf("tcg -m for %d MiB: %d KiB: want at least the spec's memory, 8 KiB aligned (QEMU rounds -m to it), not a multiple of 256 KiB", mib, kib)
		}
	}
}
