package master

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/migrate"
	"hangar/internal/scheduler"
	"hangar/internal/store"
)

// Bounds of an evacuation's waits.
const (
	// vmOpTimeout bounds one migration or shutdown the evacuation waits for.
	vmOpTimeout = 15 * time.Minute
	opPoll      = 200 * time.Millisecond
)

// startEvacuation claims a pending evacuate operation (running, the host
// in maintenance: the scheduler places nothing more there) and runs it;
// one found running after a change of master is run again: every step
// looks at what is still on the host.
func (l *leader) startEvacuation(ctx context.Context, id string) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	op, rev, err := inv.Op(ctx, id)
	if err != nil {
		return err
	}
	if op.Done() || op.Kind != "evacuate" {
		return nil
	}
	if op.State == v1.OpPending {
		op.State, op.Updated = v1.OpRunning, time.Now().UTC()
		op.Progress = v1.Progress{Phase: "maintenance"}
		if _, err := l.Commit(ctx, nil, store.PutOp(inventory.OpKey(op.ID), inventory.Marshal(op), rev),
			store.PutOp(inventory.MaintenanceKey(op.Target), []byte(op.ID), store.AnyRevision)); err != nil {
			return err
		}
		l.log.Info("evacuation started: host in maintenance", "host", op.Target, "op", op.ID)
	}
	l.background(ctx, "evacuate/"+op.Target, func(ctx context.Context) error { return l.evacuate(ctx, op.ID) })
	return nil
}

// background runs f once per key at a time, for as long as this term.
func (l *leader) background(ctx context.Context, key string, f func(context.Context) error) {
	l.mu.Lock()
	if l.driving == nil {
		l.driving = map[string]bool{}
	}
	if l.driving[key] {
		l.mu.Unlock()
		return
	}
	l.driving[key] = true
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer func() {
			l.mu.Lock()
			delete(l.driving, key)
			l.mu.Unlock()
		}()
		if err := f(ctx); err != nil && ctx.Err() == nil {
			l.log.Warn("background work", "what", key, "err", err)
		}
	}()
}

// evacuate moves every running VM off the host: live migration to the
// best other host, or — when none can take it, when the migration fails,
// or when asked to — a clean shutdown that parks it.
func (l *leader) evacuate(ctx context.Context, id string) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	op, _, err := inv.Op(ctx, id)
	if err != nil {
		return err
	}
	var args v1.EvacuateArgs
	if len(op.Args) > 0 {
		dec := json.NewDecoder(bytes.NewReader(op.Args))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&args); err != nil {
			return l.endOp(ctx, id, fmt.Errorf("evacuate args: %v: %w", err, errdefs.ErrInvalid), nil)
		}
	}
	host := op.Target
	specs, _, err := l.specs(ctx)
	if err != nil {
		return err
	}
	var todo []v1.VMSpec
	for _, sp := range specs {
		if sp.Host == host {
			todo = append(todo, sp)
		}
	}
	var warnings []string
	for i, sp := range todo {
		st, err := inv.Status(ctx, sp.Name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if st.State != v1.StateRunning && st.State != v1.StatePaused {
			continue // stopped VMs stay with their disks; nothing runs there
		}
		l.progress(ctx, id, float64(i)/float64(len(todo)), "moving "+sp.Name)
		if !args.Shutdown {
			target, perr := l.evacuationTarget(ctx, sp, host)
			if perr == nil {
				res, err := l.runAndWait(ctx, l.newMasterOp("migrate", sp.Name, "", v1.MigrateArgs{To: target}))
				if err != nil {
					return err
				}
				if res.State == v1.OpSucceeded {
					l.log.Info("evacuated", "vm", sp.Name, "from", host, "to", target)
					continue
				}
				warnings = append(warnings, fmt.Sprintf("%s: migration to %s failed (%s): parked", sp.Name, target, errText(res.Error)))
			} else {
				warnings = append(warnings, fmt.Sprintf("%s: no host can take it (%v): parked", sp.Name, perr))
			}
		} else {
			warnings = append(warnings, sp.Name+": shut down and parked, as asked")
		}
		if err := l.park(ctx, sp.Name, host); err != nil {
			return err
		}
	}
	return l.endOp(ctx, id, nil, warnings)
}

