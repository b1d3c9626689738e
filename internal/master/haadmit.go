package master

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/ha"
	"hangar/internal/inventory"
	"hangar/internal/migrate"
	"hangar/internal/scheduler"
	"hangar/internal/store"
)

// AdmitHA is HA admission control (N+1): it refuses change — a VM's spec
// as it would be, placed on change.Host — when, with it, the HA VMs of the
// pool's largest hosts (PoolSettings.HAFailures of them) could not restart
// on the others. It admits at once what would not restart anyway (HA off,
// not meant to run) and, when the pool has no more live hosts than the
// failures to tolerate, everything: such a pool has nowhere to keep room.
// The API asks it before a start or HA turned on; the master asks it
// again when it places a new HA VM (the API's answer may be stale).
func AdmitHA(ctx context.Context, st store.Store, log *slog.Logger, change v1.VMSpec) error {
	if change.HA == nil || !change.HA.Enabled || change.Power == v1.PowerStopped || change.Host == "" {
		return nil
	}
	l := &leader{cfg: Config{Store: st}, log: log}
	inv := inventory.Inventory{S: st}
	failures, err := inv.HAFailures(ctx)
	if err != nil || failures == 0 {
		return err
	}
	snap, err := l.snapshot(ctx)
	if err != nil {
		return err
	}
	alive := 0
	for _, h := range snap.hosts {
		if h.Alive {
			alive++
		}
	}
	if alive <= failures {
		return nil
	}
	snap.specs[change.Name] = change
	pools := snap.poolRecords()
	// One read of every status, not one per HA VM.
	items, _, err := store.ListJSON[v1.VMStatus](ctx, st, inventory.Statuses)
	if err != nil {
		return fmt.Errorf("list vm statuses: %w", err)
	}
	statuses := make(map[string]v1.VMStatus, len(items))
	for _, it := range items {
		statuses[inventory.NameFromKey(it.Key)] = it.Value
	}
	var vms []ha.VM
	for _, sp := range snap.specs {
		if sp.Host == "" || sp.HA == nil || !sp.HA.Enabled {
			continue // the plan counts only VMs that would restart
		}
		status, ok := statuses[sp.Name]
		if !ok {
			status.State = v1.StateCreating // as inventory.Status answers
		}
		v := ha.VM{Spec: sp, Pools: migrate.SharedPools(sp, status, pools)}
		for _, d := range migrate.LocalDisks(sp, status, pools) {
			v.LocalDisks = append(v.LocalDisks, d.Name)
		}
		vms = append(vms, v)
	}
	plan := snap.plan()
	// The change's booking as it would be (a new VM has none yet; a moved
	// one books its new host).
	booked := plan.Allocs[:0]
	for _, a := range plan.Allocs {
		if a.VM != change.Name {
			booked = append(booked, a)
		}
	}
	plan.Allocs = append(booked, scheduler.Alloc{Host: change.Host, VM: change.Name, CPUs: change.CPUs,
		MemoryMiB: change.MemoryMiB, AntiAffinity: change.AntiAffinityGroup})
	if err := ha.Admit(plan, vms, failures); err != nil {
		if errors.Is(err, ha.ErrNoFailoverRoom) {
			return errdefs.Field("ha", errdefs.Precondition("vm %q: %v (hangar pool set --ha-failures N changes how many host failures HA keeps room for)", change.Name, err))
		}
		return fmt.Errorf("ha admission: %w", err)
	}
	return nil
}
