// Package capacity computes the pool's capacity overview: per host and for
// the pool, CPUs and memory booked and free under the overcommit ratios,
// storage per storage pool and VM counts by state. It is pure: the API
// reads the records and calls it at every answer and every scrape.
package capacity

import (
	"sort"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/scheduler"
)

// withDefaults returns p with unset (zero, negative or NaN) ratios set to
// the scheduler's defaults: the overview uses the ratios admission
// control uses.
func withDefaults(p scheduler.Policy) scheduler.Policy {
	if !(p.CPUOvercommit > 0) {
		p.CPUOvercommit = scheduler.DefaultCPUOvercommit
	}
	if !(p.MemoryOvercommit > 0) {
		p.MemoryOvercommit = scheduler.DefaultMemoryOvercommit
	}
	return p
}

// Allocated returns what is booked on each host. allocs are the pool
// master's records by host and VM (/hangar/alloc/<host>/<vm>): a host with
// any record is counted from its records alone; a host with none from the
// specs placed on it whose power is not stopped (the single-host way,
// before the master books).
func Allocated(specs []v1.VMSpec, allocs map[string]map[string]inventory.Alloc) map[string]inventory.Alloc {
	out := map[string]inventory.Alloc{}
	for host, byVM := range allocs {
		if len(byVM) == 0 {
			continue
		}
		var t inventory.Alloc
		for _, a := range byVM {
			t.CPUs += a.CPUs
			t.MemoryMiB += a.MemoryMiB
		}
		out[host] = t
	}
	for _, s := range specs {
		if s.Host == "" || s.Power == v1.PowerStopped || len(allocs[s.Host]) > 0 {
			continue
		}
		t := out[s.Host]
		t.CPUs += s.CPUs
		t.MemoryMiB += s.MemoryMiB
		out[s.Host] = t
	}
	return out
}

// Overview fills each host's capacity fields and sums the pool. hosts carry
// their facts with Alive and Maintenance set; vms are every VM with its
// status; alloc is Allocated's answer; cpuModel is the pool's CPU model.
func Overview(hosts []v1.Host, vms []v1.VM, alloc map[string]inventory.Alloc, p scheduler.Policy, cpuModel string) v1.Capacity {
	p = withDefaults(p)
	out := v1.Capacity{Hosts: make([]v1.Host, 0, len(hosts)), Pool: v1.PoolCapacity{
		CPUOvercommit: p.CPUOvercommit, MemoryOvercommit: p.MemoryOvercommit, CPUModel: cpuModel,
		VMStates: map[string]int{}, Storage: []v1.StorageUsage{}}}
	byHost := map[string]map[string]int{}
	for _, v := range vms {
		out.Pool.VMStates[v.Status.State]++
		if v.Spec.Host == "" {
			continue
		}
		if byHost[v.Spec.Host] == nil {
			byHost[v.Spec.Host] = map[string]int{}
		}
		byHost[v.Spec.Host][v.Status.State]++
	}
	pool := &out.Pool
	storage := map[string]*v1.StorageUsage{}
	for _, h := range hosts {
		a := alloc[h.Name]
		h.AllocatedCPUs, h.AllocatedMemoryMiB = a.CPUs, a.MemoryMiB
		h.CPUOvercommit, h.MemoryOvercommit = p.CPUOvercommit, p.MemoryOvercommit
		h.FreeCPUs = free(p.AllocatableCPUs(h.CPUs), a.CPUs)
		h.FreeMemoryMiB = free(p.AllocatableMemoryMiB(h.MemoryMiB), a.MemoryMiB)
		h.VMStates = byHost[h.Name]
		h.VMs = 0
		for _, n := range h.VMStates {
			h.VMs += n
		}
		switch {
		case h.Maintenance:
			h.State = v1.HostMaintenance
			pool.HostsMaintenance++
		case h.Alive:
			h.State = v1.HostAlive
			pool.HostsAlive++
		default:
			h.State = v1.HostDown // no lease
			if h.Liveness != "" {
				h.State = h.Liveness // the pool master's judgement: suspect, isolated, dead
			}
			pool.HostsDown++
		}
		pool.Hosts++
		pool.CPUs += h.CPUs
		pool.MemoryMiB += h.MemoryMiB
		pool.AllocatedCPUs += h.AllocatedCPUs
		pool.AllocatedMemoryMiB += h.AllocatedMemoryMiB
		if h.State == v1.HostAlive {
			pool.FreeCPUs += h.FreeCPUs
			pool.FreeMemoryMiB += h.FreeMemoryMiB
		}
		for _, u := range h.Storage {
			addStorage(storage, u, h.Alive)
		}
		out.Hosts = append(out.Hosts, h)
	}
	for _, u := range storage {
		pool.Storage = append(pool.Storage, *u)
	}
	sort.Slice(pool.Storage, func(i, j int) bool { return pool.Storage[i].Pool < pool.Storage[j].Pool })
	sort.Slice(out.Hosts, func(i, j int) bool { return out.Hosts[i].Name < out.Hosts[j].Name })
	return out
}

// free is what a host admitting allocatable units takes with used booked:
// never negative.
func free(allocatable, used int) int {
	f := allocatable - used
	if f < 0 {
		return 0
	}
	return f
}

// addStorage adds one host's view of a storage pool to the pool's sums: a
// shared pool is one file system every host mounts, counted once (from a
// live host when there is one); a dir pool is each host's own directory,
// summed.
func addStorage(sums map[string]*v1.StorageUsage, u v1.StorageUsage, alive bool) {
	s, ok := sums[u.Pool]
	switch {
	case !ok:
		c := u
		sums[u.Pool] = &c
	case u.Type == "shared":
		if alive {
			*s = u
		}
	default:
		s.TotalBytes += u.TotalBytes
		s.UsedBytes += u.UsedBytes
		s.FreeBytes += u.FreeBytes
	}
}
