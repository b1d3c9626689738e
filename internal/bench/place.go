package bench

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"time"

	"hangar/internal/scheduler"
)

// PlaceConfig of a placement benchmark: the pure scheduler over a
// simulated pool, no I/O.
type PlaceConfig struct {
	Hosts, VMs int
	Runs       int // Plan runs on the big pool (10× as many on the small one); the fastest counts
	Seed       uint64
	Out        io.Writer
}

// PlaceRun is the measure of one pool.
type PlaceRun struct {
	Hosts, VMs      int
	Placed, Refused int
	Elapsed         time.Duration // the fastest run (the least disturbed by other work), for all VMs
	FirstRefusal    error
}

// PerPlacement is the cost of one request.
func (r PlaceRun) PerPlacement() time.Duration {
	return r.Elapsed / time.Duration(max(r.VMs, 1))
}

// PerSecond is requests decided per second.
func (r PlaceRun) PerSecond() float64 {
	return float64(r.VMs) / max(r.Elapsed.Seconds(), 1e-9)
}

// Place measures Plan on a pool of cfg.Hosts hosts and cfg.VMs requests,
// then on a pool 10× smaller (hosts and VMs), and prints both and the
// growth of the cost per placement; the last line reads
// "placements/s N (H hosts), cost per placement ×G for 10× hosts".
func Place(cfg PlaceConfig) (big, small PlaceRun, err error) {
	if cfg.Hosts < 10 || cfg.VMs < 10 || cfg.Runs < 1 {
		return big, small, errors.New("bench place: at least 10 hosts, 10 vms and 1 run")
	}
	out := cfg.Out
	if big, err = placeOnce(cfg.Seed, cfg.Runs, cfg.Hosts, cfg.VMs); err != nil {
		return big, small, err
	}
	if small, err = placeOnce(cfg.Seed, 10*cfg.Runs, cfg.Hosts/10, cfg.VMs/10); err != nil {
		return big, small, err
	}
	for _, r := range []PlaceRun{small, big} {
		fmt.Fprintf(out, "%5d hosts, %6d vms: placed %d, refused %d in %s: %.0f placements/s, %.2f µs per placement\n",
			r.Hosts, r.VMs, r.Placed, r.Refused, r.Elapsed.Round(time.Microsecond), r.PerSecond(),
			float64(r.PerPlacement().Nanoseconds())/1e3)
	}
	if big.FirstRefusal != nil {
		fmt.Fprintf(out, "a refusal reads: %v\n", big.FirstRefusal)
	}
	fmt.Fprintf(out, "placements/s %.0f (%d hosts), cost per placement ×%.1f for 10× hosts\n",
		big.PerSecond(), big.Hosts, float64(big.PerPlacement())/float64(max(small.PerPlacement(), 1)))
	return big, small, nil
}

func placeOnce(seed uint64, runs, hosts, vms int) (PlaceRun, error) {
	snap, reqs := SimulatedPool(seed, hosts, vms)
	run := PlaceRun{Hosts: hosts, VMs: vms}
	var times []time.Duration
	var plan []scheduler.Placement
	for range runs {
		runtime.GC() // no collection of the last run's garbage inside this one
		t0 := time.Now()
		p, err := scheduler.Plan(snap, reqs)
		times = append(times, time.Since(t0))
		if err != nil {
			return run, err
		}
		plan = p
	}
	run.Elapsed = slices.Min(times)
	for _, p := range plan {
		if p.Err != nil {
			run.Refused++
			if run.FirstRefusal == nil {
				run.FirstRefusal = p.Err
			}
		} else {
			run.Placed++
		}
	}
	if err := CheckPlan(snap, reqs, plan); err != nil {
		return run, fmt.Errorf("bench place: the plan breaks a rule: %w", err)
	}
	return run, nil
}

