package ha

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/scheduler"
)

// haVM is a running HA VM of host h1.
func haVM(name string, prio, order, cpus, mem int) VM {
	return VM{Spec: v1.VMSpec{Name: name, CPUs: cpus, MemoryMiB: mem, Power: v1.PowerRunning, Host: "h1",
		HA: &v1.HA{Enabled: true, Priority: prio, RestartOrder: order, MaxRestarts: 3, RestartWindow: "1h"}}}
}

func with(m VM, f func(*VM)) VM { f(&m); return m }

func pool3() scheduler.Snapshot {
	return scheduler.Snapshot{
		Hosts: []scheduler.Host{
			{Name: "h1", CPUs: 8, MemoryMiB: 8192, Alive: true, Pools: []string{"shared"}}, // dead, still reported alive
			{Name: "h2", CPUs: 8, MemoryMiB: 8192, Alive: true, Pools: []string{"shared"}},
			{Name: "h3", CPUs: 8, MemoryMiB: 4096, Alive: true, Pools: []string{"shared", "fast"}},
			{Name: "h4", CPUs: 64, MemoryMiB: 65536, Alive: true, Maintenance: true, Pools: []string{"shared"}},
		},
		Allocs: []scheduler.Alloc{
			{Host: "h1", VM: "db1", CPUs: 2, MemoryMiB: 2048},
			{Host: "h2", VM: "other", CPUs: 2, MemoryMiB: 4096},
		},
	}
}

