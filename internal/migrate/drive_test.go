package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

// leader is a fake fenced commit: every txn is conditioned on the leader
// key's revision, as master.Session.Commit conditions on its election key.
type leader struct {
	s   store.Store
	rev int64
}

func (l *leader) Commit(ctx context.Context, conds []store.Cond, ops ...store.Op) (int64, error) {
	return l.s.Txn(ctx, append(conds, store.Cond{Key: "/test/leader", ExpectRev: l.rev}), ops...)
}

func putJSON(t *testing.T, s store.Store, key string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if _, err := s.Put(context.Background(), key, b, store.AnyRevision); err != nil {
		t.Fatal(err)
	}
}

func getJSON(t *testing.T, s store.Store, key string, v any) bool {
	t.Helper()
	kv, err := s.Get(context.Background(), key)
	if errors.Is(err, store.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(kv.Value, v); err != nil {
		t.Fatal(err)
	}
	return true
}

// fakeAgents plays both agents from the records (SourceStep/TargetStep),
// writing only their parts, until ctx ends; it closes done when it
// returns. Store errors (the test is ending) end it quietly.
func fakeAgents(ctx context.Context, s store.Store, vmName string, sourceFails bool, done chan<- struct{}) {
	defer close(done)
	get := func(key string, v any) bool {
		kv, err := s.Get(ctx, key)
		return err == nil && json.Unmarshal(kv.Value, v) == nil
	}
	put := func(key string, v any) {
		b, _ := json.Marshal(v)
		_, _ = s.Put(ctx, key, b, store.AnyRevision)
	}
	for ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
		var rec Record
		if !get(inventory.MigrationKey(vmName), &rec) {
			continue
		}
		var sp *SourcePart
		var tp *TargetPart
		var spv SourcePart
		var tpv TargetPart
		if get(inventory.MigrationPartKey(vmName, "source"), &spv) {
			sp = &spv
		}
		if get(inventory.MigrationPartKey(vmName, "target"), &tpv) {
			tp = &tpv
		}
		var owner inventory.Owner
		get(inventory.OwnerKey(vmName), &owner)
		var dp DisksPart
		if !get(inventory.MigrationPartKey(vmName, PartDisks), &dp) && SourceReports(rec, nil) {
			put(inventory.MigrationPartKey(vmName, PartDisks), DisksPart{})
		}
		switch TargetStep(rec, tp, owner.Host) {
		case TargetPrepare:
			put(inventory.MigrationPartKey(vmName, "target"), TargetPart{State: TgtListening, IP: "10.99.0.2", Port: 49152})
		case TargetResume:
			put(inventory.MigrationPartKey(vmName, "target"), TargetPart{State: TgtRunning})
		case TargetRemove:
			put(inventory.MigrationPartKey(vmName, "target"), TargetPart{State: TgtCleaned})
		}
		switch SourceStep(rec, sp, true) {
		case SourceMigrate:
			if sourceFails {
				put(inventory.MigrationPartKey(vmName, "source"), SourcePart{State: SrcFailed, Error: "connection reset"})
				continue
			}
			put(inventory.MigrationPartKey(vmName, "source"), SourcePart{State: SrcMigrating, Progress: v1.Progress{Fraction: 0.5, Phase: "ram"}})
			time.Sleep(50 * time.Millisecond)
			put(inventory.MigrationPartKey(vmName, "source"), SourcePart{State: SrcPaused, DowntimeMs: 20})
		case SourceRollBack:
			put(inventory.MigrationPartKey(vmName, "source"), SourcePart{State: SrcRolledBack})
		case SourceCleanup:
			put(inventory.MigrationPartKey(vmName, "source"), SourcePart{State: SrcCleaned})
		}
	}
}

