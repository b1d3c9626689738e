package capacity

import (
	"reflect"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/scheduler"
)

func spec(name, host, power string, cpus, mem int) v1.VMSpec {
	return v1.VMSpec{Name: name, Host: host, Power: power, CPUs: cpus, MemoryMiB: mem}
}

func TestAllocated(t *testing.T) {
	specs := []v1.VMSpec{
		spec("a", "h1", v1.PowerRunning, 2, 512),
		spec("b", "h1", v1.PowerStopped, 4, 1024), // stopped: books nothing
		spec("c", "h1", v1.PowerPaused, 1, 256),
		spec("d", "h2", v1.PowerRunning, 8, 8192), // h2 has alloc records: the specs do not count
		spec("e", "", v1.PowerRunning, 1, 128),    // not placed
	}
	allocs := map[string]map[string]inventory.Alloc{
		"h2": {"x": {CPUs: 1, MemoryMiB: 100}, "y": {CPUs: 2, MemoryMiB: 200}},
		"h3": {}, // no record: like no entry
	}
	got := Allocated(specs, allocs)
	want := map[string]inventory.Alloc{"h1": {CPUs: 3, MemoryMiB: 768}, "h2": {CPUs: 3, MemoryMiB: 300}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Allocated = %v, want %v", got, want)
	}
	if got := Allocated(nil, nil); len(got) != 0 {
		t.Fatalf("nothing booked: %v", got)
	}
}

func TestOverview(t *testing.T) {
	const gib = 1 << 30
	hosts := []v1.Host{
		{Name: "h2", CPUs: 2, MemoryMiB: 2048, Alive: false,
			Storage: []v1.StorageUsage{{Pool: "default", Type: "dir", TotalBytes: 10 * gib, UsedBytes: 4 * gib, FreeBytes: 5 * gib},
				{Pool: "nfs", Type: "shared", TotalBytes: 1, UsedBytes: 1, FreeBytes: 0}}},
		{Name: "h1", CPUs: 4, MemoryMiB: 4096, Alive: true,
			Storage: []v1.StorageUsage{{Pool: "default", Type: "dir", TotalBytes: 20 * gib, UsedBytes: 2 * gib, FreeBytes: 17 * gib},
				{Pool: "nfs", Type: "shared", TotalBytes: 100 * gib, UsedBytes: 60 * gib, FreeBytes: 40 * gib}}},
		{Name: "h3", CPUs: 8, MemoryMiB: 8192, Alive: true, Maintenance: true},
	}
	vms := []v1.VM{
		{Spec: spec("a", "h1", v1.PowerRunning, 2, 512), Status: v1.VMStatus{State: v1.StateRunning}},
		{Spec: spec("b", "h1", v1.PowerStopped, 1, 256), Status: v1.VMStatus{State: v1.StateStopped}},
		{Spec: spec("c", "h3", v1.PowerRunning, 1, 256), Status: v1.VMStatus{State: v1.StateRunning}},
		{Spec: spec("d", "", v1.PowerStopped, 1, 256), Status: v1.VMStatus{State: v1.StateCreating}},
	}
	alloc := map[string]inventory.Alloc{"h1": {CPUs: 17, MemoryMiB: 1024}, "h3": {CPUs: 1, MemoryMiB: 9000}}
	got := Overview(hosts, vms, alloc, scheduler.Policy{}, "Westmere")

	if names := []string{got.Hosts[0].Name, got.Hosts[1].Name, got.Hosts[2].Name}; !reflect.DeepEqual(names, []string{"h1", "h2", "h3"}) {
		t.Fatalf("hosts not sorted by name: %v", names)
	}
	h1, h2, h3 := got.Hosts[0], got.Hosts[1], got.Hosts[2]
	if h1.State != v1.HostAlive || h2.State != v1.HostDown || h3.State != v1.HostMaintenance {
		t.Fatalf("states %s %s %s", h1.State, h2.State, h3.State)
	}
	// h1: 4 CPUs × 4.0 = 16 admitted, 17 booked → 0 free (never negative); memory 4096 × 1.0 − 1024.
	if h1.AllocatedCPUs != 17 || h1.FreeCPUs != 0 || h1.AllocatedMemoryMiB != 1024 || h1.FreeMemoryMiB != 3072 ||
		h1.CPUOvercommit != 4 || h1.MemoryOvercommit != 1 {
		t.Fatalf("h1 capacity %+v", h1)
	}
	if h2.AllocatedCPUs != 0 || h2.FreeCPUs != 8 || h2.FreeMemoryMiB != 2048 {
		t.Fatalf("h2 capacity %+v", h2)
	}
	if h3.FreeMemoryMiB != 0 || h3.FreeCPUs != 31 {
		t.Fatalf("h3 capacity %+v", h3)
	}
	if h1.VMs != 2 || !reflect.DeepEqual(h1.VMStates, map[string]int{v1.StateRunning: 1, v1.StateStopped: 1}) || h2.VMs != 0 || h3.VMs != 1 {
		t.Fatalf("vm counts h1 %d %v h2 %d h3 %d", h1.VMs, h1.VMStates, h2.VMs, h3.VMs)
	}
	p := got.Pool
	want := v1.PoolCapacity{
		Hosts: 3, HostsAlive: 1, HostsDown: 1, HostsMaintenance: 1,
		CPUs: 14, AllocatedCPUs: 18, FreeCPUs: 0, // only h1 takes new VMs, and it is full
		MemoryMiB: 14336, AllocatedMemoryMiB: 10024, FreeMemoryMiB: 3072,
		CPUOvercommit: 4, MemoryOvercommit: 1, CPUModel: "Westmere",
		VMStates: map[string]int{v1.StateRunning: 2, v1.StateStopped: 1, v1.StateCreating: 1},
		Storage: []v1.StorageUsage{
			{Pool: "default", Type: "dir", TotalBytes: 30 * gib, UsedBytes: 6 * gib, FreeBytes: 22 * gib},  // summed
			{Pool: "nfs", Type: "shared", TotalBytes: 100 * gib, UsedBytes: 60 * gib, FreeBytes: 40 * gib}, // once, from the live host
		},
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("pool\n got %+v\nwant %+v", p, want)
	}

	// The ratios come from the policy.
	got = Overview(hosts[1:2], nil, nil, scheduler.Policy{CPUOvercommit: 1.5, MemoryOvercommit: 1.25}, "qemu64")
	if h := got.Hosts[0]; h.Name != "h1" || h.FreeCPUs != 6 || h.FreeMemoryMiB != 5120 || got.Pool.CPUOvercommit != 1.5 {
		t.Fatalf("policy ratios: %+v %+v", h, got.Pool)
	}
	// An empty pool is zeros, with empty (not null) lists.
	got = Overview(nil, nil, nil, scheduler.Policy{}, "Westmere")
	if got.Hosts == nil || got.Pool.Storage == nil || got.Pool.VMStates == nil || got.Pool.Hosts != 0 {
		t.Fatalf("empty pool %+v", got)
	}
}
