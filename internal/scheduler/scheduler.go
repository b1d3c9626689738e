// Package scheduler places VMs on hosts. It is pure: Plan is a function of
// a snapshot of the pool and a batch of requests, tested with tables and
// properties; the pool master reads the snapshot and commits the plan.
package scheduler

import (
	"errors"
	"fmt"
	"sort"

	v1 "hangar/api/v1"
)

// ErrNoHost is returned when no live host can take the VM.
var ErrNoHost = errors.New("no host can run the vm")

// Place picks the live host, not in maintenance, with the most free memory
// that fits spec. hosts carry Alive and AllocatedMemoryMiB as last
// reported. It is the single-host path; the pool master uses Plan.
func Place(hosts []v1.Host, spec v1.VMSpec) (string, error) {
	cands := make([]v1.Host, 0, len(hosts))
	for _, h := range hosts {
		if h.Alive && !h.Maintenance && h.MemoryMiB-h.AllocatedMemoryMiB >= spec.MemoryMiB {
			cands = append(cands, h)
		}
	}
	if len(cands) == 0 {
		live := 0
		for _, h := range hosts {
			if h.Alive {
				live++
			}
		}
		if live == 0 {
			return "", fmt.Errorf("%w: no live host", ErrNoHost)
		}
		return "", fmt.Errorf("%w: none of %d live hosts has %d MiB free", ErrNoHost, live, spec.MemoryMiB)
	}
	sort.SliceStable(cands, func(i, j int) bool {
		fi, fj := cands[i].MemoryMiB-cands[i].AllocatedMemoryMiB, cands[j].MemoryMiB-cands[j].AllocatedMemoryMiB
		if fi != fj {
			return fi > fj
		}
		return cands[i].Name < cands[j].Name
	})
	return cands[0].Name, nil
}

// LargestHostMemory is the memory of the largest live host (0 if none).
func LargestHostMemory(hosts []v1.Host) int {
	m := 0
	for _, h := range hosts {
		if h.Alive && h.MemoryMiB > m {
			m = h.MemoryMiB
		}
	}
	return m
}

// FromSpec is the Request for placing spec, whose storage lives in pools
// (the caller knows which pools its disks use). Exclude is left to the
// caller (e.g. a migration's source).
func FromSpec(spec v1.VMSpec, pools []string) Request {
	return Request{
		VM:             spec.Name,
		CPUs:           spec.CPUs,
		MemoryMiB:      spec.MemoryMiB,
		Pools:          pools,
		PreferredHosts: spec.PreferredHosts,
		Placement:      spec.Placement,
		AntiAffinity:   spec.AntiAffinityGroup,
	}
}
