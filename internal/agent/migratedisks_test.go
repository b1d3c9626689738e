package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"hangar/internal/inventory"
	"hangar/internal/migrate"
)

// TestMigrationTargetVolumes: the target makes the record's volumes in its
// own pool, refuses a name already taken there (and leaves that file
// alone), deletes what its journal lists once the migration is over, and
// refuses a journal naming a file outside its pools.
func TestMigrationTargetVolumes(t *testing.T) {
	ta := startAgent(t)
	ctx := t.Context()
	m := &machine{a: ta.a, name: "mv1", log: ta.a.cfg.Log}
	rec := migrate.Record{OpID: "0f8fad5b-d9cb-469f-a165-70867728950e",
		Disks: []migrate.Disk{{Name: "disk0", Pool: "local-testhost", Volume: "vms/mv1/disk0.qcow2", Format: "qcow2", SizeBytes: 64 << 20}}}
	if err := m.createTargetVolumes(ctx, rec); err != nil {
		t.Fatal(err)
	}
	vol, err := ta.a.cfg.Pool.Volume(ctx, "vms/mv1/disk0.qcow2")
	if err != nil || vol.VirtualSize != 64<<20 || vol.Format != "qcow2" || vol.Backing != "" {
		t.Fatalf("target volume %+v %v, want an empty 64 MiB qcow2", vol, err)
	}

	// A second migration naming a volume that exists is refused and the
	// file is not touched.
	other := &machine{a: ta.a, name: "mv2", log: ta.a.cfg.Log}
	taken := filepath.Join(ta.a.cfg.Pool.Path, "vms", "mv2", "disk0.qcow2")
	if err := os.MkdirAll(filepath.Dir(taken), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(taken, []byte("someone's data"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec2 := rec
	rec2.Disks = []migrate.Disk{{Name: "disk0", Pool: "local-testhost", Volume: "vms/mv2/disk0.qcow2", Format: "qcow2", SizeBytes: 64 << 20}}
	if err := other.targetVolumesFree(ctx, rec2); err == nil {
		t.Fatal("an existing file counts as a free volume name")
	}
	if err := other.createTargetVolumes(ctx, rec2); err == nil {
		t.Fatal("a volume over an existing file was made")
	}
	if b, err := os.ReadFile(taken); err != nil || string(b) != "someone's data" {
		t.Fatalf("the existing file: %q %v", b, err)
	}

	// The journal of an ended migration (no record, no owner): the volume
	// and the journal go, the VM's directory too.
	if err := m.writeJournal(targetJournal{OpID: rec.OpID, Disks: targetDisksOf(rec)}); err != nil {
		t.Fatal(err)
	}
	m.migrationLeftovers(ctx, "")
	if _, err := ta.a.cfg.Pool.Volume(ctx, "vms/mv1/disk0.qcow2"); err == nil {
		t.Fatal("the volume of an ended migration is left")
	}
	if j, err := m.readJournal(); j != nil || err != nil {
		t.Fatalf("journal after the clean-up: %+v %v", j, err)
	}
	if _, err := os.Stat(filepath.Join(ta.a.cfg.Pool.Path, "vms", "mv1")); !os.IsNotExist(err) {
		t.Fatalf("the vm's directory is left: %v", err)
	}

	// A journal naming a file outside the pool is refused, nothing deleted.
	path, _ := other.journalPath()
	for _, bad := range []string{
		`{"opID":"0f8fad5b-d9cb-469f-a165-70867728950e","disks":[{"name":"disk0","volume":"local-testhost/../../../victimdir/precious","export":"drive-disk0"}]}`,
		`{"opID":"0f8fad5b-d9cb-469f-a165-70867728950e","disks":[],"extra":1}`,
		`{"opID":"x","disks":[]}`,
	} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := other.readJournal(); err == nil {
			t.Errorf("journal %s accepted", bad)
		}
		other.migrationLeftovers(ctx, "")
	}
	ta.victimSurvives(t)
	if b, err := os.ReadFile(taken); err != nil || string(b) != "someone's data" {
		t.Fatalf("the existing file after bad journals: %q %v", b, err)
	}
	// A volume of a pool this host does not have is an error, not skipped.
	if err := m.removeTargetVolumes(ctx, []migrate.TargetDisk{{Name: "d", Volume: "nosuchpool/x.qcow2", Export: "drive-d"}}); err == nil {
		t.Error("a volume of an unknown pool: no error")
	}
}

// TestSourceLeftovers: the files a migration left on a source that was
// away at its end are deleted once the owner record names another host,
// with their record; a record naming a pool that is not this host's, or a
// VM this host owns again, deletes nothing.
func TestSourceLeftovers(t *testing.T) {
	ta := startAgent(t)
	ctx := t.Context()
	makeVol := func(name string) {
		t.Helper()
		if _, err := ta.a.cfg.Pool.CreateVolume(ctx, name, "qcow2", 16<<20); err != nil {
			t.Fatal(err)
		}
	}
	leftover := func(vm string, disks ...migrate.Disk) string {
		t.Helper()
		key := inventory.LeftoverKey("testhost", vm)
		ta.put(t, key, migrate.Leftover{VM: vm, OpID: "0f8fad5b-d9cb-469f-a165-70867728950e", Target: "h2", Disks: disks, Created: time.Now()})
		return key
	}
	disk := func(vm string) migrate.Disk {
		return migrate.Disk{Name: "disk0", Pool: "local-testhost", Volume: "vms/" + vm + "/disk0.qcow2", Format: "qcow2", SizeBytes: 16 << 20}
	}
	exists := func(vol string) bool {
		_, err := ta.a.cfg.Pool.Volume(ctx, vol)
		return err == nil
	}
	run := func(vm string) { (&machine{a: ta.a, name: vm, log: ta.a.cfg.Log}).removeSourceLeftovers(ctx) }

	// Moved to h2: the file and the record go.
	makeVol("vms/lo1/disk0.qcow2")
	ta.put(t, inventory.OwnerKey("lo1"), inventory.Owner{Host: "h2", Epoch: 2})
	key := leftover("lo1", disk("lo1"))
	run("lo1")
	if exists("vms/lo1/disk0.qcow2") {
		t.Error("the leftover file of a vm h2 owns is still here")
	}
	if _, err := ta.a.cfg.Store.Get(ctx, key); err == nil {
		t.Error("the leftover record is still there")
	}

	// Owned by this host again: files kept, record gone.
	makeVol("vms/lo2/disk0.qcow2")
	ta.put(t, inventory.OwnerKey("lo2"), inventory.Owner{Host: "testhost", Epoch: 3})
	key = leftover("lo2", disk("lo2"))
	run("lo2")
	if !exists("vms/lo2/disk0.qcow2") {
		t.Error("a file of a vm this host owns again was deleted")
	}
	if _, err := ta.a.cfg.Store.Get(ctx, key); err == nil {
		t.Error("the stale leftover record is still there")
	}

	// Records that do not pass: another host's pool, an escaping volume,
	// another vm's name in the record. Nothing is deleted.
	makeVol("vms/lo3/disk0.qcow2")
	ta.put(t, inventory.OwnerKey("lo3"), inventory.Owner{Host: "h2", Epoch: 2})
	for _, bad := range []migrate.Disk{
		{Name: "disk0", Pool: "local-h2", Volume: "vms/lo3/disk0.qcow2", Format: "qcow2", SizeBytes: 16 << 20},
		{Name: "disk0", Pool: "local-testhost", Volume: "vms/../../../victimdir/precious", Format: "qcow2", SizeBytes: 16 << 20},
	} {
		key = leftover("lo3", bad)
		run("lo3")
		if _, err := ta.a.cfg.Store.Get(ctx, key); err != nil {
			t.Errorf("a refused leftover record (%+v) was removed", bad)
		}
	}
	ta.put(t, inventory.LeftoverKey("testhost", "lo3"), migrate.Leftover{VM: "lo1", OpID: "0f8fad5b-d9cb-469f-a165-70867728950e", Target: "h2", Disks: []migrate.Disk{disk("lo3")}})
	run("lo3")
	if !exists("vms/lo3/disk0.qcow2") {
		t.Error("a refused leftover record deleted a file")
	}
	ta.victimSurvives(t)
}
