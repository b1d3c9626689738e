package manager

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/qemu"
	"hangar/internal/store"
)

// TestCapacity: GET /api/v1/capacity and /hosts count, live, what is booked
// on each host (the master's alloc records where a host has any, else the
// specs placed there), the host's state (a down host, one in maintenance)
// and the VMs by state; /metrics reports the same.
func TestCapacity(t *testing.T) {
	leaseless := []string{v1.HostDown, v1.HostSuspect, v1.HostIsolated, v1.HostDead}
	ts := newTestServer(t)
	ctx := t.Context()
	put := func(key string, v any) {
		t.Helper()
		if _, err := ts.st.Put(ctx, key, inventory.Marshal(v), store.AnyRevision); err != nil {
			t.Fatal(err)
		}
	}
	// On h1, the only host yet: the master books both (a stopped VM keeps
	// its booking).
	ts.createVM(`{"name":"web1","cpus":2,"memoryMiB":128}`)
	ts.createVM(`{"name":"web2","memoryMiB":256}`)
	put(inventory.HostInfoKey("h2"), v1.Host{Name: "h2", CPUs: 2, MemoryMiB: 2048, Accelerator: "tcg"}) // no lease: down
	put(inventory.HostInfoKey("h3"), v1.Host{Name: "h3", CPUs: 8, MemoryMiB: 8192, Accelerator: "tcg"})
	put(inventory.HostKey("h3"), map[string]string{})
	put(inventory.MaintenanceKey("h3"), map[string]string{})
	put(inventory.AllocKey("h3", "big"), inventory.Alloc{CPUs: 3, MemoryMiB: 3000})
	// web1 runs (its spec says so), web2 stays stopped.
	spec, rev, err := ts.s.inv.Spec(ctx, "web1")
	if err != nil {
		t.Fatal(err)
	}
	spec.Power = v1.PowerRunning
	if _, err := ts.st.Put(ctx, inventory.VMKey("web1"), inventory.Marshal(spec), rev); err != nil {
		t.Fatal(err)
	}
	ts.setState("web1", v1.StateRunning)
	ts.setState("web2", v1.StateStopped)

	code, _, b := ts.do("GET", "/api/v1/capacity", "", "")
	var c v1.Capacity
	if code != 200 || json.Unmarshal(b, &c) != nil || len(c.Hosts) != 3 {
		t.Fatalf("capacity: %d %s", code, b)
	}
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]
	if h1.Name != "h1" || h1.State != v1.HostAlive || h1.AllocatedCPUs != 3 || h1.AllocatedMemoryMiB != 384 ||
		h1.FreeCPUs != 13 || h1.FreeMemoryMiB != 4096-384 || h1.VMs != 2 || h1.VMStates[v1.StateRunning] != 1 || h1.VMStates[v1.StateStopped] != 1 {
		t.Fatalf("h1: %+v", h1)
	}
	// h2 has no lease: down, or already judged by the running master
	// (suspect first) on a loaded machine.
	if !slices.Contains(leaseless, h2.State) || h2.Alive || h3.State != v1.HostMaintenance || !h3.Maintenance || h3.AllocatedCPUs != 3 || h3.AllocatedMemoryMiB != 3000 {
		t.Fatalf("h2 %+v\nh3 %+v", h2, h3)
	}
	p := c.Pool
	if p.Hosts != 3 || p.HostsAlive != 1 || p.HostsDown != 1 || p.HostsMaintenance != 1 || p.CPUs != 14 || p.AllocatedCPUs != 6 ||
		p.FreeCPUs != 13 || p.FreeMemoryMiB != 4096-384 || p.CPUOvercommit != 4 || p.MemoryOvercommit != 1 || p.CPUModel != qemu.TCGCPUModel ||
		p.VMStates[v1.StateRunning] != 1 || p.VMStates[v1.StateStopped] != 1 {
		t.Fatalf("pool: %+v", p)
	}

	// /hosts carries the same per-host figures.
	code, _, b = ts.do("GET", "/api/v1/hosts/h3", "", "")
	var h v1.Host
	if code != 200 || json.Unmarshal(b, &h) != nil || h.State != v1.HostMaintenance || h.AllocatedMemoryMiB != 3000 {
		t.Fatalf("host h3: %d %s", code, b)
	}

	// A booking appears at once: no agent needs to republish its facts.
	put(inventory.AllocKey("h1", "web1"), inventory.Alloc{CPUs: 6, MemoryMiB: 1000})
	if _, _, b = ts.do("GET", "/api/v1/capacity", "", ""); json.Unmarshal(b, &c) != nil || c.Hosts[0].AllocatedCPUs != 7 || c.Hosts[0].AllocatedMemoryMiB != 1256 {
		t.Fatalf("after an alloc record: %s", b)
	}

	// A malformed alloc record is refused, not counted.
	put(inventory.Allocs+"h1", inventory.Alloc{CPUs: 1})
	if code, _, b = ts.do("GET", "/api/v1/capacity", "", ""); code != 500 {
		t.Fatalf("bad alloc key: %d %s", code, b)
	}
	if err := ts.st.Delete(ctx, inventory.Allocs+"h1", store.AnyRevision); err != nil {
		t.Fatal(err)
	}

	code, _, b = ts.do("GET", "/metrics", "", "")
	m := string(b)
	probs, err := promlint.New(strings.NewReader(m)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	for _, want := range []string{
		`hangar_host_state{host="h3",state="maintenance"} 1`,
		`hangar_host_vcpus_allocated{host="h1"} 7`,
		`hangar_host_vcpus_free{host="h1"} 9`,
		`hangar_pool_hosts{state="alive"} 1`,
		`hangar_pool_vcpus_allocated 10`,
		`hangar_pool_cpu_overcommit_ratio 4`,
		`hangar_pool_cpu_model_info{model="` + qemu.TCGCPUModel + `"} 1`,
		`hangar_host_vms_in_state{host="h1",state="running"} 1`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("/metrics (%d) lacks %q", code, want)
		}
	}
	if n := strings.Count(m, `hangar_host_state{host="h2",`); n != 6 {
		t.Errorf("/metrics has %d states of h2, want 6", n)
	}
	h2States := 0
	for _, st := range leaseless {
		h2States += strings.Count(m, `hangar_host_state{host="h2",state="`+st+`"} 1`+"\n")
	}
	if h2States != 1 {
		t.Errorf("/metrics: h2 (no lease) is in %d of the states %v, want one", h2States, leaseless)
	}

	// The master's judgement of a host without a lease is its state too.
	put(inventory.LivenessKey("h2"), inventory.HostLiveness{State: v1.HostDead, Why: "lease and heartbeat gone"})
	_, _, b = ts.do("GET", "/metrics", "", "")
	for _, want := range []string{`hangar_host_state{host="h2",state="dead"} 1`, `hangar_host_state{host="h2",state="down"} 0`,
		`hangar_host_state{host="h2",state="suspect"} 0`} {
		if !strings.Contains(string(b), want+"\n") {
			t.Errorf("/metrics with h2 judged dead lacks %q", want)
		}
	}
}

