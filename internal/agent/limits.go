package agent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/cgroup"
	"hangar/internal/errdefs"
	"hangar/internal/network"
	"hangar/internal/qemu"
	"hangar/internal/qemu/qmp"
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
func (m *machine) applyLimits(ctx context.Context, spec v1.VMSpec, inst *qemu.Instance) error {
	t0 := time.Now()
	if inst.Mon != nil {
		if err := m.throttle(ctx, inst.Mon, spec, false); err != nil {
			return err
		}
		if err := pinVCPUs(ctx, inst.Mon, inst.PID, spec, m.a.cfg.Host, false); err != nil {
			return err
		}
		if err := setBalloon(ctx, inst.Mon, spec, false); err != nil {
			return err
		}
	}
	t1 := time.Now()
	if err := shapeNICs(spec, false); err != nil {
		return err
	}
	tc := time.Since(t1)
	cg := m.a.cgroups
	if cg == nil {
		m.log.Info("limits applied", "dur", time.Since(t0), "tc", tc)
		return nil
	}
	l := m.a.limitsOf(spec)
	if err := cg.Apply(m.name, inst.PID, l); err != nil {
		return err
	}
	m.log.Info("limits applied", "dur", time.Since(t0), "tc", tc, "cgroup", cg.Path(m.name),
		"cpuShares", l.CPUShares, "cpuLimit", l.CPUs, "memoryLimitMiB", l.MemoryBytes>>20)
	return nil
}

// removeCgroup deletes the VM's cgroup once its QEMU is gone.
func (m *machine) removeCgroup() {
	if m.a.cgroups == nil {
		return
	}
	// A QEMU that answered quit may still be leaving (an adopted one is
	// not this process's child): its group empties a moment later.
	var err error
	for range 30 {
		if err = m.a.cgroups.Remove(m.name); err == nil || errors.Is(err, cgroup.ErrUnavailable) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	m.log.Warn("remove cgroup", "err", err)
}

// updateLimits writes the spec's limits into the running VM's cgroup (a
// live change); a stopped VM takes them at its next start.
func (m *machine) updateLimits(ctx context.Context) error {
	if m.inst == nil {
		return nil
	}
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		return err
	}
	if m.inst.Mon != nil {
		if err := m.throttle(ctx, m.inst.Mon, spec, true); err != nil {
			return err
		}
		if err := pinVCPUs(ctx, m.inst.Mon, m.inst.PID, spec, m.a.cfg.Host, true); err != nil {
			return err
		}
		if err := setBalloon(ctx, m.inst.Mon, spec, true); err != nil {
			return err
		}
	}
	if err := shapeNICs(spec, true); err != nil {
		return err
	}
	if m.a.cgroups == nil {
		if r := spec.Resources; r == nil || (r.CPUShares == 0 && r.CPULimit == 0 && r.MemoryLimitMiB == 0) {
			return nil // nothing for a cgroup (pinning, the balloon and tc need none)
		}
		return errdefs.Precondition("limits of %s: cgroups are unavailable on host %s", m.name, m.a.cfg.Host)
	}
	l := m.a.limitsOf(spec)
	if err := m.a.cgroups.Update(m.name, l); err != nil {
		return fmt.Errorf("limits of %s: %w", m.name, err)
	}
	m.log.Info("limits changed", "cpuShares", l.CPUShares, "cpuLimit", l.CPUs, "memoryLimitMiB", l.MemoryBytes>>20)
	return nil
}

// ioThrottle is block_set_io_throttle's arguments.
type ioThrottle struct {
	ID      string `json:"id"`
	BPS     int64  `json:"bps"`
	BPSRd   int64  `json:"bps_rd"`
	BPSWr   int64  `json:"bps_wr"`
	IOPS    int64  `json:"iops"`
	IOPSRd  int64  `json:"iops_rd"`
	IOPSWr  int64  `json:"iops_wr"`
	BPSMax  int64  `json:"bps_max,omitempty"`
	IOPSMax int64  `json:"iops_max,omitempty"`
	Group   string `json:"group,omitempty"`
}

// throttleID names the guest device of d for block_set_io_throttle: a
// virtio-blk-pci device's block backend is on its virtio child, so its QOM
// path; the others' qdev id (config.Argv's "dev-<disk>").
func throttleID(d v1.Disk) string {
	if d.Bus == "" || d.Bus == "virtio" {
		return "/machine/peripheral/dev-" + d.Name + "/virtio-backend"
	}
	return "dev-" + d.Name
}

// throttle writes the disks' I/O limits into QEMU; with all, also the
// disks without limits (zeros: a live change that lifted them).
func (m *machine) throttle(ctx context.Context, mon *qmp.Client, spec v1.VMSpec, all bool) error {
	for _, d := range spec.Disks {
		if d.Media == "cdrom" || (d.Limits == nil && !all) {
			continue
		}
		t := ioThrottle{ID: throttleID(d)}
		if l := d.Limits; l != nil {
			t = ioThrottle{ID: t.ID, BPS: l.BPS, BPSRd: l.BPSRead, BPSWr: l.BPSWrite, IOPS: l.IOPS, IOPSRd: l.IOPSRead, IOPSWr: l.IOPSWrite,
				BPSMax: l.BPSMax, IOPSMax: l.IOPSMax, Group: l.Group}
		}
		if err := mon.Execute(ctx, "block_set_io_throttle", t, nil); err != nil {
			return fmt.Errorf("limits of disk %s: %w", d.Name, err)
		}
	}
	return nil
}

// shapeNICs sets the bandwidth limits of spec's bridge NICs on their taps
// (tc: a tbf on the tap, an IFB with a tbf for what the guest sends); with
// all, also of the NICs without limits (lifting any left from before).
func shapeNICs(spec v1.VMSpec, all bool) error {
	for i, n := range spec.NICs {
		if n.Mode != v1.NICBridge || (n.Limits == nil && !all) {
			continue
		}
		s := network.Shape{RxBits: mbit(n.Limits.Rx()), TxBits: mbit(n.Limits.Tx())}
		if err := network.ShapeTap(network.TapName(spec.Name, i), s); err != nil {
			return errdefs.Field(fmt.Sprintf("nics[%d].limits", i), err)
		}
	}
	return nil
}

// mbit is mbps megabits per second in bits per second.
func mbit(mbps float64) uint64 { return uint64(math.Round(mbps * 1e6)) }