func TestPlanRestarts(t *testing.T) {
	now := t0
	vms := []VM{
		haVM("web1", 10, 1, 1, 512),
		haVM("web2", 10, 0, 1, 512),
		haVM("app", 10, 0, 1, 512),
		haVM("db1", 100, 0, 2, 2048),
		with(haVM("pref", 5, 0, 1, 256), func(m *VM) { m.Spec.Placement, m.Spec.PreferredHosts = "preferred", []string{"h3"} }),
		with(haVM("fastvm", 5, 1, 1, 256), func(m *VM) { m.Pools = []string{"fast"} }),
		with(haVM("pinned", 5, 2, 1, 256), func(m *VM) { m.Spec.Placement, m.Spec.PreferredHosts = "manual", []string{"h1"} }),
		haVM("huge", 1, 0, 1, 9000),
		haVM("late", 0, 0, 1, 3000), // would fit on h2 before the others took its room
		with(haVM("flappy", 50, 0, 1, 256), func(m *VM) {
			m.Restarts = []time.Time{now.Add(-10 * time.Minute), now.Add(-20 * time.Minute), now.Add(-50 * time.Minute)}
		}),
		with(haVM("calm", 50, 1, 1, 256), func(m *VM) {
			m.Restarts = []time.Time{now.Add(-2 * time.Hour), now.Add(-90 * time.Minute), now.Add(-30 * time.Minute)}
		}),
		with(haVM("local", 90, 0, 1, 256), func(m *VM) { m.LocalDisks = []string{"disk0"} }),
		with(haVM("idle", 90, 0, 1, 256), func(m *VM) { m.Spec.Power = v1.PowerStopped }),
		with(haVM("nap", 90, 0, 1, 256), func(m *VM) { m.Spec.Power = v1.PowerPaused }),
		with(haVM("batch", 90, 0, 1, 256), func(m *VM) { m.Spec.HA = nil }),
		with(haVM("off", 90, 0, 1, 256), func(m *VM) { m.Spec.HA.Enabled = false }),
		with(haVM("cold", 0, 0, 1, 256), func(m *VM) { m.Spec.HA = nil; m.Spec.Power = v1.PowerStopped }),
		with(haVM("broken", 0, 0, 1, 256), func(m *VM) { m.Spec.Placement = "manual" }), // no hosts: invalid
	}
	p, err := PlanRestarts(Input{Host: "h1", Now: now, VMs: vms, Pool: pool3()})
	if err != nil {
		t.Fatal(err)
	}
	type r struct {
		vm, host string
		attempt  int
	}
	var got []r
	for _, x := range p.Restarts {
		if x.State != RestartPending {
			t.Errorf("%s: state %q", x.VM, x.State)
		}
		got = append(got, r{x.VM, x.Host, x.Attempt})
	}
	// Free before: h2 4096 MiB of 8192, h3 4096 of 4096; each goes to
	// the freer (the scheduler's score: the scarcer of free memory and
	// CPUs over the largest host's), then books its room.
	want := []r{
		{"db1", "h3", 1},    // priority 100 first; h3 has as much memory free and more CPUs
		{"calm", "h2", 2},   // 50; one restart in its window, two before it
		{"app", "h2", 1},    // 10, order 0, by name
		{"web2", "h2", 1},   // 10, order 0
		{"web1", "h2", 1},   // 10, order 1
		{"pref", "h3", 1},   // 5, preferred h3 though h2 is freer
		{"fastvm", "h3", 1}, // only h3 reaches pool fast
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("restarts\n got %v\nwant %v", got, want)
	}
	held := func(l []Held) map[string]string {
		m := map[string]string{}
		for _, h := range l {
			m[h.VM] = h.Reason
		}
		return m
	}
	parked := held(p.Parked)
	if len(parked) != 3 || !strings.Contains(parked["huge"], "short of memory") || !strings.Contains(parked["late"], "short of memory") ||
		!strings.Contains(parked["pinned"], "1 down") {
		t.Errorf("parked %v", parked)
	}
	if p.Parked[0].VM != "pinned" || p.Parked[1].VM != "huge" || p.Parked[2].VM != "late" {
		t.Errorf("parked not in restart order: %v", p.Parked)
	}
	if s := held(p.Skipped); len(s) != 1 || s["flappy"] != "restarted 3 times within 1h (maxRestarts 3)" {
		t.Errorf("skipped %v", s)
	}
	lost := held(p.Lost)
	if len(lost) != 5 || !strings.HasPrefix(lost["broken"], "cannot be placed: invalid placement input") || lost["batch"] != "not highly available: its host h1 is down" || lost["off"] == "" ||
		!strings.Contains(lost["local"], "disk0") || !strings.Contains(lost["nap"], "paused") {
		t.Errorf("lost %v", lost)
	}
	if !reflect.DeepEqual(p.Stopped, []string{"cold", "idle"}) {
		t.Errorf("stopped %v", p.Stopped)
	}
	if err := p.Validate(); err != nil {
		t.Errorf("a fresh plan fails Validate: %v", err)
	}

	// Malformed input is an error, not a plan.
	for name, in := range map[string]Input{
		"bad host":    {Host: "H1", VMs: vms},
		"twice":       {Host: "h1", VMs: []VM{haVM("a", 0, 0, 1, 64), haVM("a", 0, 0, 1, 64)}},
		"bad vm name": {Host: "h1", VMs: []VM{haVM("A", 0, 0, 1, 64)}},
		"bad pool":    {Host: "h1", VMs: vms, Pool: scheduler.Snapshot{Hosts: []scheduler.Host{{Name: "h2"}, {Name: "h2"}}}},
	} {
		if _, err := PlanRestarts(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestPlanJSON(t *testing.T) {
	p := Plan{Version: 1, Host: "h1", Made: t0,
		Restarts: []Restart{{VM: "db1", Host: "h2", Priority: 100, Attempt: 1, State: RestartDone},
			{VM: "web1", Host: "h3", RestartOrder: 1, Attempt: 2, State: RestartFailed, Error: "start: image locked"}},
		Parked:  []Held{{VM: "huge", Reason: "no host can run the vm"}},
		Skipped: []Held{}, Lost: []Held{{VM: "batch", Reason: "not highly available"}}, Stopped: []string{"idle"}}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"version":1,"host":"h1","made":"2026-12-02T04:00:00Z",` +
		`"restarts":[{"vm":"db1","host":"h2","priority":100,"restartOrder":0,"attempt":1,"state":"done"},` +
		`{"vm":"web1","host":"h3","priority":0,"restartOrder":1,"attempt":2,"state":"failed","error":"start: image locked"}],` +
		`"parked":[{"vm":"huge","reason":"no host can run the vm"}],"skipped":[],"lost":[{"vm":"batch","reason":"not highly available"}],"stopped":["idle"]}`
	if string(b) != want {
		t.Fatalf("json\n got %s\nwant %s", b, want)
	}
	var back Plan
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, p) {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	if err := back.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Plan){
		"version":         func(p *Plan) { p.Version = 2 },
		"made":            func(p *Plan) { p.Made = time.Time{} },
		"host":            func(p *Plan) { p.Host = "../h1" },
		"vm name":         func(p *Plan) { p.Restarts[0].VM = "DB" },
		"target":          func(p *Plan) { p.Restarts[0].Host = "" },
		"onto dead host":  func(p *Plan) { p.Restarts[0].Host = "h1" },
		"twice":           func(p *Plan) { p.Lost[0].VM = "db1" },
		"twice stopped":   func(p *Plan) { p.Stopped = append(p.Stopped, "huge") },
		"order":           func(p *Plan) { p.Restarts[1].Priority = 101 },
		"same rank":       func(p *Plan) { p.Restarts[1] = p.Restarts[0] },
		"state":           func(p *Plan) { p.Restarts[0].State = "running" },
		"failed no error": func(p *Plan) { p.Restarts[1].Error = "" },
		"error not failed": func(p *Plan) {
			p.Restarts[0].Error = "x"
		},
		"attempt":   func(p *Plan) { p.Restarts[0].Attempt = 0 },
		"priority":  func(p *Plan) { p.Restarts[0].Priority = 5000 },
		"no reason": func(p *Plan) { p.Parked[0].Reason = " " },
		"long":      func(p *Plan) { p.Lost[0].Reason = strings.Repeat("x", 5000) },
	} {
		var q Plan
		_ = json.Unmarshal(b, &q)
		mut(&q)
		if err := q.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}
