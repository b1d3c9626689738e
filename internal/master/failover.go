package master

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/ha"
	"hangar/internal/inventory"
	"hangar/internal/migrate"
	"hangar/internal/qemu/img"
	"hangar/internal/scheduler"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// Bounds of a failover's steps.
const (
	// lockWait is how long a restart waits for its disks' QEMU image locks
	// to be free (the dead host's QEMU surely gone) before it fails.
	lockWait = 20 * time.Second
	// failoverRetry spaces failovers of one host that failed (a fence
	// agent that failed, say): each is a recorded operation.
	failoverRetry = 30 * time.Second
	// DefaultFenceTimeout bounds a fence-agent command.
	DefaultFenceTimeout = time.Minute
)

// fenceRecord starts the warning that records a fence agent's success in
// the failover operation (a resumed failover does not fence again).
const fenceRecord = "fence agent succeeded: "

// failover handles the VMs of a dead host: it records a failover
// operation holding the restart plan (ha.PlanRestarts), or resumes the one
// recorded by an earlier master (ha.Plan.Validate: state is input), runs
// the fence agent if one is configured, restarts each pending HA VM on its
// planned host — owner record taken over (epoch + 1), spec host, booking,
// a start operation and the plan's step in one fenced transaction, once
// its disks' image locks are free — parks those no host can take, and
// marks the rest lost.
func (l *leader) failover(ctx context.Context, host, why string) error {
	op, found, err := l.openFailover(ctx, host)
	if err != nil {
		return err
	}
	if !found {
		need, err := l.needsFailover(ctx, host)
		if err != nil || !need {
			return err
		}
		l.mu.Lock()
		last := l.failedOver[host]
		l.mu.Unlock()
		if time.Since(last) < failoverRetry {
			return nil
		}
		plan, err := l.planFailover(ctx, host)
		if err != nil {
			return err
		}
		op = l.newMasterOp("failover", host, "", nil)
		op.Args = inventory.Marshal(plan)
		op.State, op.Progress = v1.OpRunning, v1.Progress{Phase: "planned: " + why}
		if _, err := l.Commit(ctx, nil, inventory.NewOpWrites(op)...); err != nil {
			return err
		}
		l.log.Info("failover: host dead, restart plan recorded", "host", host, "op", op.ID, "why", why,
			"restarts", len(plan.Restarts), "parked", len(plan.Parked), "lost", len(plan.Lost)+len(plan.Skipped))
	} else {
		l.log.Info("failover: resuming the recorded plan", "host", host, "op", op.ID)
	}
	err = l.runFailover(ctx, op.ID)
	if err != nil && ctx.Err() == nil {
		l.mu.Lock()
		l.failedOver[host] = time.Now()
		l.mu.Unlock()
		if eerr := l.endOp(ctx, op.ID, err, nil); eerr != nil {
			return eerr
		}
	}
	return err
}

// openFailover finds the failover operation of host still running.
func (l *leader) openFailover(ctx context.Context, host string) (v1.Operation, bool, error) {
	ops, _, err := store.ListJSON[v1.Operation](ctx, l.cfg.Store, inventory.Ops)
	if err != nil {
		return v1.Operation{}, false, fmt.Errorf("list operations: %w", err)
	}
	for _, it := range ops {
		o := it.Value
		if o.Kind == "failover" && o.Target == host && !o.Done() && it.Key == inventory.OpKey(o.ID) && vm.ValidateOp(o) == nil {
			return o, true, nil
		}
	}
	return v1.Operation{}, false, nil
}

// needsFailover reports whether a VM of host is still to be handled: meant
// to run, not parked, and not yet marked lost.
func (l *leader) needsFailover(ctx context.Context, host string) (bool, error) {
	specs, _, err := l.specs(ctx)
	if err != nil {
		return false, err
	}
	inv := inventory.Inventory{S: l.cfg.Store}
	for _, sp := range specs {
		if sp.Host != host || sp.Parked || (sp.Power != v1.PowerRunning && sp.Power != v1.PowerPaused) {
			continue
		}
		st, err := inv.Status(ctx, sp.Name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return false, err
		}
		if st.State != v1.StateLost {
			return true, nil
		}
	}
	return false, nil
}