// SimulatedPool is a seeded pool: hosts of mixed sizes (2% in maintenance,
// 1% down) reaching a shared pool, half of them a SAN pool and each its own
// local pool; a quarter of vms already booked; then vms requests: 10% in
// one of 8 anti-affinity groups, 5% with 3 preferred hosts, 1% manual, 5%
// on the local pool of one host, 30% on the SAN.
func SimulatedPool(seed uint64, hosts, vms int) (scheduler.Snapshot, []scheduler.Request) {
	rng := rand.New(rand.NewPCG(seed, uint64(hosts)))
	var s scheduler.Snapshot
	for i := range hosts {
		name := fmt.Sprintf("h%05d", i)
		h := scheduler.Host{
			Name:      name,
			CPUs:      []int{16, 32, 48, 64, 96, 128}[rng.IntN(6)],
			MemoryMiB: []int{64, 128, 192, 256, 384, 512, 768, 1024}[rng.IntN(8)] << 10,
			Alive:     rng.IntN(100) != 0,
			Pools:     []string{"shared", "local-" + name},
		}
		h.Maintenance = rng.IntN(50) == 0
		if i%2 == 0 {
			h.Pools = append(h.Pools, "san")
		}
		s.Hosts = append(s.Hosts, h)
	}
	vm := func(name string) scheduler.Request {
		return scheduler.Request{VM: name, CPUs: []int{1, 2, 4, 8}[rng.IntN(4)], MemoryMiB: 1024 << rng.IntN(6), Pools: []string{"shared"}}
	}
	// booked now: spread at random where they fit (a quarter of the load)
	used := make([][2]int, hosts)
	for i := range vms / 4 {
		r := vm(fmt.Sprintf("old%06d", i))
		k := rng.IntN(hosts)
		h := s.Hosts[k]
		if used[k][0]+r.CPUs > h.CPUs*4 || used[k][1]+r.MemoryMiB > h.MemoryMiB {
			continue
		}
		used[k][0] += r.CPUs
		used[k][1] += r.MemoryMiB
		s.Allocs = append(s.Allocs, scheduler.Alloc{Host: h.Name, VM: r.VM, CPUs: r.CPUs, MemoryMiB: r.MemoryMiB})
	}
	reqs := make([]scheduler.Request, vms)
	for i := range reqs {
		r := vm(fmt.Sprintf("vm%06d", i))
		switch x := rng.IntN(100); {
		case x < 10:
			r.AntiAffinity = fmt.Sprintf("group%d", rng.IntN(8))
		case x < 15:
			for range 3 {
				r.PreferredHosts = append(r.PreferredHosts, s.Hosts[rng.IntN(hosts)].Name)
			}
		case x < 16:
			r.Placement = scheduler.PlacementManual
			r.PreferredHosts = []string{s.Hosts[rng.IntN(hosts)].Name}
		case x < 21:
			r.Pools = []string{"local-" + s.Hosts[rng.IntN(hosts)].Name}
		case x < 51:
			r.Pools = append(r.Pools, "san")
		}
		reqs[i] = r
	}
	return s, reqs
}

// CheckPlan checks a plan against the rules in O(allocations + requests):
// placed VMs on usable hosts, within the default ratios, no anti-affinity
// group twice on a host, manual ones on their host.
func CheckPlan(s scheduler.Snapshot, reqs []scheduler.Request, plan []scheduler.Placement) error {
	hosts := map[string]scheduler.Host{}
	for _, h := range s.Hosts {
		hosts[h.Name] = h
	}
	cpu, mem := map[string]int{}, map[string]int{}
	groups := map[[2]string]bool{}
	for _, a := range s.Allocs {
		cpu[a.Host] += a.CPUs
		mem[a.Host] += a.MemoryMiB
		if a.AntiAffinity != "" {
			groups[[2]string{a.Host, a.AntiAffinity}] = true
		}
	}
	for i, p := range plan {
		if p.Err != nil {
			continue
		}
		r := reqs[i]
		h, ok := hosts[p.Host]
		if !ok || !h.Alive || h.Maintenance {
			return fmt.Errorf("vm %s on %q: not a usable host", r.VM, p.Host)
		}
		if r.Placement == scheduler.PlacementManual && p.Host != r.PreferredHosts[0] {
			return fmt.Errorf("vm %s: manual on %s, placed on %s", r.VM, r.PreferredHosts[0], p.Host)
		}
		cpu[p.Host] += r.CPUs
		mem[p.Host] += r.MemoryMiB
		if float64(cpu[p.Host]) > float64(h.CPUs)*scheduler.DefaultCPUOvercommit || float64(mem[p.Host]) > float64(h.MemoryMiB)*scheduler.DefaultMemoryOvercommit {
			return fmt.Errorf("vm %s: host %s past its ratios (%d CPUs, %d MiB booked)", r.VM, p.Host, cpu[p.Host], mem[p.Host])
		}
		if r.AntiAffinity != "" {
			k := [2]string{p.Host, r.AntiAffinity}
			if groups[k] {
				return fmt.Errorf("vm %s: a second vm of group %s on %s", r.VM, r.AntiAffinity, p.Host)
			}
			groups[k] = true
		}
		for _, pl := range r.Pools {
			if !slices.Contains(h.Pools, pl) {
				return fmt.Errorf("vm %s on %s, which does not reach pool %s", r.VM, p.Host, pl)
			}
		}
	}
	return nil
}
