package scheduler

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// refPlan is Plan written the slow, obvious way: every decision recomputes
// the hosts' usage from the full list of allocations.
func refPlan(s Snapshot, reqs []Request) []string {
	pol, _ := normPolicy(s.Policy)
	allocs := slices.Clone(s.Allocs)
	used := func(h string) (cpu, mem int) {
		for _, a := range allocs {
			if a.Host == h {
				cpu += a.CPUs
				mem += a.MemoryMiB
			}
		}
		return
	}
	capOf := func(h Host) (int, int) {
		return int(math.Floor(float64(h.CPUs) * pol.CPUOvercommit)), int(math.Floor(float64(h.MemoryMiB) * pol.MemoryOvercommit))
	}
	memRef, cpuRef := 1, 1
	for _, h := range s.Hosts {
		if h.Alive && !h.Maintenance {
			c, m := capOf(h)
			memRef, cpuRef = max(memRef, m), max(cpuRef, c)
		}
	}
	// better: the larger of min(free memory, free CPUs) in units of the
	// largest host, then the larger sum, then the name
	better := func(a, b Host) bool {
		score := func(h Host) (float64, float64) {
			c, m := capOf(h)
			uc, um := used(h.Name)
			fm, fc := float64(m-um)/float64(memRef), float64(c-uc)/float64(cpuRef)
			return min(fm, fc), fm + fc
		}
		sa, ta := score(a)
		sb, tb := score(b)
		if sa != sb {
			return sa > sb
		}
		if ta != tb {
			return ta > tb
		}
		return a.Name < b.Name
	}
	eligible := func(h Host, r Request) bool {
		if !h.Alive || h.Maintenance || slices.Contains(r.Exclude, h.Name) {
			return false
		}
		for _, p := range r.Pools {
			if !slices.Contains(h.Pools, p) {
				return false
			}
		}
		for _, a := range allocs {
			if r.AntiAffinity != "" && a.Host == h.Name && a.AntiAffinity == r.AntiAffinity && a.VM != r.VM {
				return false
			}
		}
		c, m := capOf(h)
		uc, um := used(h.Name)
		return uc+r.CPUs <= c && um+r.MemoryMiB <= m
	}
	best := func(hs []Host, r Request) (Host, bool) {
		var b Host
		found := false
		for _, h := range hs {
			if !eligible(h, r) {
				continue
			}
			if !found || better(h, b) {
				b, found = h, true
			}
		}
		return b, found
	}
	out := make([]string, len(reqs))
	for i, r := range reqs {
		var pref []Host
		for _, h := range s.Hosts {
			if slices.Contains(r.PreferredHosts, h.Name) {
				pref = append(pref, h)
			}
		}
		h, ok := best(pref, r)
		if !ok && r.Placement != PlacementManual {
			h, ok = best(s.Hosts, r)
		}
		if ok {
			out[i] = h.Name
			allocs = append(allocs, Alloc{Host: h.Name, VM: r.VM, CPUs: r.CPUs, MemoryMiB: r.MemoryMiB, AntiAffinity: r.AntiAffinity})
		}
	}
	return out
}

// randomPool is a seeded pool: few distinct sizes (so scores tie), hosts
// down or in maintenance, three pools, anti-affinity groups, and initial
// allocations that respect capacity and groups.
func randomPool(rng *rand.Rand, nHosts, nAllocs int) Snapshot {
	var s Snapshot
	pols := []Policy{{}, {CPUOvercommit: 1, MemoryOvercommit: 1}, {CPUOvercommit: 2, MemoryOvercommit: 1.5}, {CPUOvercommit: 8, MemoryOvercommit: 0.9}}
	s.Policy = pols[rng.IntN(len(pols))]
	for i := range nHosts {
		h := Host{
			Name:      fmt.Sprintf("h%03d", i),
			CPUs:      []int{2, 4, 8, 16}[rng.IntN(4)],
			MemoryMiB: []int{2048, 4096, 8192, 16384}[rng.IntN(4)],
			Alive:     rng.IntN(10) != 0,
		}
		h.Maintenance = rng.IntN(10) == 0
		for _, p := range []string{"shared", "fast", "local"} {
			if rng.IntN(3) != 0 {
				h.Pools = append(h.Pools, p)
			}
		}
		s.Hosts = append(s.Hosts, h)
	}
	// allocations: placed by the reference itself, so they fit
	var reqs []Request
	for i := range nAllocs {
		reqs = append(reqs, randomRequest(rng, fmt.Sprintf("old%d", i), nil))
	}
	for i, h := range refPlan(s, reqs) {
		if h != "" {
			r := reqs[i]
			s.Allocs = append(s.Allocs, Alloc{Host: h, VM: r.VM, CPUs: r.CPUs, MemoryMiB: r.MemoryMiB, AntiAffinity: r.AntiAffinity})
		}
	}
	rng.Shuffle(len(s.Hosts), func(a, b int) { s.Hosts[a], s.Hosts[b] = s.Hosts[b], s.Hosts[a] })
	return s
}

func randomRequest(rng *rand.Rand, name string, hosts []Host) Request {
	r := Request{
		VM:           name,
		CPUs:         []int{1, 1, 2, 4, 8}[rng.IntN(5)],
		MemoryMiB:    []int{256, 512, 1024, 2048, 4096}[rng.IntN(5)],
		AntiAffinity: []string{"", "", "", "db", "web"}[rng.IntN(5)],
	}
	for _, p := range []string{"shared", "fast"} {
		if rng.IntN(4) == 0 {
			r.Pools = append(r.Pools, p)
		}
	}
	if len(hosts) > 0 {
		for range rng.IntN(3) {
			if rng.IntN(8) == 0 {
				r.PreferredHosts = append(r.PreferredHosts, "not-a-host")
			} else {
				r.PreferredHosts = append(r.PreferredHosts, hosts[rng.IntN(len(hosts))].Name)
			}
		}
		if rng.IntN(6) == 0 {
			r.Exclude = append(r.Exclude, hosts[rng.IntN(len(hosts))].Name)
		}
	}
	if len(r.PreferredHosts) > 0 {
		r.Placement = []string{"", PlacementAuto, PlacementPreferred, PlacementManual}[rng.IntN(4)]
	}
	return r
}