func errText(e *v1.Error) string {
	if e == nil {
		return "unknown error"
	}
	return e.Message
}

// evacuationTarget is the best other host for a VM leaving host.
func (l *leader) evacuationTarget(ctx context.Context, spec v1.VMSpec, host string) (string, error) {
	snap, err := l.snapshot(ctx)
	if err != nil {
		return "", err
	}
	req := snap.request(spec, "")
	req.Exclude = append(req.Exclude, host)
	if req.Placement == scheduler.PlacementManual {
		req.Placement = scheduler.PlacementPreferred // its host is going away: any host will do
	}
	plan, err := scheduler.Plan(snap.plan(), []scheduler.Request{req})
	if err != nil {
		return "", err
	}
	return plan[0].Host, plan[0].Err
}

// park shuts a VM down cleanly on its host and marks it parked (its
// booking there stays: it starts there again when it can).
func (l *leader) park(ctx context.Context, name, host string) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	for attempt := 0; ; attempt++ {
		spec, rev, err := inv.Spec(ctx, name)
		if err != nil {
			return err
		}
		spec.Power, spec.Parked = v1.PowerStopped, true
		op := l.newMasterOp("stop", name, host, v1.StopArgs{})
		_, err = l.Commit(ctx, []store.Cond{}, append(inventory.NewOpWrites(op),
			store.PutOp(inventory.VMKey(name), inventory.Marshal(spec), rev))...)
		if errors.Is(err, store.ErrConflict) && attempt < commitAttempts {
			continue
		}
		if err != nil {
			return err
		}
		res, err := l.wait(ctx, op.ID)
		if err != nil {
			return err
		}
		l.log.Info("vm parked", "vm", name, "host", host, "stop", res.State)
		return nil
	}
}

// unpark starts parked VMs where they can run: on their own host once it
// is live and out of maintenance, or — when every disk is on a shared pool
// — on the best live host, moving its owner record (epoch + 1) and its
// booking there in the same transaction.
func (l *leader) unpark(ctx context.Context) error {
	specs, revs, err := l.specs(ctx)
	if err != nil {
		return err
	}
	var snap *snapshot
	for i, sp := range specs {
		if !sp.Parked {
			continue
		}
		if snap == nil {
			s, err := l.snapshot(ctx)
			if err != nil {
				return err
			}
			snap = &s
		}
		if err := l.unparkOne(ctx, *snap, sp, revs[i]); err != nil && !errors.Is(err, store.ErrConflict) {
			l.log.Warn("start parked vm", "vm", sp.Name, "err", err)
		}
	}
	return nil
}

func (l *leader) unparkOne(ctx context.Context, snap snapshot, sp v1.VMSpec, rev int64) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	usable := func(name string) bool {
		i := slices.IndexFunc(snap.hosts, func(h v1.Host) bool { return h.Name == name })
		return i >= 0 && snap.hosts[i].Alive && !snap.hosts[i].Maintenance
	}
	started := sp
	started.Power, started.Parked = v1.PowerRunning, false
	if usable(sp.Host) {
		op := l.newMasterOp("start", sp.Name, sp.Host, nil)
		if _, err := l.Commit(ctx, nil, append(inventory.NewOpWrites(op), store.PutOp(inventory.VMKey(sp.Name), inventory.Marshal(started), rev))...); err != nil {
			return err
		}
		l.log.Info("parked vm starts on its host", "vm", sp.Name, "host", sp.Host)
		return nil
	}
	st, err := inv.Status(ctx, sp.Name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if st.State != v1.StateStopped && st.State != v1.StateCrashed && st.State != v1.StateLost {
		return nil // not down yet (or unknown): never start a VM twice
	}
	ps := snap.poolRecords()
	if len(migrate.LocalDisks(sp, st, ps)) > 0 {
		return nil // its disks stay on its host: it waits for that host
	}
	owner, orev, err := inv.OwnerOf(ctx, sp.Name)
	if err != nil {
		return err
	}
	req := snap.request(sp, "")
	req.Pools = migrate.SharedPools(sp, st, ps) // its disks' pools as it has them
	req.Exclude = append(req.Exclude, sp.Host)
	if req.Placement == scheduler.PlacementManual {
		req.Placement = scheduler.PlacementPreferred
	}
	plan, err := scheduler.Plan(snap.plan(), []scheduler.Request{req})
	if err != nil {
		return err
	}
	to := plan[0].Host
	if plan[0].Err != nil {
		return nil // still no room: stays parked
	}
	started.Host = to
	op := l.newMasterOp("start", sp.Name, to, nil)
	ops := append(inventory.NewOpWrites(op),
		store.PutOp(inventory.VMKey(sp.Name), inventory.Marshal(started), rev),
		store.PutOp(inventory.OwnerKey(sp.Name), inventory.Marshal(inventory.Owner{Host: to, Epoch: owner.Epoch + 1}), orev),
		store.DeleteOp(inventory.AllocKey(sp.Host, sp.Name), store.AnyRevision),
		store.PutOp(inventory.AllocKey(to, sp.Name), inventory.Marshal(allocOf(sp)), store.AnyRevision))
	if _, err := l.Commit(ctx, []store.Cond{store.Unchanged(inventory.Allocs, snap.rev)}, ops...); err != nil {
		return err
	}
	l.log.Info("parked vm starts on another host (its disks are shared)", "vm", sp.Name, "from", sp.Host, "to", to, "epoch", owner.Epoch+1)
	return nil
}

