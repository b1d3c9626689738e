package bench

import (
	"bytes"
	"strings"
	"testing"

	"hangar/internal/scheduler"
)

// TestPlace runs the benchmark on a small pool: both pools are placed,
// the plans pass CheckPlan, and the last line has the promised form.
func TestPlace(t *testing.T) {
	var out bytes.Buffer
	big, small, err := Place(PlaceConfig{Hosts: 200, VMs: 2000, Runs: 1, Seed: 3, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if big.Hosts != 200 || small.Hosts != 20 || big.Placed+big.Refused != 2000 || small.Placed+small.Refused != 200 || big.Placed < 1500 {
		t.Fatalf("runs %+v %+v", big, small)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "placements/s ") || !strings.Contains(last, "(200 hosts), cost per placement ×") {
		t.Fatalf("last line %q", last)
	}
}

// TestCheckPlanCatches: CheckPlan refuses a plan that overcommits, puts a
// group twice on a host or uses a host in maintenance.
func TestCheckPlanCatches(t *testing.T) {
	s := scheduler.Snapshot{Hosts: []scheduler.Host{
		{Name: "a", CPUs: 1, MemoryMiB: 1024, Alive: true},
		{Name: "m", CPUs: 8, MemoryMiB: 8192, Alive: true, Maintenance: true},
	}}
	reqs := []scheduler.Request{{VM: "x", CPUs: 1, MemoryMiB: 1024, AntiAffinity: "g"}, {VM: "y", CPUs: 1, MemoryMiB: 1, AntiAffinity: "g"}}
	for name, plan := range map[string][]scheduler.Placement{
		"memory":      {{VM: "x", Host: "a"}, {VM: "y", Host: "a"}},
		"maintenance": {{VM: "x", Host: "m"}},
	} {
		if err := CheckPlan(s, reqs[:len(plan)], plan); err == nil {
			t.Errorf("%s: CheckPlan accepted %+v", name, plan)
		}
	}
	s.Hosts[0].MemoryMiB = 4096
	if err := CheckPlan(s, reqs, []scheduler.Placement{{VM: "x", Host: "a"}, {VM: "y", Host: "a"}}); err == nil || !strings.Contains(err.Error(), "group g") {
		t.Errorf("anti-affinity: %v", err)
	}
	if err := CheckPlan(s, reqs[:1], []scheduler.Placement{{VM: "x", Host: "a"}}); err != nil {
		t.Errorf("a good plan: %v", err)
	}
}

func BenchmarkSimulatedPool(b *testing.B) {
	s, reqs := SimulatedPool(1, 2500, 50000)
	for b.Loop() {
		if _, err := scheduler.Plan(s, reqs); err != nil {
			b.Fatal(err)
		}
	}
}
