package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// Fenced is the pool master's leadership-conditioned commit
// (master.Session.Commit): the ops apply only while the caller leads and
// every cond and op condition holds; else store.ErrConflict (or an error
// saying leadership is lost).
type Fenced interface {
	Commit(ctx context.Context, conds []store.Cond, ops ...store.Op) (int64, error)
}

// Deps is what Drive needs from the master.
type Deps struct {
	Store  store.Store // reads and watches (any client of the pool's etcd)
	Fenced Fenced
	// Check returns the blockers of rec's migration (Blockers over what
	// the master knows of the VM and the target; rec.Disks is the
	// source's report of its local disks, to be checked against the VM's
	// records); an error is a failure to find out, retried.
	Check func(ctx context.Context, rec Record) ([]Blocker, error)
	// HostAlive says whether a host's liveness lease exists.
	HostAlive func(ctx context.Context, host string) (bool, error)
	// SwitchOverOps, if set, adds writes (and conditions) to the
	// switch-over transaction: e.g. spec host and the allocation moved to
	// the target.
	SwitchOverOps func(ctx context.Context, rec Record) ([]store.Cond, []store.Op, error)
	// EndOps, if set, adds writes to the transaction that deletes the
	// records: e.g. the allocation of the host the VM left (ok) or of the
	// target it never reached (!ok).
	EndOps func(ctx context.Context, rec Record, ok bool) ([]store.Op, error)
	Log    *slog.Logger
	// Poll is how often Drive looks again without a watch event (default
	// 1 s: host liveness changes are not watched).
	Poll time.Duration
}

// NewRecord is the record of a new migration of a VM that host source
// owns at epoch; the master writes it with its Operation (RecordOps).
func NewRecord(op v1.Operation, args v1.MigrateArgs, source string, epoch int64, now time.Time) (Record, error) {
	r := Record{VM: op.Target, OpID: op.ID, Source: source, Target: args.To, Phase: Pending, Epoch: epoch, Args: args,
		Created: now.UTC(), Updated: now.UTC()}
	return r, r.Validate(op.Target)
}

// RecordOps are the writes that start a migration: the record must not
// exist (one migration per VM at a time).
func RecordOps(r Record) ([]store.Op, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return []store.Op{store.PutOp(inventory.MigrationKey(r.VM), b, store.MustNotExist)}, nil
}

// loaded is a View with the revisions it was read at.
type loaded struct {
	View
	recRev, ownerRev, opRev int64
	op                      v1.Operation
	exists                  bool
}

func load(ctx context.Context, d Deps, vmName string) (loaded, error) {
	var l loaded
	kv, err := d.Store.Get(ctx, inventory.MigrationKey(vmName))
	if errors.Is(err, store.ErrNotFound) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	rec, err := DecodeRecord(vmName, kv.Value)
	if err != nil {
		return l, err
	}
	l.exists, l.Rec, l.recRev = true, rec, kv.Revision
	if l.Source, l.Target, l.Disks, err = loadParts(ctx, d.Store, vmName); err != nil {
		return l, err
	}
	if kv, err := d.Store.Get(ctx, inventory.OwnerKey(vmName)); err == nil {
		var o inventory.Owner
		if err := json.Unmarshal(kv.Value, &o); err != nil || vm.ValidateName("host", o.Host) != nil || o.Epoch < 0 {
			return l, fmt.Errorf("owner record of %s: invalid (%v)", vmName, err)
		}
		l.OwnerHost, l.OwnerEpoch, l.ownerRev = o.Host, o.Epoch, kv.Revision
	} else if !errors.Is(err, store.ErrNotFound) {
		return l, err
	}
	kv, err = d.Store.Get(ctx, inventory.OpKey(rec.OpID))
	switch {
	case err == nil:
		if err := json.Unmarshal(kv.Value, &l.op); err != nil || l.op.ID != rec.OpID || l.op.Kind != "migrate" || l.op.Target != vmName {
			return l, fmt.Errorf("operation %s of the migration of %s: invalid record", rec.OpID, vmName)
		}
		l.opRev = kv.Revision
		l.OpFinal = l.op.State == v1.OpSucceeded || l.op.State == v1.OpFailed || l.op.State == v1.OpCancelled
		l.Cancel = l.op.State == v1.OpCancelled
	case errors.Is(err, store.ErrNotFound):
		l.OpFinal = true // nothing to report to
	default:
		return l, err
	}
	l.Now = time.Now()
	if l.SourceAlive, err = d.HostAlive(ctx, rec.Source); err != nil {
		return l, err
	}
	if l.TargetAlive, err = d.HostAlive(ctx, rec.Target); err != nil {
		return l, err
	}
	return l, nil
}

