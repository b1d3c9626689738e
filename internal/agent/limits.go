package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/cgroup"
	"hangar/internal/errdefs"
	"hangar/internal/vm"
)

// newCgroups returns the host's cgroup manager, or nil (VMs then run
// without CPU and memory limits) with a warning when the agent cannot use
// cgroups here, e.g. inside a network namespace whose /sys has none.
func (a *Agent) newCgroups() *cgroup.Manager {
	cg, err := cgroup.New(a.cfg.Host)
	if err != nil {
		a.cfg.Log.Warn("cgroups unavailable: vms run without cpu and memory limits", "err", err)
		return nil
	}
	a.cfg.Log.Info("cgroups", "mode", cg.Mode(), "root", cg.Path(""))
	return cg
}

// limitsOf are the cgroup limits of spec's QEMU.
func (a *Agent) limitsOf(spec v1.VMSpec) cgroup.Limits {
	l := cgroup.Limits{MemoryBytes: int64(vm.MemoryLimitMiB(spec, a.cfg.Caps.Accel)) << 20}
	if r := spec.Resources; r != nil {
		l.CPUShares, l.CPUs = uint64(r.CPUShares), r.CPULimit
	}
	return l
}

// applyLimits puts the VM's QEMU (pid) into the VM's cgroup with the
// spec's limits: right after QEMU starts, paused, before the guest runs,
// and again when an agent re-adopts a running QEMU. Without cgroups it
// does nothing; a failure is returned (a start then fails: a VM must not
// run unlimited when its limits could not be set).
func (m *machine) applyLimits(spec v1.VMSpec, pid int) error {
	cg := m.a.cgroups
	if cg == nil {
		return nil
	}
	t0 := time.Now()
	l := m.a.limitsOf(spec)
	if err := cg.Apply(m.name, pid, l); err != nil {
		return err
	}
	m.log.Info("limits applied", "dur", time.Since(t0), "cgroup", cg.Path(m.name),
		"cpuShares", l.CPUShares, "cpuLimit", l.CPUs, "memoryLimitMiB", l.MemoryBytes>>20)
	return nil
}

// removeCgroup deletes the VM's cgroup once its QEMU is gone.
func (m *machine) removeCgroup() {
	if m.a.cgroups == nil {
		return
	}
	if err := m.a.cgroups.Remove(m.name); err != nil && !errors.Is(err, cgroup.ErrUnavailable) {
		m.log.Warn("remove cgroup", "err", err)
	}
}

// updateLimits writes the spec's limits into the running VM's cgroup (a
// live change); a stopped VM takes them at its next start.
func (m *machine) updateLimits(ctx context.Context) error {
	if m.inst == nil {
		return nil
	}
	if m.a.cgroups == nil {
		return errdefs.Precondition("limits of %s: cgroups are unavailable on host %s", m.name, m.a.cfg.Host)
	}
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		return err
	}
	l := m.a.limitsOf(spec)
	if err := m.a.cgroups.Update(m.name, l); err != nil {
		return fmt.Errorf("limits of %s: %w", m.name, err)
	}
	m.log.Info("limits changed", "cpuShares", l.CPUShares, "cpuLimit", l.CPUs, "memoryLimitMiB", l.MemoryBytes>>20)
	return nil
}
