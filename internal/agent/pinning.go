package agent

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/qemu/qmp"
	"hangar/internal/vm"
)

// vcpuThread is one entry of query-cpus-fast.
type vcpuThread struct {
	Index  int `json:"cpu-index"`
	Thread int `json:"thread-id"`
}

// pinVCPUs pins the threads of QEMU pid's vCPUs (query-cpus-fast) to the
// spec's host CPUs (resources.cpuPinning) with sched_setaffinity: at
// start before the guest runs, again on re-adoption and on a live change.
// With all (a live change) a VM without pinning gets its vCPUs back on
// every CPU the agent may use. The CPUs must be ones this host lets the
// agent use; QEMU's answer is checked to name its own threads.
func pinVCPUs(ctx context.Context, mon *qmp.Client, pid int, spec v1.VMSpec, host string, all bool) error {
	const field = "resources.cpuPinning"
	sets, err := vm.CPUPinning(spec)
	if err != nil {
		return errdefs.Field(field, err)
	}
	if sets == nil && !all {
		return nil
	}
	var hostSet unix.CPUSet
	if err := unix.SchedGetaffinity(0, &hostSet); err != nil {
		return fmt.Errorf("pin vcpus of %s: host cpus: %w", spec.Name, err)
	}
	for i, set := range sets {
		for _, c := range set {
			if !hostSet.IsSet(c) {
				return errdefs.Field(field, errdefs.Precondition("vcpu %d: host %s has no CPU %d to pin it to (its CPUs: %s)", i, host, c, cpuList(&hostSet)))
			}
		}
	}
	var threads []vcpuThread
	if err := mon.Execute(ctx, "query-cpus-fast", nil, &threads); err != nil {
		return fmt.Errorf("pin vcpus of %s: %w", spec.Name, err)
	}
	for _, th := range threads {
		if th.Index < 0 || th.Index >= spec.CPUs || th.Thread <= 0 {
			return fmt.Errorf("pin vcpus of %s: qemu reports vcpu %d on thread %d", spec.Name, th.Index, th.Thread)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", pid, th.Thread)); err != nil {
			return fmt.Errorf("pin vcpus of %s: vcpu %d's thread %d is not one of qemu %d's", spec.Name, th.Index, th.Thread, pid)
		}
		set := hostSet
		if sets != nil {
			set.Zero()
			for _, c := range sets[th.Index] {
				set.Set(c)
			}
		}
		if err := unix.SchedSetaffinity(th.Thread, &set); err != nil {
			return fmt.Errorf("pin vcpu %d (thread %d) of %s to %s: %w", th.Index, th.Thread, spec.Name, cpuList(&set), err)
		}
	}
	return nil
}

// cpuList writes a CPU set as a comma-separated list.
func cpuList(set *unix.CPUSet) string {
	var out []string
	for c := range len(set) * 64 {
		if set.IsSet(c) {
			out = append(out, strconv.Itoa(c))
		}
	}
	return strings.Join(out, ",")
}
