package ha

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/scheduler"
)

// randomCase is a pool with a dead host h0 and its VMs.
func randomCase(rng *rand.Rand) Input {
	in := Input{Host: "h0", Now: t0}
	pools := []string{"shared", "fast", "slow"}
	nh := 1 + rng.IntN(7)
	for i := range nh {
		h := scheduler.Host{Name: fmt.Sprintf("h%d", i), CPUs: 1 + rng.IntN(16), MemoryMiB: 1024 << rng.IntN(4),
			Alive: i == 0 || rng.IntN(6) != 0, Maintenance: i > 0 && rng.IntN(6) == 0, Pools: []string{"shared"}}
		for _, p := range pools[1:] {
			if rng.IntN(2) == 0 {
				h.Pools = append(h.Pools, p)
			}
		}
		in.Pool.Hosts = append(in.Pool.Hosts, h)
		for j := range rng.IntN(4) {
			in.Pool.Allocs = append(in.Pool.Allocs, scheduler.Alloc{Host: h.Name, VM: fmt.Sprintf("o%d-%d", i, j),
				CPUs: 1 + rng.IntN(4), MemoryMiB: 128 << rng.IntN(4)})
		}
	}
	for i := range rng.IntN(25) {
		s := v1.VMSpec{Name: fmt.Sprintf("vm%d", i), CPUs: 1 + rng.IntN(4), MemoryMiB: 64 << rng.IntN(5), Host: "h0",
			Power: []string{v1.PowerRunning, v1.PowerRunning, v1.PowerRunning, v1.PowerStopped, v1.PowerPaused}[rng.IntN(5)]}
		if rng.IntN(5) != 0 {
			s.HA = &v1.HA{Enabled: rng.IntN(6) != 0, Priority: rng.IntN(3) * 10, RestartOrder: rng.IntN(3),
				MaxRestarts: 1 + rng.IntN(3), RestartWindow: []string{"10m", "1h"}[rng.IntN(2)]}
		}
		if rng.IntN(4) == 0 {
			s.Placement, s.PreferredHosts = v1.PlacementPreferred, []string{fmt.Sprintf("h%d", rng.IntN(nh))}
		}
		m := VM{Spec: s, Pools: []string{pools[rng.IntN(len(pools))]}}
		if rng.IntN(8) == 0 {
			m.LocalDisks = []string{"disk0"}
		}
		for range rng.IntN(4) {
			m.Restarts = append(m.Restarts, t0.Add(-time.Duration(rng.IntN(90))*time.Minute))
		}
		in.VMs = append(in.VMs, m)
		in.Pool.Allocs = append(in.Pool.Allocs, scheduler.Alloc{Host: "h0", VM: s.Name, CPUs: s.CPUs, MemoryMiB: s.MemoryMiB})
	}
	return in
}

