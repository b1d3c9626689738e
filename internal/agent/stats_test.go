package agent

import (
	"testing"

	v1 "hangar/api/v1"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and ") " in it must not shift the fields.
	stat := []byte("4242 (qemu) x (y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5 0 100 1000 200 18446744073709551615")
	got, err := parseStatCPU(stat)
	if err != nil || got != 3.0 {
		t.Fatalf("parseStatCPU = %v, %v; want 3 s (250+50 ticks)", got, err)
	}
	for _, bad := range []string{"", "4242 qemu S 1", "4242 (q) S 1 2 3 4 5 6 7 8 9 10 x y"} {
		if _, err := parseStatCPU([]byte(bad)); err == nil {
			t.Errorf("parseStatCPU(%q) accepted", bad)
		}
	}
}

func TestParseStatusRSS(t *testing.T) {
	got, err := parseStatusRSS([]byte("Name:\tqemu\nVmPeak:\t 999 kB\nVmRSS:\t  2048 kB\nThreads: 5\n"))
	if err != nil || got != 2048<<10 {
		t.Fatalf("parseStatusRSS = %v, %v; want 2 MiB", got, err)
	}
	for _, bad := range []string{"Name: x\n", "VmRSS: 12 MB\n", "VmRSS: -1 kB\n", "VmRSS: x kB\n"} {
		if _, err := parseStatusRSS([]byte(bad)); err == nil {
			t.Errorf("parseStatusRSS(%q) accepted", bad)
		}
	}
}

func TestIsQEMUOf(t *testing.T) {
	cmd := []byte("qemu-system-x86_64\x00-name\x00guest=web10,debug-threads=on\x00-S\x00")
	if !isQEMUOf(cmd, "web10") {
		t.Error("web10's own command line not recognised")
	}
	for _, other := range []string{"web1", "web", "eb10"} {
		if isQEMUOf(cmd, other) {
			t.Errorf("web10's QEMU taken for %q's", other)
		}
	}
	if isQEMUOf([]byte("sleep\x00guest=web10,\x00"), "web10") {
		t.Error("a process without -name taken for a QEMU")
	}
}

func TestDiskStats(t *testing.T) {
	spec := v1.VMSpec{Disks: []v1.Disk{{Name: "disk0"}, {Name: "data"}}}
	var bs []blockStats
	add := func(qdev string, rd uint64) {
		var b blockStats
		b.QDev, b.Stats.RdBytes, b.Stats.RdOperations = qdev, rd, 1
		bs = append(bs, b)
	}
	add("/machine/peripheral/dev-disk0/virtio-backend", 100)
	add("dev-data", 200)
	add("dev-other", 300)             // no disk of the spec
	add("/machine/unattached/x", 400) // not ours
	add("dev-data", 500)              // a second entry for the same disk is ignored
	got := diskStats(spec, bs)
	if len(got) != 2 || got[0].Disk != "disk0" || got[0].ReadBytes != 100 || got[1].Disk != "data" || got[1].ReadBytes != 200 {
		t.Fatalf("diskStats = %+v", got)
	}
}