// TestPlanProperties checks Plan on seeded random pools and batches: it
// equals the brute-force reference, placed VMs sit on eligible hosts
// within the ratios and their groups, a refusal is one that fits nowhere,
// and the answer does not depend on the order of the hosts.
func TestPlanProperties(t *testing.T) {
	for seed := range uint64(400) {
		rng := rand.New(rand.NewPCG(seed, 9))
		nHosts := 1 + rng.IntN(12)
		if seed%8 == 0 {
			nHosts = 40 + rng.IntN(120) // past linearCutoff: pool heaps, the walk and its fallback
		}
		nAllocs, nReqs := rng.IntN(3*nHosts), 1+rng.IntN(4*nHosts)
		if nHosts > 50 {
			nAllocs, nReqs = rng.IntN(nHosts), 1+rng.IntN(120)
		}
		s := randomPool(rng, nHosts, nAllocs)
		var reqs []Request
		for i := range nReqs {
			reqs = append(reqs, randomRequest(rng, fmt.Sprintf("vm%d", i), s.Hosts))
		}
		got, err := Plan(s, reqs)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		want := refPlan(s, reqs)
		for i, p := range got {
			if p.Host != want[i] {
				t.Fatalf("seed %d: %s placed on %q (err %v), reference says %q", seed, p.VM, p.Host, p.Err, want[i])
			}
			if (p.Host == "") != errors.Is(p.Err, ErrNoHost) {
				t.Fatalf("seed %d: %s: host %q with err %v", seed, p.VM, p.Host, p.Err)
			}
		}
		checkInvariants(t, seed, s, reqs, got)

		shuffled := s
		shuffled.Hosts = slices.Clone(s.Hosts)
		rng.Shuffle(len(shuffled.Hosts), func(a, b int) {
			shuffled.Hosts[a], shuffled.Hosts[b] = shuffled.Hosts[b], shuffled.Hosts[a]
		})
		again, err := Plan(shuffled, reqs)
		if err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if got[i].Host != again[i].Host || fmt.Sprint(got[i].Err) != fmt.Sprint(again[i].Err) {
				t.Fatalf("seed %d: %s: %q/%v, with hosts shuffled %q/%v", seed, got[i].VM, got[i].Host, got[i].Err, again[i].Host, again[i].Err)
			}
		}
	}
}

// checkInvariants checks the result of Plan against the rules directly,
// without the reference's choice of the best host.
func checkInvariants(t *testing.T, seed uint64, s Snapshot, reqs []Request, got []Placement) {
	t.Helper()
	pol, _ := normPolicy(s.Policy)
	hosts := map[string]Host{}
	for _, h := range s.Hosts {
		hosts[h.Name] = h
	}
	cpu, mem := map[string]int{}, map[string]int{}
	group := map[[2]string]string{} // (host, group) -> a vm
	for _, a := range s.Allocs {
		cpu[a.Host] += a.CPUs
		mem[a.Host] += a.MemoryMiB
		if a.AntiAffinity != "" {
			group[[2]string{a.Host, a.AntiAffinity}] = a.VM
		}
	}
	fitsOn := func(h Host, r Request) bool {
		if !h.Alive || h.Maintenance || slices.Contains(r.Exclude, h.Name) {
			return false
		}
		for _, p := range r.Pools {
			if !slices.Contains(h.Pools, p) {
				return false
			}
		}
		if v, ok := group[[2]string{h.Name, r.AntiAffinity}]; r.AntiAffinity != "" && ok && v != r.VM {
			return false
		}
		return float64(cpu[h.Name]+r.CPUs) <= float64(h.CPUs)*pol.CPUOvercommit+1e-9 &&
			float64(mem[h.Name]+r.MemoryMiB) <= float64(h.MemoryMiB)*pol.MemoryOvercommit+1e-9
	}
	for i, p := range got {
		r := reqs[i]
		if p.Host == "" {
			for _, h := range s.Hosts {
				inScope := r.Placement != PlacementManual || slices.Contains(r.PreferredHosts, h.Name)
				if inScope && fitsOn(h, r) {
					t.Fatalf("seed %d: %s refused (%v) but fits on %s", seed, r.VM, p.Err, h.Name)
				}
			}
			continue
		}
		h, ok := hosts[p.Host]
		if !ok || !fitsOn(h, r) {
			t.Fatalf("seed %d: %s placed on %s, which cannot take it", seed, r.VM, p.Host)
		}
		if r.Placement == PlacementManual && !slices.Contains(r.PreferredHosts, p.Host) {
			t.Fatalf("seed %d: manual %s placed on %s, not in %v", seed, r.VM, p.Host, r.PreferredHosts)
		}
		if len(r.PreferredHosts) > 0 && !slices.Contains(r.PreferredHosts, p.Host) {
			for _, n := range r.PreferredHosts {
				if h, ok := hosts[n]; ok && fitsOn(h, r) {
					t.Fatalf("seed %d: %s placed on %s though preferred %s fits", seed, r.VM, p.Host, n)
				}
			}
		}
		cpu[p.Host] += r.CPUs
		mem[p.Host] += r.MemoryMiB
		if r.AntiAffinity != "" {
			group[[2]string{p.Host, r.AntiAffinity}] = r.VM
		}
	}
}
