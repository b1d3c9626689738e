package master

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/migrate"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// startMigration turns a pending migrate operation into a migration
// record (internal/migrate) in one fenced transaction with the operation
// (now running) and the target's booking, conditioned on the VM's owner
// record, then drives it.
func (l *leader) startMigration(ctx context.Context, id string) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	op, oprev, err := inv.Op(ctx, id)
	if err != nil {
		return err
	}
	if op.State != v1.OpPending || op.Kind != "migrate" {
		return nil
	}
	var args v1.MigrateArgs
	dec := json.NewDecoder(bytes.NewReader(op.Args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&args); err != nil {
		return l.fail(ctx, op, oprev, fmt.Errorf("migrate args: %v: %w", err, errdefs.ErrInvalid), nil)
	}
	if err := vm.ValidateMigrateArgs(args); err != nil {
		return l.fail(ctx, op, oprev, err, nil)
	}
	owner, orev, err := inv.OwnerOf(ctx, op.Target)
	if errors.Is(err, store.ErrNotFound) {
		return l.fail(ctx, op, oprev, errdefs.Precondition("vm %q has no owner record: it was never placed", op.Target), nil)
	}
	if err != nil {
		return err
	}
	spec, specRev, err := inv.Spec(ctx, op.Target)
	if err != nil {
		return err
	}
	if owner.Host == args.To {
		return l.fail(ctx, op, oprev, errdefs.Precondition("vm %q already runs on %s", op.Target, args.To), nil)
	}
	rec, err := migrate.NewRecord(op, args, owner.Host, owner.Epoch, time.Now())
	if err != nil {
		return l.fail(ctx, op, oprev, err, nil)
	}
	ops, err := migrate.RecordOps(rec)
	if err != nil {
		return err
	}
	op.State, op.Updated = v1.OpRunning, time.Now().UTC()
	op.Progress = v1.Progress{Phase: string(migrate.Pending)}
	ops = append(ops, store.PutOp(inventory.OpKey(op.ID), inventory.Marshal(op), oprev),
		store.PutOp(inventory.AllocKey(args.To, op.Target), inventory.Marshal(allocOf(spec)), store.AnyRevision))
	_, err = l.Commit(ctx, []store.Cond{{Key: inventory.OwnerKey(op.Target), ExpectRev: orev}, {Key: inventory.VMKey(op.Target), ExpectRev: specRev}}, ops...)
	if errors.Is(err, store.ErrConflict) {
		// Another migration's record, or the VM changed: look again.
		if _, gerr := l.cfg.Store.Get(ctx, inventory.MigrationKey(op.Target)); gerr == nil {
			return l.fail(ctx, op, oprev, errdefs.Precondition("vm %q is being migrated already", op.Target), nil)
		}
		return err
	}
	if err != nil {
		return err
	}
	l.log.Info("migration started", "vm", op.Target, "from", owner.Host, "to", args.To, "op", op.ID)
	l.drive(ctx, op.Target)
	return nil
}

// drive runs migrate.Drive for a VM's migration unless it runs already.
func (l *leader) drive(ctx context.Context, name string) {
	l.background(ctx, "migrate/"+name, func(ctx context.Context) error { return migrate.Drive(ctx, l.migrateDeps(), name) })
}

// resumeMigrations drives every migration recorded (after an election:
// the previous master's open migrations continue from their records).
func (l *leader) resumeMigrations(ctx context.Context) error {
	kvs, _, err := l.cfg.Store.List(ctx, inventory.Migrations)
	if err != nil {
		return fmt.Errorf("list migrations: %w", err)
	}
	for _, kv := range kvs {
		name := strings.TrimPrefix(kv.Key, inventory.Migrations)
		if strings.Contains(name, "/") || vm.ValidateName("name", name) != nil {
			continue // an agent's part, or not a record of ours
		}
		l.drive(ctx, name)
	}
	return nil
}

func (l *leader) migrateDeps() migrate.Deps {
	inv := inventory.Inventory{S: l.cfg.Store}
	return migrate.Deps{
		Store:     l.cfg.Store,
		Fenced:    l,
		Log:       l.log,
		HostAlive: inv.HostAlive,
		Check:     l.migrationBlockers,
		SwitchOverOps: func(ctx context.Context, rec migrate.Record) ([]store.Cond, []store.Op, error) {
			// The spec follows the owner record to the target, with its
			// disks attached from the source's own pool now in the target's.
			spec, rev, err := inv.Spec(ctx, rec.VM)
			if err != nil {
				return nil, nil, err
			}
			spec = migrate.MovedSpec(spec, rec.Source, rec.Target)
			spec.Host = rec.Target
			return nil, []store.Op{store.PutOp(inventory.VMKey(rec.VM), inventory.Marshal(spec), rev)}, nil
		},
		EndOps: func(ctx context.Context, rec migrate.Record, ok bool) ([]store.Op, error) {
			// The VM keeps one booking: on the host it runs on now.
			left := rec.Target
			if ok {
				left = rec.Source
			}
			return []store.Op{store.DeleteOp(inventory.AllocKey(left, rec.VM), store.AnyRevision)}, nil
		},
	}
}

// migrationBlockers is what keeps a migration from starting: the
// blockers of internal/migrate over the VM's records and the target's
// capacity as the master books it.
func (l *leader) migrationBlockers(ctx context.Context, rec migrate.Record) ([]migrate.Blocker, error) {
	inv := inventory.Inventory{S: l.cfg.Store}
	spec, _, err := inv.Spec(ctx, rec.VM)
	if err != nil {
		return nil, err
	}
	st, err := inv.Status(ctx, rec.VM)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	snap, err := l.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	ps := snap.poolRecords()
	in := migrate.CheckInput{Spec: spec, Status: st, Pools: ps, Source: rec.Source, Target: rec.Target}
	for _, h := range snap.hosts {
		if h.Name != rec.Target {
			continue
		}
		in.TargetAlive, in.TargetMaintenance, in.TargetPools = h.Alive, h.Maintenance, snap.reached(h)
		booked := 0
		for name, a := range snap.allocs[h.Name] {
			if name != rec.VM { // its own booking there is this migration's
				booked += a.MemoryMiB
			}
		}
		in.TargetFreeMiB = int64(snap.policy.AllocatableMemoryMiB(h.MemoryMiB)) - int64(booked)
	}
	bs := migrate.Blockers(in)
	// Local disks are mirrored into volumes the target makes from the
	// source's report: it must name exactly the disks on local pools.
	bs = append(bs, migrate.ReportBlockers(migrate.LocalDisks(spec, st, ps), rec.Disks)...)
	return bs, nil
}
