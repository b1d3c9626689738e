package migrate

import (
	"strings"
	"testing"

	v1 "hangar/api/v1"
)

func TestBlockers(t *testing.T) {
	pools := []v1.StoragePool{{Name: "local-h1", Type: "dir", Path: "/var/lib/hangar/pools/local"},
		{Name: "nas", Type: "shared", Path: "/mnt/nas"}}
	ok := CheckInput{
		Spec: v1.VMSpec{Name: "web", MemoryMiB: 256, CPUModel: "Westmere", Disks: []v1.Disk{
			{Name: "disk0", Media: "disk"}, {Name: "cidata", Media: "cdrom"}, {Name: "iso", Media: "cdrom", Image: "/mnt/nas/iso/debian.iso"}}},
		Status: v1.VMStatus{State: v1.StateRunning, Disks: []v1.DiskStatus{
			{Name: "disk0", Pool: "local-h1", Volume: "web-disk0.qcow2", Path: "/var/lib/hangar/pools/local/web-disk0.qcow2"}}},
		Pools: pools, Source: "h1", Target: "h2", TargetFreeMiB: 1024, TargetAlive: true,
	}
	if bs := Blockers(ok); len(bs) != 0 {
		t.Fatalf("blockers of a migratable vm: %v", bs)
	}
	for _, tc := range []struct {
		name  string
		edit  func(*CheckInput)
		field string
	}{
		{"local iso", func(c *CheckInput) { c.Spec.Disks[2].Image = "/root/debian.iso" }, "disks[2].image"},
		{"iso path escaping the shared pool", func(c *CheckInput) { c.Spec.Disks[2].Image = "/mnt/nasty/x.iso" }, "disks[2].image"},
		{"shareable local disk", func(c *CheckInput) { c.Spec.Disks[0].Shareable = true }, "disks[0].shareable"},
		{"local snapshot overlay", func(c *CheckInput) { c.Status.Disks[0].Top = "/var/lib/hangar/pools/local/web-disk0.snap1.qcow2" }, "disks[0]"},
		{"not enough memory", func(c *CheckInput) { c.TargetFreeMiB = 255 }, "memoryMiB"},
		{"stopped", func(c *CheckInput) { c.Status.State = v1.StateStopped }, "status.state"},
		{"target dead", func(c *CheckInput) { c.TargetAlive = false }, "to"},
		{"target in maintenance", func(c *CheckInput) { c.TargetMaintenance = true }, "to"},
		{"same host", func(c *CheckInput) { c.Target = "h1" }, "to"},
		{"cpu host", func(c *CheckInput) { c.Spec.CPUModel = "host" }, "cpuModel"},
		{"cpu max", func(c *CheckInput) { c.Spec.CPUModel = "max" }, "cpuModel"},
		{"disk without volume", func(c *CheckInput) { c.Status.Disks = nil }, "disks[0]"},
		{"target without the iso's shared pool", func(c *CheckInput) { c.TargetPools = map[string]bool{"local-h2": true} }, "to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := ok
			in.Spec.Disks = append([]v1.Disk(nil), ok.Spec.Disks...)
			in.Status.Disks = append([]v1.DiskStatus(nil), ok.Status.Disks...)
			tc.edit(&in)
			bs := Blockers(in)
			if len(bs) != 1 || bs[0].Field != tc.field {
				t.Fatalf("blockers %v, want one on %s", bs, tc.field)
			}
			if strings.TrimSpace(bs[0].Reason) == "" {
				t.Error("empty reason")
			}
		})
	}
	// A shareable disk on a shared pool and a snapshot on a shared pool are fine.
	in := ok
	in.Status.Disks = []v1.DiskStatus{{Name: "disk0", Pool: "nas", Volume: "web.qcow2", Path: "/mnt/nas/web.qcow2", Top: "/mnt/nas/web.snap.qcow2"}}
	in.Spec.Disks = []v1.Disk{{Name: "disk0", Media: "disk", Shareable: true}}
	if bs := Blockers(in); len(bs) != 0 {
		t.Errorf("shared disk: %v", bs)
	}
	if bs := Blockers(func() CheckInput { c := in; c.TargetPools = map[string]bool{"nas": true}; return c }()); len(bs) != 0 {
		t.Errorf("shared disk, the target reaching its pool: %v", bs)
	}
	if got := LocalDisks(ok.Spec, ok.Status, pools); len(got) != 1 || got[0].Name != "disk0" {
		t.Errorf("LocalDisks = %v", got)
	}
	if got := LocalDisks(in.Spec, in.Status, pools); len(got) != 0 {
		t.Errorf("LocalDisks of a shared disk = %v", got)
	}
}

func TestReportBlockers(t *testing.T) {
	local := []v1.DiskStatus{{Name: "disk0"}, {Name: "disk1"}}
	d := func(name string) Disk { return Disk{Name: name} }
	for _, tc := range []struct {
		name     string
		reported []Disk
		want     int
	}{
		{"exactly the local disks", []Disk{d("disk1"), d("disk0")}, 0},
		{"one missing", []Disk{d("disk0")}, 1},
		{"one too many", []Disk{d("disk0"), d("disk1"), d("disk2")}, 1},
		{"nothing reported", nil, 2},
	} {
		if bs := ReportBlockers(local, tc.reported); len(bs) != tc.want {
			t.Errorf("%s: %v, want %d blockers", tc.name, bs, tc.want)
		}
	}
	if bs := ReportBlockers(nil, nil); len(bs) != 0 {
		t.Errorf("shared-only vm: %v", bs)
	}
}

// TestSharedPools: the shared pools a VM uses come from its volumes'
// references, a linked clone's base, image and ISO paths and its disks'
// status; local pools and paths outside every pool are not named.
func TestSharedPools(t *testing.T) {
	pools := []v1.StoragePool{{Name: "local-h1", Type: "dir", Path: "/var/lib/hangar/pools/local"},
		{Name: "nas", Type: "shared", Path: "/mnt/nas"}, {Name: "san", Type: "shared", Path: "/mnt/san"},
		{Name: "gold", Type: "shared", Path: "/mnt/gold"}, {Name: "iso", Type: "shared", Path: "/mnt/iso"}}
	spec := v1.VMSpec{Name: "web", Disks: []v1.Disk{
		{Name: "d0", Volume: "san/web-d0.raw"},
		{Name: "d1", Clone: &v1.CloneSource{Volume: "gold/base.qcow2", Linked: true}},
		{Name: "d2", Volume: "local-h1/web-d2.qcow2"},
		{Name: "cd", Media: "cdrom", Image: "/mnt/iso/debian.iso"},
		{Name: "cd2", Media: "cdrom", Image: "/root/x.iso"}}}
	st := v1.VMStatus{Disks: []v1.DiskStatus{{Name: "d3", Pool: "nas"}, {Name: "d2", Pool: "local-h1"}}}
	if got := SharedPools(spec, st, pools); strings.Join(got, ",") != "gold,iso,nas,san" {
		t.Errorf("SharedPools = %v, want gold, iso, nas, san", got)
	}
	if got := SharedPools(v1.VMSpec{Name: "x", Disks: []v1.Disk{{Name: "d0", SizeMiB: 10}}}, v1.VMStatus{}, pools); len(got) != 0 {
		t.Errorf("SharedPools of a vm on its host's pool = %v", got)
	}
}
