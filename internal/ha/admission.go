package ha

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"hangar/internal/scheduler"
)

// DefaultFailures is how many hosts may fail at once with room left to
// restart all their HA VMs (N+1).
const DefaultFailures = 1

// ErrNoFailoverRoom: with the change asked for, the pool could not
// restart the HA VMs of its largest hosts if they failed.
var ErrNoFailoverRoom = errors.New("not enough spare capacity for HA")

// Admit reports whether the HA VMs of the failures largest live hosts
// (by the memory of their HA VMs, then by their own memory, then by name)
// could all restart on the other hosts of s, in restart order, as
// PlanRestarts would place them.
// vms are the pool's VMs (Spec.Host says where each runs); those that
// would restart count — HA enabled, meant to run, no local disks —,
// restart limits aside. A caller asks with the change applied (the VM
// with HA enabled, or started) and refuses it on an error, which wraps
// ErrNoFailoverRoom and names the VM, host and resource that fall short.
// failures 0 turns admission control off.
func Admit(s scheduler.Snapshot, vms []VM, failures int) error {
	if failures < 0 {
		return fmt.Errorf("%w: %d host failures to tolerate", ErrInvalid, failures)
	}
	byHost := map[string][]candidate{}
	mem := map[string]int{}
	for _, m := range vms {
		if o, _ := eligible(m, m.Spec.Host); o != restart {
			continue
		}
		byHost[m.Spec.Host] = append(byHost[m.Spec.Host], candidate{vm: m})
		mem[m.Spec.Host] += m.Spec.MemoryMiB
	}
	var hosts []scheduler.Host
	for _, h := range s.Hosts {
		if h.Alive {
			hosts = append(hosts, h)
		}
	}
	slices.SortFunc(hosts, func(a, b scheduler.Host) int {
		return cmp.Or(cmp.Compare(mem[b.Name], mem[a.Name]), cmp.Compare(b.MemoryMiB, a.MemoryMiB), strings.Compare(a.Name, b.Name))
	})
	var down []string
	for _, h := range hosts[:min(failures, len(hosts))] {
		down = append(down, h.Name)
	}
	var cands []candidate
	for _, h := range down {
		cands = append(cands, byHost[h]...)
	}
	sortCandidates(cands)
	placed, err := place(s, down, cands)
	if err != nil {
		return err
	}
	for _, pl := range placed {
		if errors.Is(pl.Err, scheduler.ErrInvalid) {
			return fmt.Errorf("%w: %w", ErrInvalid, pl.Err)
		}
		if pl.Err != nil {
			total := 0
			for _, h := range down {
				total += mem[h]
			}
			return fmt.Errorf("%w: if host %s failed (HA VMs of %d MiB), %w", ErrNoFailoverRoom,
				strings.Join(down, " and "), total, pl.Err)
		}
	}
	return nil
}