func TestDrive(t *testing.T) {
	m := etcdtest.Start(t)
	s := store.NewEtcd(m.Client())
	for _, tc := range []struct {
		name        string
		sourceFails bool
		blockers    []Blocker
		wantOwner   inventory.Owner
		wantState   string
	}{
		{"completes", false, nil, inventory.Owner{Host: "h2", Epoch: 4}, v1.OpSucceeded},
		{"source fails", true, nil, inventory.Owner{Host: "h1", Epoch: 3}, v1.OpFailed},
		{"blocked", false, []Blocker{{"disks[1].image", "local iso"}}, inventory.Owner{Host: "h1", Epoch: 3}, v1.OpFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			vmName := map[string]string{"completes": "web", "source fails": "db", "blocked": "app"}[tc.name]
			lrev, err := s.Put(ctx, "/test/leader", []byte("me"), store.AnyRevision)
			if err != nil {
				t.Fatal(err)
			}
			putJSON(t, s, inventory.OwnerKey(vmName), inventory.Owner{Host: "h1", Epoch: 3})
			op := v1.Operation{ID: "0f8fad5b-d9cb-469f-a165-70867728950e", Kind: "migrate", Target: vmName, State: v1.OpPending}
			putJSON(t, s, inventory.OpKey(op.ID), op)
			rec, err := NewRecord(op, v1.MigrateArgs{To: "h2"}, "h1", 3, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			ops, _ := RecordOps(rec)
			if _, err := s.Txn(ctx, nil, ops...); err != nil {
				t.Fatal(err)
			}
			actx, acancel := context.WithCancel(ctx)
			agentsDone := make(chan struct{})
			defer func() { acancel(); <-agentsDone }()
			go fakeAgents(actx, s, vmName, tc.sourceFails, agentsDone)
			deps := Deps{Store: s, Fenced: &leader{s: s, rev: lrev}, Poll: 50 * time.Millisecond,
				Check:     func(context.Context, Record) ([]Blocker, error) { return tc.blockers, nil },
				HostAlive: func(context.Context, string) (bool, error) { return true, nil }}
			if err := Drive(ctx, deps, vmName); err != nil {
				t.Fatal(err)
			}
			var owner inventory.Owner
			getJSON(t, s, inventory.OwnerKey(vmName), &owner)
			if owner != tc.wantOwner {
				t.Errorf("owner %+v, want %+v", owner, tc.wantOwner)
			}
			var got v1.Operation
			getJSON(t, s, inventory.OpKey(op.ID), &got)
			if got.State != tc.wantState {
				t.Errorf("operation %s (%+v), want %s", got.State, got.Error, tc.wantState)
			}
			for _, k := range []string{inventory.MigrationKey(vmName), inventory.MigrationPartKey(vmName, PartSource), inventory.MigrationPartKey(vmName, PartTarget), inventory.MigrationPartKey(vmName, PartDisks)} {
				if _, err := s.Get(ctx, k); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("%s left: %v", k, err)
				}
			}
		})
	}
}

// TestDriveDeposedMaster: a master whose leadership key changed writes
// nothing (its fenced commits fail); a new master finishes the migration.
func TestDriveDeposedMaster(t *testing.T) {
	m := etcdtest.Start(t)
	s := store.NewEtcd(m.Client())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	old, _ := s.Put(ctx, "/test/leader", []byte("old"), store.AnyRevision)
	putJSON(t, s, inventory.OwnerKey("web"), inventory.Owner{Host: "h1", Epoch: 3})
	op := v1.Operation{ID: "0f8fad5b-d9cb-469f-a165-70867728950e", Kind: "migrate", Target: "web", State: v1.OpPending}
	putJSON(t, s, inventory.OpKey(op.ID), op)
	rec, _ := NewRecord(op, v1.MigrateArgs{To: "h2"}, "h1", 3, time.Now())
	ops, _ := RecordOps(rec)
	s.Txn(ctx, nil, ops...)
	now, _ := s.Put(ctx, "/test/leader", []byte("new"), store.AnyRevision)
	deps := Deps{Store: s, Fenced: &leader{s: s, rev: old}, Poll: 20 * time.Millisecond,
		Check:     func(context.Context, Record) ([]Blocker, error) { return nil, nil },
		HostAlive: func(context.Context, string) (bool, error) { return true, nil }}
	dctx, dcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer dcancel()
	if err := Drive(dctx, deps, "web"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deposed master's Drive: %v", err)
	}
	var r Record
	getJSON(t, s, inventory.MigrationKey("web"), &r)
	if r.Phase != Pending {
		t.Fatalf("a deposed master moved the phase to %s", r.Phase)
	}
	actx, acancel := context.WithCancel(ctx)
	agentsDone := make(chan struct{})
	defer func() { acancel(); <-agentsDone }()
	go fakeAgents(actx, s, "web", false, agentsDone)
	deps.Fenced = &leader{s: s, rev: now}
	if err := Drive(ctx, deps, "web"); err != nil {
		t.Fatal(err)
	}
	var owner inventory.Owner
	getJSON(t, s, inventory.OwnerKey("web"), &owner)
	if owner != (inventory.Owner{Host: "h2", Epoch: 4}) {
		t.Errorf("owner %+v", owner)
	}
}

