package agent

import (
	"os"
	"path/filepath"
	"testing"

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