// Drive runs the migration of vm to its end as the master: it reads the
// records, applies Next's actions as fenced commits, and waits for the
// agents' parts to change. It returns nil when the records are gone (the
// migration ended, now or before), or an error when ctx ends or the
// master loses its leadership (the master cancels ctx then; the next
// master calls Drive again for every record under /hangar/migrations/). Every
// action is conditioned on the revisions it was decided from, so a
// conflict only means "look again".
func Drive(ctx context.Context, d Deps, vmName string) error {
	log := d.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("vm", vmName, "component", "migration")
	poll := d.Poll
	if poll <= 0 {
		poll = time.Second
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changes := d.Store.Watch(wctx, inventory.MigrationKey(vmName), 0)
	for {
		wait := poll
		l, err := load(ctx, d, vmName)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			log.Warn("cannot read migration", "err", err)
		} else if !l.exists {
			return nil
		} else {
			err := step(ctx, d, l, log)
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case errors.Is(err, store.ErrConflict):
				wait = 20 * time.Millisecond // a record moved under us: decide again from what is there now
			case err != nil:
				log.Warn("migration step failed", "phase", l.Rec.Phase, "err", err)
			}
		}
		select {
		case _, ok := <-changes:
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				changes = d.Store.Watch(wctx, inventory.MigrationKey(vmName), 0)
			}
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// step applies the actions Next decides for l, and mirrors the source's
// progress into the Operation.
func step(ctx context.Context, d Deps, l loaded, log *slog.Logger) error {
	acts := Next(l.View)
	rec := l.Rec
	recRev, opRev := l.recRev, l.opRev
	for _, a := range acts {
		log.Info("migration step", "phase", rec.Phase, "action", a.Kind, "to", a.Phase, "error", a.Error)
		switch a.Kind {
		case ActCheck:
			next := rec
			if l.Disks != nil {
				next.Disks = l.Disks.Disks
			}
			bs, err := d.Check(ctx, next)
			if err != nil {
				return fmt.Errorf("check: %w", err)
			}
			next.Phase = Checked
			if len(bs) > 0 {
				msgs := make([]string, len(bs))
				for i, b := range bs {
					msgs[i] = b.String()
				}
				next.Phase, next.Error = Aborting, "blocked: "+strings.Join(msgs, "; ")
			}
			if recRev, err = putRecord(ctx, d, next, recRev, l.ownerCond()); err != nil {
				return err
			}
			rec = next
		case ActSetPhase:
			next := rec
			next.Phase = a.Phase
			if a.Error != "" {
				next.Error = a.Error
			}
			var err error
			if recRev, err = putRecord(ctx, d, next, recRev, nil); err != nil {
				return err
			}
			rec = next
		case ActSwitchOver:
			next := rec
			next.Phase, next.Updated = SwitchedOver, time.Now().UTC()
			rb, err := json.Marshal(next)
			if err != nil {
				return err
			}
			ob, err := json.Marshal(inventory.Owner{Host: rec.Target, Epoch: rec.Epoch + 1})
			if err != nil {
				return err
			}
			conds := []store.Cond{}
			ops := []store.Op{store.PutOp(inventory.MigrationKey(rec.VM), rb, recRev),
				store.PutOp(inventory.OwnerKey(rec.VM), ob, l.ownerRev)}
			if d.SwitchOverOps != nil {
				c, o, err := d.SwitchOverOps(ctx, rec)
				if err != nil {
					return fmt.Errorf("switch-over: %w", err)
				}
				conds, ops = append(conds, c...), append(ops, o...)
			}
			if recRev, err = d.Fenced.Commit(ctx, conds, ops...); err != nil {
				return fmt.Errorf("switch-over: %w", err)
			}
			rec = next
			log.Info("migration switched over", "from", rec.Source, "to", rec.Target, "epoch", rec.Epoch+1)
		case ActFinishOp:
			if l.opRev == 0 || l.OpFinal {
				continue
			}
			op := l.op
			op.Updated = time.Now().UTC()
			if a.Succeeded {
				op.State, op.Progress.Fraction, op.Progress.Phase = v1.OpSucceeded, 1, "done"
			} else {
				op.State = v1.OpFailed
				op.Error = &v1.Error{Code: v1.CodeFailedPrecondition, Message: "migrate " + rec.VM + " to " + rec.Target + ": " + a.Error}
			}
			b, err := json.Marshal(op)
			if err != nil {
				return err
			}
			if _, err := d.Fenced.Commit(ctx, nil, store.PutOp(inventory.OpKey(op.ID), b, opRev)); err != nil {
				return fmt.Errorf("finish operation: %w", err)
			}
		case ActDelete:
			ops := []store.Op{store.DeleteOp(inventory.MigrationKey(rec.VM), recRev),
				store.DeleteOp(inventory.MigrationPartKey(rec.VM, PartSource), store.AnyRevision),
				store.DeleteOp(inventory.MigrationPartKey(rec.VM, PartTarget), store.AnyRevision),
				store.DeleteOp(inventory.MigrationPartKey(rec.VM, PartDisks), store.AnyRevision)}
			if lo := LeftoverOf(rec, l.Source); lo != nil {
				// The source was away at the end: its agent deletes its
				// copies of the disks when it is back.
				b, err := json.Marshal(lo)
				if err != nil {
					return err
				}
				ops = append(ops, store.PutOp(inventory.LeftoverKey(rec.Source, rec.VM), b, store.AnyRevision))
				log.Info("migration: the source keeps its copies of the local disks until it is back", "source", rec.Source, "disks", len(rec.Disks))
			}
			if d.EndOps != nil {
				more, err := d.EndOps(ctx, rec, rec.Phase == Done)
				if err != nil {
					return err
				}
				ops = append(ops, more...)
			}
			if _, err := d.Fenced.Commit(ctx, nil, ops...); err != nil {
				return fmt.Errorf("delete migration records: %w", err)
			}
			return nil
		}
	}
	if len(acts) == 0 && !l.OpFinal && l.Source != nil && l.opRev != 0 {
		return mirrorProgress(ctx, d, l)
	}
	return nil
}

// ownerCond: the check is conditioned on the owner record it read.
func (l loaded) ownerCond() []store.Cond {
	if l.ownerRev == 0 {
		return nil
	}
	return []store.Cond{{Key: inventory.OwnerKey(l.Rec.VM), ExpectRev: l.ownerRev}}
}

func putRecord(ctx context.Context, d Deps, r Record, rev int64, conds []store.Cond) (int64, error) {
	r.Updated = time.Now().UTC()
	b, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	n, err := d.Fenced.Commit(ctx, conds, store.PutOp(inventory.MigrationKey(r.VM), b, rev))
	if err != nil {
		return 0, fmt.Errorf("record phase %s: %w", r.Phase, err)
	}
	return n, nil
}

// mirrorProgress copies the source's progress into the Operation (phase
// and figures), when it changed.
func mirrorProgress(ctx context.Context, d Deps, l loaded) error {
	p := l.Source.Progress
	if p.Phase == "" {
		p.Phase = string(l.Rec.Phase)
	}
	op := l.op
	if op.State == v1.OpPending {
		op.State = v1.OpRunning
	} else if progressEqual(op.Progress, p) {
		return nil
	}
	op.Progress, op.Updated = p, time.Now().UTC()
	b, err := json.Marshal(op)
	if err != nil {
		return err
	}
	_, err = d.Fenced.Commit(ctx, nil, store.PutOp(inventory.OpKey(op.ID), b, l.opRev))
	return err
}

func progressEqual(a, b v1.Progress) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