// planFailover reads the pool and makes the restart plan of host's VMs.
func (l *leader) planFailover(ctx context.Context, host string) (ha.Plan, error) {
	snap, err := l.snapshot(ctx)
	if err != nil {
		return ha.Plan{}, err
	}
	pools := snap.poolRecords()
	inv := inventory.Inventory{S: l.cfg.Store}
	var vms []ha.VM
	for _, sp := range snap.specs {
		if sp.Host != host {
			continue
		}
		st, err := inv.Status(ctx, sp.Name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return ha.Plan{}, err
		}
		v := ha.VM{Spec: sp, Pools: migrate.SharedPools(sp, st, pools)}
		for _, d := range migrate.LocalDisks(sp, st, pools) {
			v.LocalDisks = append(v.LocalDisks, d.Name)
		}
		if hr, _, err := l.haRestarts(ctx, sp.Name); err != nil {
			return ha.Plan{}, err
		} else {
			v.Restarts = hr.Times
		}
		vms = append(vms, v)
	}
	return ha.PlanRestarts(ha.Input{Host: host, Now: time.Now(), VMs: vms, Pool: snap.plan()})
}

func (l *leader) pools(ctx context.Context) ([]v1.StoragePool, error) {
	items, err := l.poolItems(ctx)
	return poolValues(items), err
}

// poolItems lists the storage pool records, with their revisions, whose
// key names the pool they hold (state is input: another is left out).
func (l *leader) poolItems(ctx context.Context) ([]store.Item[v1.StoragePool], error) {
	items, _, err := store.ListJSON[v1.StoragePool](ctx, l.cfg.Store, inventory.Pools)
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	return slices.DeleteFunc(items, func(it store.Item[v1.StoragePool]) bool { return it.Key != inventory.PoolKey(it.Value.Name) }), nil
}

// poolValues are the pools of items.
func poolValues(items []store.Item[v1.StoragePool]) []v1.StoragePool {
	var out []v1.StoragePool
	for _, it := range items {
		out = append(out, it.Value)
	}
	return out
}

// haRestarts reads a VM's HA restart times and the record's revision
// (store.MustNotExist when there is none).
func (l *leader) haRestarts(ctx context.Context, name string) (inventory.HARestarts, int64, error) {
	var hr inventory.HARestarts
	rev, err := store.GetJSON(ctx, l.cfg.Store, inventory.HARestartsKey(name), &hr)
	if errors.Is(err, store.ErrNotFound) {
		return inventory.HARestarts{}, store.MustNotExist, nil
	}
	if err != nil {
		return hr, 0, fmt.Errorf("ha restarts of vm %q: %w", name, err)
	}
	if len(hr.Times) > vm.MaxHARestarts {
		hr.Times = hr.Times[len(hr.Times)-vm.MaxHARestarts:]
	}
	return hr, rev, nil
}