// TestPlanProperties: on random pools, every VM of the dead host is in
// exactly one list; restarts are in restart order, on usable hosts other
// than the dead one that reach the VM's pools, within every host's
// capacity; a parked VM fit on no usable host at its turn; a skipped VM
// had used its restarts; the plan validates, survives JSON and does not
// depend on the order of its input.
func TestPlanProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for run := range 2000 {
		in := randomCase(rng)
		p, err := PlanRestarts(in)
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("run %d: %s\nplan %+v", run, fmt.Sprintf(format, args...), p)
		}
		if err := p.Validate(); err != nil {
			fail("%v", err)
		}
		byName := map[string]VM{}
		for _, m := range in.VMs {
			byName[m.Spec.Name] = m
		}
		if n := len(p.Restarts) + len(p.Parked) + len(p.Skipped) + len(p.Lost) + len(p.Stopped); n != len(in.VMs) {
			fail("%d vms in the plan, %d in the input", n, len(in.VMs)) // Validate saw no duplicates
		}
		hosts := map[string]scheduler.Host{}
		used := map[string][2]int{}
		for _, h := range in.Pool.Hosts {
			hosts[h.Name] = h
		}
		for _, a := range in.Pool.Allocs {
			u := used[a.Host]
			used[a.Host] = [2]int{u[0] + a.CPUs, u[1] + a.MemoryMiB}
		}
		fits := func(h scheduler.Host, m VM) bool {
			u := used[h.Name]
			for _, pl := range m.Pools {
				if !slices.Contains(h.Pools, pl) {
					return false
				}
			}
			return h.Name != in.Host && h.Alive && !h.Maintenance &&
				u[0]+m.Spec.CPUs <= int(math.Floor(float64(h.CPUs)*scheduler.DefaultCPUOvercommit)) &&
				u[1]+m.Spec.MemoryMiB <= int(math.Floor(float64(h.MemoryMiB)*scheduler.DefaultMemoryOvercommit))
		}
		// Walk restarts and parked VMs together in restart order.
		type step struct {
			r      Restart
			parked bool
		}
		var steps []step
		for _, r := range p.Restarts {
			steps = append(steps, step{r: r})
		}
		for _, h := range p.Parked {
			ha := byName[h.VM].Spec.HA
			steps = append(steps, step{r: Restart{VM: h.VM, Priority: ha.Priority, RestartOrder: ha.RestartOrder}, parked: true})
		}
		slices.SortStableFunc(steps, func(a, b step) int { return restartOrder(a.r, b.r) })
		for _, s := range steps {
			m := byName[s.r.VM]
			if m.Spec.HA == nil || !m.Spec.HA.Enabled || m.Spec.Power != v1.PowerRunning || len(m.LocalDisks) > 0 {
				fail("vm %s is not one to restart: %+v", s.r.VM, m)
			}
			if s.parked {
				for _, h := range in.Pool.Hosts {
					if fits(h, m) {
						fail("vm %s parked while %s had room", s.r.VM, h.Name)
					}
				}
				continue
			}
			h := hosts[s.r.Host]
			if !fits(h, m) {
				fail("vm %s restarts on %s, which cannot take it (used %v)", s.r.VM, h.Name, used[h.Name])
			}
			u := used[h.Name]
			used[h.Name] = [2]int{u[0] + m.Spec.CPUs, u[1] + m.Spec.MemoryMiB}
			if n := inWindow(m); s.r.Attempt != n+1 || n >= m.Spec.HA.MaxRestarts {
				fail("vm %s: attempt %d with %d restarts in its window", s.r.VM, s.r.Attempt, n)
			}
		}
		for _, h := range p.Skipped {
			if m := byName[h.VM]; inWindow(m) < m.Spec.HA.MaxRestarts {
				fail("vm %s skipped with %d restarts in its window", h.VM, inWindow(m))
			}
		}
		for _, n := range p.Stopped {
			if byName[n].Spec.Power != v1.PowerStopped {
				fail("vm %s stopped but meant to be %s", n, byName[n].Spec.Power)
			}
		}
		b, _ := json.Marshal(p)
		var back Plan
		if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, p) {
			fail("json round trip: %v\n%s", err, b)
		}
		rng.Shuffle(len(in.VMs), func(i, j int) { in.VMs[i], in.VMs[j] = in.VMs[j], in.VMs[i] })
		rng.Shuffle(len(in.Pool.Hosts), func(i, j int) { in.Pool.Hosts[i], in.Pool.Hosts[j] = in.Pool.Hosts[j], in.Pool.Hosts[i] })
		if q, err := PlanRestarts(in); err != nil || !reflect.DeepEqual(q, p) {
			fail("input order changed the plan: %+v %v", q, err)
		}
	}
}

// inWindow counts m's restarts within its window before t0.
func inWindow(m VM) int {
	w, _ := time.ParseDuration(m.Spec.HA.RestartWindow)
	n := 0
	for _, r := range m.Restarts {
		if t0.Sub(r) < w {
			n++
		}
	}
	return n
}