// TestClaim: an agent's claim fails once the master has moved the record
// on (here: to aborting), and a part is claimed once only.
func TestClaim(t *testing.T) {
	m := etcdtest.Start(t)
	s := store.NewEtcd(m.Client())
	ctx := context.Background()
	op := v1.Operation{ID: "0f8fad5b-d9cb-469f-a165-70867728950e", Kind: "migrate", Target: "web"}
	rec, _ := NewRecord(op, v1.MigrateArgs{To: "h2"}, "h1", 1, time.Now())
	rec.Phase = Checked
	ops, _ := RecordOps(rec)
	if _, err := s.Txn(ctx, nil, ops...); err != nil {
		t.Fatal(err)
	}
	st, err := Load(ctx, s, "web")
	if err != nil || st.Rec.Phase != Checked || st.Target != nil {
		t.Fatalf("load: %+v %v", st, err)
	}
	// The master aborts before the target claims.
	rec.Phase = Aborting
	b, _ := json.Marshal(rec)
	if _, err := s.Put(ctx, inventory.MigrationKey("web"), b, st.RecRev); err != nil {
		t.Fatal(err)
	}
	if err := Claim(ctx, s, "web", PartTarget, st.RecRev, TargetPart{State: TgtPreparing}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("claim after the abort: %v, want a conflict", err)
	}
	st2, _ := Load(ctx, s, "web")
	if err := Claim(ctx, s, "web", PartSource, st2.RecRev, SourcePart{State: SrcStarting}); err != nil {
		t.Fatal(err)
	}
	if err := Claim(ctx, s, "web", PartSource, st2.RecRev, SourcePart{State: SrcStarting}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second claim: %v", err)
	}
	if err := WritePart(ctx, s, "web", PartSource, &SourcePart{State: SrcRolledBack}); err != nil {
		t.Fatal(err)
	}
	if st3, _ := Load(ctx, s, "web"); st3.Source == nil || st3.Source.State != SrcRolledBack {
		t.Fatalf("part after write: %+v", st3.Source)
	}
	// No record, no part.
	s.Delete(ctx, inventory.MigrationKey("web"), store.AnyRevision)
	if err := WritePart(ctx, s, "web", PartTarget, &TargetPart{State: TgtCleaned}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("write without a record: %v", err)
	}
	// A bad part is refused when read.
	s.Txn(ctx, nil, ops...)
	s.Put(ctx, inventory.MigrationPartKey("web", PartTarget), []byte(`{"state":"listening","ip":"0.0.0.0","port":1}`), store.AnyRevision)
	if _, err := Load(ctx, s, "web"); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("load with a bad target part: %v", err)
	}
}

// TestDriveSourceAwayAtCleaning: a migration whose source is not alive when
// it reaches cleaning ends done, and leaves a record of the local disk
// files the source still has (for its agent to delete when it is back).
func TestDriveSourceAwayAtCleaning(t *testing.T) {
	m := etcdtest.Start(t)
	s := store.NewEtcd(m.Client())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lrev, _ := s.Put(ctx, "/test/leader", []byte("me"), store.AnyRevision)
	op := v1.Operation{ID: "0f8fad5b-d9cb-469f-a165-70867728950e", Kind: "migrate", Target: "web", State: v1.OpRunning}
	putJSON(t, s, inventory.OpKey(op.ID), op)
	rec, _ := NewRecord(op, v1.MigrateArgs{To: "h2"}, "h1", 3, time.Now())
	rec.Phase = Cleaning
	rec.Disks = []Disk{{Name: "disk0", Pool: "local-h1", Volume: "vms/web/disk0.qcow2", Format: "qcow2", SizeBytes: 1 << 30}}
	ops, _ := RecordOps(rec)
	if _, err := s.Txn(ctx, nil, ops...); err != nil {
		t.Fatal(err)
	}
	putJSON(t, s, inventory.OwnerKey("web"), inventory.Owner{Host: "h2", Epoch: 4})
	putJSON(t, s, inventory.MigrationPartKey("web", PartSource), SourcePart{State: SrcPaused, Updated: time.Now()})
	deps := Deps{Store: s, Fenced: &leader{s: s, rev: lrev}, Poll: 20 * time.Millisecond,
		Check:     func(context.Context, Record) ([]Blocker, error) { return nil, nil },
		HostAlive: func(_ context.Context, h string) (bool, error) { return h != "h1", nil }}
	if err := Drive(ctx, deps, "web"); err != nil {
		t.Fatal(err)
	}
	kv, err := s.Get(ctx, inventory.LeftoverKey("h1", "web"))
	if err != nil {
		t.Fatalf("no leftover record for h1: %v", err)
	}
	lo, err := DecodeLeftover("h1", "web", kv.Value)
	if err != nil || lo.Target != "h2" || len(lo.Disks) != 1 || lo.Disks[0].Ref() != "local-h1/vms/web/disk0.qcow2" {
		t.Fatalf("leftover %+v %v", lo, err)
	}
	if _, err := s.Get(ctx, inventory.MigrationKey("web")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("migration record left: %v", err)
	}
	// A source that cleaned up leaves nothing to record.
	if LeftoverOf(Record{Phase: Done, Disks: rec.Disks}, &SourcePart{State: SrcCleaned}) != nil {
		t.Error("a cleaned source got a leftover record")
	}
	if LeftoverOf(Record{Phase: RolledBack, Disks: rec.Disks}, nil) != nil {
		t.Error("a rolled-back migration got a leftover record")
	}
}
