package scheduler

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// explainShown is how many of the hosts short of memory or CPU an error
// names (the ones closest to fitting).
const explainShown = 3

// explain says why no host takes r: how many candidates failed which rule,
// and for memory and CPU the few hosts closest to fitting. It runs only
// on a refusal and costs O(candidates).
func (p *planner) explain(r *req) error {
	var cands []int32
	unknown := 0
	scope := "hosts"
	if r.Placement == PlacementManual {
		scope = "manual hosts"
		seen := map[int32]bool{}
		for _, n := range r.PreferredHosts {
			i, ok := p.byName[n]
			if !ok {
				unknown++
				continue
			}
			if !seen[i] {
				seen[i] = true
				cands = append(cands, i)
			}
		}
	} else {
		cands = make([]int32, len(p.hosts))
		for i := range cands {
			cands[i] = int32(i)
		}
	}
	count := map[why]int{}
	var shortMem, shortCPU []int32
	for _, i := range cands {
		w := p.check(i, r)
		count[w]++
		switch w {
		case whyMemory:
			shortMem = append(shortMem, i)
		case whyCPU:
			shortCPU = append(shortCPU, i)
		}
	}
	var parts []string
	add := func(n int, s string) {
		if n > 0 {
			parts = append(parts, strconv.Itoa(n)+" "+s)
		}
	}
	add(unknown, "not in the pool")
	add(count[whyExcluded], "excluded")
	add(count[whyDown], "down")
	add(count[whyMaintenance], "in maintenance")
	add(count[whyPool], "not reaching pool "+strings.Join(r.Pools, "+"))
	add(count[whyAntiAffinity], "already running a vm of anti-affinity group "+r.AntiAffinity)
	if len(shortMem) > 0 {
		h := p.closest(shortMem, true)
		parts = append(parts, fmt.Sprintf("%d short of memory (%s)", len(shortMem), strings.Join(h, ", ")))
	}
	if len(shortCPU) > 0 {
		h := p.closest(shortCPU, false)
		parts = append(parts, fmt.Sprintf("%d short of CPUs (%s)", len(shortCPU), strings.Join(h, ", ")))
	}
	if len(parts) == 0 {
		parts = append(parts, "the pool has no hosts")
	}
	msg := fmt.Sprintf("vm %q needs %d CPUs and %d MiB; of %d %s: %s", r.VM, r.CPUs, r.MemoryMiB, len(cands)+unknown, scope, strings.Join(parts, ", "))
	if n := len(shortMem) + len(shortCPU); n > 0 && n == len(cands) && unknown == 0 {
		field := "memoryMiB"
		if len(shortCPU) > len(shortMem) {
			field = "cpus"
		}
		return &ShortError{Field: field, Msg: fmt.Sprintf("%s: %v: %s", field, ErrNoHost, msg)}
	}
	return fmt.Errorf("%w: %s", ErrNoHost, msg)
}

// ShortError is a refusal for capacity alone: every candidate host is
// short of memory or of CPUs (allocatable after the host's reserve and
// the overcommit ratio, less what is booked). Field names the resource
// most of them lack (memoryMiB or cpus). The API answers it 412
// failed_precondition: freeing capacity, not retrying, makes it fit.
type ShortError struct {
	Field string
	Msg   string
}

func (e *ShortError) Error() string        { return e.Msg }
func (e *ShortError) Is(target error) bool { return target == ErrNoHost }

// closest describes the explainShown hosts of is with the most free
// memory (mem) or CPUs, best first.
func (p *planner) closest(is []int32, mem bool) []string {
	free := func(i int32) int {
		h := &p.hosts[i]
		if mem {
			return h.memCap - h.memUsed
		}
		return h.cpuCap - h.cpuUsed
	}
	sort.Slice(is, func(a, b int) bool {
		fa, fb := free(is[a]), free(is[b])
		if fa != fb {
			return fa > fb
		}
		return p.hosts[is[a]].name < p.hosts[is[b]].name
	})
	var out []string
	for k, i := range is {
		if k == explainShown {
			out = append(out, "…")
			break
		}
		h := &p.hosts[i]
		if mem {
			out = append(out, fmt.Sprintf("%s: %d MiB free of %d MiB allocatable (%d MiB, %d reserved for the host, × overcommit %.1f)",
				h.name, max(free(i), 0), h.memCap, h.mem, p.policy.ReserveMemoryMiB, p.policy.MemoryOvercommit))
		} else {
			out = append(out, fmt.Sprintf("%s: %d CPUs free of %d allocatable (%d CPUs, %d reserved for the host, × overcommit %.1f)",
				h.name, max(free(i), 0), h.cpuCap, h.cpus, p.policy.ReserveCPUs, p.policy.CPUOvercommit))
		}
	}
	return out
}

// CheckResize tells whether vm, placed on host h, can grow to cpus and
// memMiB: the host's allocatable (after its reserve, times the overcommit
// ratios) less what the other VMs there have booked (others; vm's own
// booking is left out). A refusal is a ShortError naming the resource,
// what is asked, what is free and how the allocatable comes about.
func (p Policy) CheckResize(h Host, others []Alloc, vm string, cpus, memMiB int) error {
	var cpuUsed, memUsed int
	for _, a := range others {
		if a.VM != vm {
			cpuUsed += a.CPUs
			memUsed += a.MemoryMiB
		}
	}
	if capMem := p.AllocatableMemoryMiB(h.MemoryMiB); memUsed+memMiB > capMem {
		return &ShortError{Field: "memoryMiB", Msg: fmt.Sprintf("memoryMiB: vm %q asks for %d MiB; host %s has %d MiB free of %d MiB allocatable (%d MiB, %d reserved for the host, × overcommit %.1f; %d MiB booked by its other VMs)",
			vm, memMiB, h.Name, max(capMem-memUsed, 0), capMem, h.MemoryMiB, p.ReserveMemoryMiB, p.MemoryOvercommit, memUsed)}
	}
	if capCPU := p.AllocatableCPUs(h.CPUs); cpuUsed+cpus > capCPU {
		return &ShortError{Field: "cpus", Msg: fmt.Sprintf("cpus: vm %q asks for %d CPUs; host %s has %d free of %d allocatable (%d CPUs, %d reserved for the host, × overcommit %.1f; %d booked by its other VMs)",
			vm, cpus, h.Name, max(capCPU-cpuUsed, 0), capCPU, h.CPUs, p.ReserveCPUs, p.CPUOvercommit, cpuUsed)}
	}
	return nil
}