// newMasterOp is an operation the master records itself (host "" for one
// it drives).
func (l *leader) newMasterOp(kind, target, host string, args any) v1.Operation {
	now := time.Now().UTC()
	op := v1.Operation{ID: uuid.Must(uuid.NewV7()).String(), Kind: kind, Target: target, Host: host,
		State: v1.OpPending, Created: now, Updated: now, Progress: v1.Progress{Phase: "queued"}}
	if args != nil {
		op.Args = inventory.Marshal(args)
	}
	return op
}

// runAndWait records op (fenced) and waits for its end.
func (l *leader) runAndWait(ctx context.Context, op v1.Operation) (v1.Operation, error) {
	if _, err := l.Commit(ctx, nil, inventory.NewOpWrites(op)...); err != nil {
		return v1.Operation{}, err
	}
	return l.wait(ctx, op.ID)
}

// wait polls an operation until it ends.
func (l *leader) wait(ctx context.Context, id string) (v1.Operation, error) {
	inv := inventory.Inventory{S: l.cfg.Store}
	deadline := time.Now().Add(vmOpTimeout)
	for {
		op, _, err := inv.Op(ctx, id)
		if err != nil {
			return op, err
		}
		if op.Done() {
			return op, nil
		}
		if time.Now().After(deadline) {
			return op, fmt.Errorf("operation %s (%s %s) still %s after %v", id, op.Kind, op.Target, op.State, vmOpTimeout)
		}
		select {
		case <-time.After(opPoll):
		case <-ctx.Done():
			return op, ctx.Err()
		}
	}
}

// progress records how far a master-driven operation is.
func (l *leader) progress(ctx context.Context, id string, f float64, phase string) {
	inv := inventory.Inventory{S: l.cfg.Store}
	op, rev, err := inv.Op(ctx, id)
	if err != nil || op.Done() {
		return
	}
	op.Progress, op.Updated = v1.Progress{Fraction: f, Phase: phase}, time.Now().UTC()
	_, _ = l.Commit(ctx, nil, store.PutOp(inventory.OpKey(id), inventory.Marshal(op), rev))
}

// endOp records the end of a master-driven operation.
func (l *leader) endOp(ctx context.Context, id string, cause error, warnings []string) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	op, rev, err := inv.Op(ctx, id)
	if err != nil {
		return err
	}
	if op.Done() {
		return nil
	}
	op.Updated, op.Warnings = time.Now().UTC(), warnings
	if cause != nil {
		op.State, op.Error = v1.OpFailed, errdefs.ToAPI(cause)
	} else {
		op.State, op.Progress = v1.OpSucceeded, v1.Progress{Fraction: 1, Phase: "done"}
	}
	if _, err := l.Commit(ctx, nil, store.PutOp(inventory.OpKey(id), inventory.Marshal(op), rev)); err != nil {
		return err
	}
	l.log.Info("operation finished", "op", id, "kind", op.Kind, "target", op.Target, "state", op.State, "warnings", strings.Join(warnings, "; "))
	return nil
}