// TestDefaultCPUModelIsThePools: a VM that names no CPU model gets the
// pool's (a named model every live host runs), not "host" or "max"; an
// explicit one is kept.
func TestDefaultCPUModelIsThePools(t *testing.T) {
	ts := newTestServer(t)
	ctx := t.Context()
	ts.createVM(`{"name":"a","memoryMiB":128}`)
	ts.createVM(`{"name":"b","memoryMiB":128,"cpuModel":"max"}`)
	for name, want := range map[string]string{"a": qemu.TCGCPUModel, "b": "max"} {
		if s, _, err := ts.s.inv.Spec(ctx, name); err != nil || s.CPUModel != want {
			t.Fatalf("vm %s: cpu model %q (%v), want %q", name, s.CPUModel, err, want)
		}
	}
	// KVM hosts only: the newest model both run.
	for _, h := range []v1.Host{
		{Name: "h1", CPUs: 4, MemoryMiB: 4096, Accelerator: "kvm", UsableCPUModels: []string{"qemu64", "Nehalem", "Haswell", "Skylake-Server"}},
		{Name: "h2", CPUs: 4, MemoryMiB: 4096, Accelerator: "kvm", UsableCPUModels: []string{"qemu64", "Nehalem", "Haswell"}},
	} {
		if _, err := ts.st.Put(ctx, inventory.HostInfoKey(h.Name), inventory.Marshal(h), store.AnyRevision); err != nil {
			t.Fatal(err)
		}
		if _, err := ts.st.Put(ctx, inventory.HostKey(h.Name), []byte("{}"), store.AnyRevision); err != nil {
			t.Fatal(err)
		}
	}
	ts.createVM(`{"name":"c","memoryMiB":128}`)
	if s, _, err := ts.s.inv.Spec(ctx, "c"); err != nil || s.CPUModel != "Haswell" {
		t.Fatalf("kvm pool: cpu model %q (%v), want Haswell", s.CPUModel, err)
	}
}
