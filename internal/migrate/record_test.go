package migrate

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

func TestDecodeRecord(t *testing.T) {
	disk := Disk{Name: "disk0", Pool: "local-h1", Volume: "vms/web/disk0.qcow2", Format: "qcow2", SizeBytes: 2 << 30}
	good := Record{VM: "web", OpID: "0f8fad5b-d9cb-469f-a165-70867728950e", Source: "h1", Target: "h2", Phase: Migrating, Epoch: 2,
		Args: v1.MigrateArgs{To: "h2"}, Disks: []Disk{disk}, Created: time.Now()}
	b, _ := json.Marshal(good)
	if _, err := DecodeRecord("web", b); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*Record){
		"other vm":      func(r *Record) { r.VM = "db" },
		"bad op id":     func(r *Record) { r.OpID = "x" },
		"bad host":      func(r *Record) { r.Target = "../h2" },
		"same hosts":    func(r *Record) { r.Target = "h1" },
		"unknown phase": func(r *Record) { r.Phase = "teleporting" },
		"neg epoch":     func(r *Record) { r.Epoch = -1 },
		"bad args":      func(r *Record) { r.Args.DowntimeLimitMs = -3 },
		// The target makes volumes from these: state is input.
		"disk escapes its pool": func(r *Record) { r.Disks[0].Volume = "../../etc/shadow" },
		"disk hidden volume":    func(r *Record) { r.Disks[0].Volume = "vms/web/.disk0.qcow2" },
		"disk absolute volume":  func(r *Record) { r.Disks[0].Volume = "/etc/passwd" },
		"disk bad pool":         func(r *Record) { r.Disks[0].Pool = "Default/x" },
		"disk empty pool":       func(r *Record) { r.Disks[0].Pool = "" },
		"disk of another host":  func(r *Record) { r.Disks[0].Pool = "local-h3" },
		"disk bad name":         func(r *Record) { r.Disks[0].Name = "disk 0" },
		"disk unknown format":   func(r *Record) { r.Disks[0].Format = "vmdk" },
		"disk zero size":        func(r *Record) { r.Disks[0].SizeBytes = 0 },
		"disk negative size":    func(r *Record) { r.Disks[0].SizeBytes = -512 },
		"disk unaligned size":   func(r *Record) { r.Disks[0].SizeBytes = 1000 },
		"disk too big":          func(r *Record) { r.Disks[0].SizeBytes = 1 << 62 },
		"disk twice":            func(r *Record) { r.Disks = append(r.Disks, disk) },
		"two disks one volume":  func(r *Record) { d := disk; d.Name = "disk1"; r.Disks = append(r.Disks, d) },
		"too many disks":        func(r *Record) { r.Disks = make([]Disk, 17) },
	} {
		r := good
		r.Disks = slices.Clone(good.Disks)
		edit(&r)
		b, _ := json.Marshal(r)
		if _, err := DecodeRecord("web", b); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("%s: %v, want ErrInvalidRecord", name, err)
		}
	}
	if _, err := DecodeRecord("web", []byte(`{"vm":"web","extra":1}`)); !errors.Is(err, ErrInvalidRecord) {
		t.Errorf("unknown field: %v", err)
	}
	for name, raw := range map[string]string{
		"unknown state": `{"state":"flying"}`,
		"wildcard ip":   `{"state":"listening","ip":"0.0.0.0","port":4000}`,
		"no port":       `{"state":"listening","ip":"10.0.0.2"}`,
		"disks no nbd":  `{"state":"listening","ip":"10.0.0.2","port":4000,"disks":[{"name":"disk0","volume":"p/v","export":"drive-disk0"}]}`,
		"bad export":    `{"state":"preparing","disks":[{"name":"disk0","volume":"p/v","export":"x;quit"}]}`,
		"bad volume":    `{"state":"preparing","disks":[{"name":"disk0","volume":"../../etc","export":"drive-disk0"}]}`,
		"trailing data": `{"state":"preparing"} {}`,
	} {
		if _, err := DecodeTarget([]byte(raw)); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("target part %s: %v, want ErrInvalidRecord", name, err)
		}
	}
	if _, err := DecodeTarget([]byte(`{"state":"listening","ip":"10.0.0.2","port":4000,"nbdPort":4001,"disks":[{"name":"disk0","volume":"h2-local/web-disk0.qcow2","export":"drive-disk0"}]}`)); err != nil {
		t.Errorf("good target part: %v", err)
	}
	for name, raw := range map[string]string{
		"unknown field":  `{"disks":[],"extra":1}`,
		"escaping disk":  `{"disks":[{"name":"disk0","pool":"default","volume":"../x.qcow2","format":"qcow2","sizeBytes":512}]}`,
		"size as string": `{"disks":[{"name":"disk0","pool":"default","volume":"vms/web/d.qcow2","format":"qcow2","sizeBytes":"1G"}]}`,
	} {
		if _, err := DecodeDisks([]byte(raw)); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("disks part %s: %v, want ErrInvalidRecord", name, err)
		}
	}
	if p, err := DecodeDisks([]byte(`{"disks":[{"name":"disk0","pool":"default","volume":"vms/web/disk0.qcow2","format":"raw","sizeBytes":1048576}]}`)); err != nil || len(p.Disks) != 1 {
		t.Errorf("good disks part: %+v %v", p, err)
	}
	if _, err := DecodeSource([]byte(`{"state":"paused","downtimeMs":-1}`)); !errors.Is(err, ErrInvalidRecord) {
		t.Errorf("negative downtime: %v", err)
	}
}

// TestMovedPools: a disk of the source's own pool lands in the target's own
// pool, a recorded pool keeps its name; the spec's attached volumes follow.
func TestMovedPools(t *testing.T) {
	rec := Record{Source: "h1", Target: "h2"}
	if got := (Disk{Pool: "local-h1", Volume: "vms/web/disk0.qcow2"}).OnTarget(rec).Ref(); got != "local-h2/vms/web/disk0.qcow2" {
		t.Errorf("own pool: %s", got)
	}
	if got := (Disk{Pool: "fast", Volume: "data/a.raw"}).OnTarget(rec).Ref(); got != "fast/data/a.raw" {
		t.Errorf("recorded pool: %s", got)
	}
	spec := v1.VMSpec{Name: "web", Disks: []v1.Disk{{SizeMiB: 8}, {Volume: "local-h1/data/a.raw"}, {Volume: "nfs/b.raw"}, {Volume: "local-h11/c.raw"}}}
	moved := MovedSpec(spec, "h1", "h2")
	want := []string{"", "local-h2/data/a.raw", "nfs/b.raw", "local-h11/c.raw"}
	for i, d := range moved.Disks {
		if d.Volume != want[i] {
			t.Errorf("disk %d: %q, want %q", i, d.Volume, want[i])
		}
	}
	if spec.Disks[1].Volume != "local-h1/data/a.raw" {
		t.Errorf("MovedSpec changed its input: %+v", spec.Disks)
	}
}