// failoverPlan reads a failover operation and its plan, checked.
func (l *leader) failoverPlan(ctx context.Context, id string) (v1.Operation, int64, ha.Plan, error) {
	inv := inventory.Inventory{S: l.cfg.Store}
	op, rev, err := inv.Op(ctx, id)
	if err != nil {
		return op, 0, ha.Plan{}, err
	}
	var plan ha.Plan
	dec := json.NewDecoder(bytes.NewReader(op.Args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&plan); err != nil {
		return op, rev, plan, fmt.Errorf("failover %s: recorded plan: %v: %w", id, err, errdefs.ErrInvalid)
	}
	if err := plan.Validate(); err != nil {
		return op, rev, plan, fmt.Errorf("failover %s: %w", id, err)
	}
	if plan.Host != op.Target {
		return op, rev, plan, fmt.Errorf("failover %s of host %s holds the plan of host %s: %w", id, op.Target, plan.Host, errdefs.ErrInvalid)
	}
	return op, rev, plan, nil
}

// runFailover carries out the recorded plan of failover operation id.
func (l *leader) runFailover(ctx context.Context, id string) error {
	op, _, plan, err := l.failoverPlan(ctx, id)
	if err != nil {
		return err
	}
	if op.Done() {
		return nil
	}
	host := plan.Host
	warnings := op.Warnings
	for _, h := range append(append([]ha.Held{}, plan.Lost...), plan.Skipped...) {
		if err := l.markLost(ctx, h.VM, host, h.Reason, false); err != nil {
			return err
		}
	}
	if l.cfg.FenceAgent != "" && !fencedBy(warnings) {
		l.progress(ctx, id, 0.1, "fence agent")
		rec, err := l.runFenceAgent(ctx, host)
		if err != nil {
			return fmt.Errorf("restarts refused: %w", err)
		}
		warnings = append(warnings, fenceRecord+rec)
		if err := l.setWarnings(ctx, id, warnings); err != nil {
			return err
		}
	}
	// In plan order, first those whose disks are free now, then the rest,
	// each waiting for its locks: a VM whose disk is still locked (its
	// QEMU runs on somewhere) does not hold up the others.
	for _, wait := range []bool{false, true} {
		_, _, plan, err = l.failoverPlan(ctx, id)
		if err != nil {
			return err
		}
		for i, r := range plan.Restarts {
			if r.State != ha.RestartPending {
				continue
			}
			l.progress(ctx, id, 0.2+0.7*float64(i)/float64(len(plan.Restarts)), "restarting "+r.VM+" on "+r.Host)
			if err := l.restartOne(ctx, id, i, wait); err != nil {
				return err
			}
		}
	}
	for _, h := range plan.Parked {
		if err := l.markLost(ctx, h.VM, host, "parked until a host can take it: "+h.Reason, true); err != nil {
			return err
		}
	}
	_, _, plan, err = l.failoverPlan(ctx, id)
	if err != nil {
		return err
	}
	for _, r := range plan.Restarts {
		if r.State == ha.RestartFailed {
			warnings = append(warnings, fmt.Sprintf("%s: not restarted: %s", r.VM, r.Error))
			l.mu.Lock()
			l.failedOver[host] = time.Now() // the next try is a new failover, spaced
			l.mu.Unlock()
		}
	}
	for _, h := range plan.Parked {
		warnings = append(warnings, fmt.Sprintf("%s: parked: %s", h.VM, h.Reason))
	}
	for _, h := range append(append([]ha.Held{}, plan.Lost...), plan.Skipped...) {
		warnings = append(warnings, fmt.Sprintf("%s: lost: %s", h.VM, h.Reason))
	}
	return l.endOp(ctx, id, nil, warnings)
}

func fencedBy(warnings []string) bool {
	for _, w := range warnings {
		if strings.HasPrefix(w, fenceRecord) {
			return true
		}
	}
	return false
}

// setWarnings records a running operation's warnings.
func (l *leader) setWarnings(ctx context.Context, id string, warnings []string) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	op, rev, err := inv.Op(ctx, id)
	if err != nil {
		return err
	}
	op.Warnings, op.Updated = warnings, time.Now().UTC()
	_, err = l.Commit(ctx, nil, store.PutOp(inventory.OpKey(id), inventory.Marshal(op), rev))
	return err
}

