package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/qemu"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// A host that comes back after the pool master restarted its VMs
// elsewhere (HA failover) may still run a copy of one: a host that was
// isolated, or an agent restarted while its QEMUs ran on. The VM's owner
// record (/hangar/owner/<vm>) says which host runs it; the agent kills any
// local QEMU of a VM another host owns, before it starts or adopts
// anything at start and whenever an owner record changes, and writes
// nothing for it (its status is the owner's).

// ownedElsewhere reports the host that owns name when it is not this one
// ("" when this host owns it or no owner record exists yet: a VM placed
// before there was a master).
func (a *Agent) ownedElsewhere(ctx context.Context, name string) (string, error) {
	o, _, err := a.inv.OwnerOf(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if o.Host != a.cfg.Host {
		return o.Host, nil
	}
	return "", nil
}

// migrating reports whether a migration of name is recorded: its owner
// record changes at the switch-over while the source's copy is still
// there, and the migration's own steps clean that copy up.
func (a *Agent) migrating(ctx context.Context, name string) (bool, error) {
	_, err := a.cfg.Store.Get(ctx, inventory.MigrationKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// errOwnedElsewhere refuses to start a VM another host owns.
func errOwnedElsewhere(name, owner string) error {
	return errdefs.Precondition("vm %s: host %s owns it now (its owner record): not started here", name, owner)
}

// killStale kills the worker's QEMU of a VM another host owns, and one
// left running by an earlier agent that no worker adopted. It reports
// whether the VM is another host's (the worker then writes nothing).
func (m *machine) killStale(ctx context.Context) (bool, error) {
	owner, err := m.a.ownedElsewhere(ctx, m.name)
	if err != nil || owner == "" {
		return false, err
	}
	if mig, err := m.a.migrating(ctx, m.name); err != nil || mig {
		return false, err
	}
	inst := m.inst
	if inst == nil {
		runDir, err := m.a.runDir(m.name)
		if err != nil {
			return true, err
		}
		if inst, err = qemu.Adopt(ctx, m.name, runDir, m.log); err != nil {
			return true, nil // no QEMU of it here
		}
	}
	m.log.Error("killing a stale copy: another host owns this vm now", "owner", owner, "pid", inst.PID)
	m.inst = nil // its exit is not the VM's: nothing is recorded for it
	m.a.live.drop(m.name, inst)
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := inst.Kill(kctx); err != nil {
		return true, fmt.Errorf("kill stale copy of %s (pid %d): %w", m.name, inst.PID, err)
	}
	m.deleteTaps(ctx)
	return true, nil
}

// localRunDirs names the VMs that have a run directory on this host (a
// QEMU of theirs may run here).
func (a *Agent) localRunDirs() []string {
	ents, err := os.ReadDir(filepath.Join(a.cfg.RunDir, "vms"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && vm.ValidateName("name", e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// watchOwners hands every VM whose owner record names another host while
// a QEMU of it runs here to its worker (task stale), from a full list at
// start and after a lost watch, then from the watch.
func (a *Agent) watchOwners(ctx context.Context) {
	for ctx.Err() == nil {
		kvs, rev, err := a.cfg.Store.List(ctx, inventory.Owners)
		if err != nil {
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
			continue
		}
		for _, kv := range kvs {
			a.ownerChanged(kv)
		}
		wctx, cancel := context.WithCancel(ctx)
		for ev := range a.cfg.Store.Watch(wctx, inventory.Owners, rev+1) {
			if ev.Type == store.EventPut {
				a.ownerChanged(ev.KV)
			}
		}
		cancel()
	}
}

func (a *Agent) ownerChanged(kv store.KV) {
	var o inventory.Owner
	if json.Unmarshal(kv.Value, &o) != nil || o.Host == a.cfg.Host {
		return
	}
	name := inventory.NameFromKey(kv.Key)
	if _, runs := a.live.all()[name]; runs {
		a.enqueue(name, task{stale: true})
	}
}

// reportRunning writes the state of the worker's QEMU again: while the
// host had no lease the pool master may have marked the VM lost (it
// judged the host dead); the QEMU ran on, and the status says so again
// unless another host owns the VM now (setStatus refuses, and the owner
// watch kills this copy).
func (m *machine) reportRunning(ctx context.Context) {
	inst := m.inst
	if inst == nil {
		return
	}
	qs, err := inst.Mon.QueryStatus(ctx)
	if err != nil {
		m.log.Warn("report state: query-status", "err", err)
		return
	}
	state := v1.StateRunning
	if !qs.Running {
		state = v1.StatePaused
	}
	if err := m.setStatus(ctx, func(st *v1.VMStatus) {
		if st.State == v1.StateLost {
			m.running(st, inst, state)
			st.Reason = ""
		}
	}); err != nil {
		m.log.Warn("report state", "err", err)
	}
}