// runFenceAgent runs the configured fence agent with the host's name as
// its last argument (no shell) and says what it did.
func (l *leader) runFenceAgent(ctx context.Context, host string) (string, error) {
	args := strings.Fields(l.cfg.FenceAgent)
	if len(args) == 0 {
		return "", nil
	}
	timeout := l.cfg.FenceTimeout
	if timeout <= 0 {
		timeout = DefaultFenceTimeout
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(fctx, args[0], append(args[1:], host)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	took := time.Since(start).Round(time.Millisecond)
	line := strings.Join(append(args, host), " ")
	msg := strings.TrimSpace(string(out))
	if len(msg) > 512 {
		msg = msg[:512]
	}
	if err != nil {
		l.log.Error("fence agent failed: restarts refused", "host", host, "cmd", line, "took", took, "err", err, "output", msg)
		return "", fmt.Errorf("fence agent %q failed after %v: %v: %s: %w", line, took, err, msg, errdefs.ErrPrecondition)
	}
	l.log.Info("fence agent succeeded", "host", host, "cmd", line, "took", took)
	return fmt.Sprintf("%s (%v)", line, took), nil
}

// markLost records a VM of the dead host as lost (the master writes its
// status: its host's agent cannot), conditioned on its spec still placing
// it there; park also parks it (power stopped, booking kept), so that it
// starts when a host can take it.
func (l *leader) markLost(ctx context.Context, name, host, reason string, park bool) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	for attempt := 0; ; attempt++ {
		spec, srev, err := inv.Spec(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		st, strev, err := inv.StatusRev(ctx, name)
		if err != nil {
			return err
		}
		if spec.Host != host || (st.State == v1.StateLost && spec.Parked == park) {
			return nil
		}
		st.State, st.PID, st.StartedAt, st.UpdatedAt = v1.StateLost, 0, nil, time.Now().UTC()
		st.Reason = "host " + host + " is dead: " + reason
		ops := []store.Op{store.PutOp(inventory.StatusKey(name), inventory.Marshal(st), strev)}
		conds := []store.Cond{{Key: inventory.VMKey(name), ExpectRev: srev}}
		if park {
			spec.Power, spec.Parked = v1.PowerStopped, true
			ops = append(ops, store.PutOp(inventory.VMKey(name), inventory.Marshal(spec), srev))
			conds = nil
		}
		_, err = l.Commit(ctx, conds, ops...)
		if errors.Is(err, store.ErrConflict) && attempt < commitAttempts {
			continue
		}
		if err == nil {
			l.log.Info("vm lost with its host", "vm", name, "host", host, "parked", park, "reason", reason)
		}
		return err
	}
}

// restartOne carries out restart i of a failover's plan: once the VM's
// disks' image locks are free, one fenced transaction moves its owner
// record (epoch + 1), spec host, booking and status, records a start
// operation for the new host and the restart time, and marks the step
// done in the plan — conditioned on every record read, so a step is done
// once whichever master runs it.
func (l *leader) restartOne(ctx context.Context, id string, i int, wait bool) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	locksChecked := false
	for attempt := 0; ; attempt++ {
		op, orev, plan, err := l.failoverPlan(ctx, id)
		if err != nil {
			return err
		}
		r := plan.Restarts[i]
		if r.State != ha.RestartPending {
			return nil
		}
		fail := func(cause string) error {
			plan.Restarts[i].State, plan.Restarts[i].Error = ha.RestartFailed, cause
			op.Args, op.Updated = inventory.Marshal(plan), time.Now().UTC()
			l.log.Warn("failover: restart failed", "vm", r.VM, "host", plan.Host, "to", r.Host, "err", cause)
			_, err := l.Commit(ctx, nil, store.PutOp(inventory.OpKey(id), inventory.Marshal(op), orev))
			return err
		}
		spec, srev, err := inv.Spec(ctx, r.VM)
		if errors.Is(err, store.ErrNotFound) {
			return fail("the vm was deleted")
		}
		if err != nil {
			return err
		}
		owner, owrev, err := inv.OwnerOf(ctx, r.VM)
		switch {
		case errors.Is(err, store.ErrNotFound):
			owner, owrev = inventory.Owner{Host: plan.Host}, store.MustNotExist
		case err != nil:
			return err
		}
		if spec.Host != plan.Host || owner.Host != plan.Host {
			// Moved by someone else meanwhile (never by this plan: its step
			// is marked done in the same transaction).
			return fail(fmt.Sprintf("the vm is on host %s now (owner %s)", spec.Host, owner.Host))
		}
		st, strev, err := inv.StatusRev(ctx, r.VM)
		if err != nil {
			return err
		}
		if !locksChecked {
			if err := l.waitLocksFree(ctx, spec, st, wait); errors.Is(err, errLocked) {
				return nil // still pending: the second pass waits for it
			} else if err != nil {
				return fail(err.Error())
			}
			locksChecked = true
		}
		hr, hrrev, err := l.haRestarts(ctx, r.VM)
		if err != nil {
			return err
		}
		// The plan may be older than the pool's bookings (an earlier
		// master's, or made before other VMs were placed): its host is
		// checked again against them, and the VM placed anew — or parked —
		// when it no longer fits. The commit is conditioned on the
		// bookings read.
		snap, err := l.snapshot(ctx)
		if err != nil {
			return err
		}
		to, why, err := replan(snap, spec, plan.Host, r.Host)
		if err != nil {
			return err
		}
		if to == "" {
			if err := fail("no host can take it now: " + why); err != nil {
				return err
			}
			return l.markLost(ctx, r.VM, plan.Host, "parked until a host can take it: "+why, true)
		}
		if to != r.Host {
			l.log.Info("failover: the planned host no longer takes the vm", "vm", r.VM, "planned", r.Host, "to", to, "why", why)
			r.Host, plan.Restarts[i].Host = to, to
		}
		now := time.Now().UTC()
		hr.Times = append(hr.Times, now)
		started := spec
		started.Host, started.Power, started.Parked = r.Host, v1.PowerRunning, false
		st.State, st.PID, st.StartedAt, st.UpdatedAt = v1.StateStopped, 0, nil, now
		st.Reason = fmt.Sprintf("host %s died: restarting on %s (HA restart %d)", plan.Host, r.Host, r.Attempt)
		plan.Restarts[i].State = ha.RestartDone
		op.Args, op.Updated = inventory.Marshal(plan), now
		start := l.newMasterOp("start", r.VM, r.Host, nil)
		ops := append(inventory.NewOpWrites(start),
			store.PutOp(inventory.OpKey(id), inventory.Marshal(op), orev),
			store.PutOp(inventory.VMKey(r.VM), inventory.Marshal(started), srev),
			store.PutOp(inventory.OwnerKey(r.VM), inventory.Marshal(inventory.Owner{Host: r.Host, Epoch: owner.Epoch + 1}), owrev),
			store.PutOp(inventory.StatusKey(r.VM), inventory.Marshal(st), strev),
			store.PutOp(inventory.HARestartsKey(r.VM), inventory.Marshal(hr), hrrev),
			store.DeleteOp(inventory.AllocKey(plan.Host, r.VM), store.AnyRevision),
			store.PutOp(inventory.AllocKey(r.Host, r.VM), inventory.Marshal(allocOf(spec)), store.AnyRevision))
		_, err = l.Commit(ctx, []store.Cond{store.Unchanged(inventory.Allocs, snap.rev)}, ops...)
		if errors.Is(err, store.ErrConflict) && attempt < commitAttempts {
			continue
		}
		if err != nil {
			return err
		}
		l.log.Info("failover: vm restarts on another host", "vm", r.VM, "from", plan.Host, "to", r.Host,
			"epoch", owner.Epoch+1, "attempt", r.Attempt, "start", start.ID)
		return nil
	}
}

// replan checks that planned, the host a failover's plan gives the VM of
// dead, still takes it under the bookings of snap, and else places it
// anew on the others; "" (and why) when no host can take it now.
func replan(snap snapshot, spec v1.VMSpec, dead, planned string) (host, why string, err error) {
	req := snap.request(spec, "")
	req.Exclude = append(req.Exclude, dead)
	keep := req
	keep.Placement, keep.PreferredHosts = scheduler.PlacementManual, []string{planned}
	for _, r := range []scheduler.Request{keep, req} {
		res, err := scheduler.Plan(snap.plan(), []scheduler.Request{r})
		if err != nil {
			return "", "", fmt.Errorf("plan: %w", err)
		}
		if res[0].Err == nil {
			return res[0].Host, why, nil
		}
		if why == "" {
			why = res[0].Err.Error()
		}
	}
	return "", why, nil
}

// errLocked: a disk's image lock is held (waitLocksFree without waiting).
var errLocked = errors.New("image lock held")

// waitLocksFree waits until no process holds the QEMU image lock of the
// VM's disks on shared pools (qemu-img info, which takes the shared lock
// a running QEMU's write lock refuses), at most lockWait; without wait it
// looks once and answers errLocked.
func (l *leader) waitLocksFree(ctx context.Context, spec v1.VMSpec, st v1.VMStatus, wait bool) error {
	pools, err := l.pools(ctx)
	if err != nil {
		return err
	}
	var files []string
	for _, d := range spec.Disks {
		if d.Media == "cdrom" {
			continue
		}
		for _, ds := range st.Disks {
			if ds.Name != d.Name {
				continue
			}
			f := ds.Top
			if f == "" {
				f = ds.Path
			}
			if onSharedPool(pools, f) {
				files = append(files, f)
			}
		}
	}
	deadline := time.Now().Add(lockWait)
	for _, f := range files {
		for {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := img.Run(cctx, nil, "info", f)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !wait {
				return errLocked
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("image lock of %s not free after %v: %v", f, lockWait, err)
			}
			l.log.Info("failover: waiting for an image lock", "vm", spec.Name, "file", f, "err", err)
			select {
			case <-time.After(500 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

// onSharedPool reports whether path is an absolute, clean path inside a
// shared pool's directory (a path read from a record is input: nothing
// else is handed to qemu-img).
func onSharedPool(pools []v1.StoragePool, path string) bool {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return false
	}
	for _, p := range pools {
		if p.Type == "shared" && p.Path != "" && strings.HasPrefix(path, filepath.Clean(p.Path)+"/") {
			return true
		}
	}
	return false
}
