package scheduler

import (
	"errors"
	"testing"

	v1 "hangar/api/v1"
)

func TestPlace(t *testing.T) {
	h := func(name string, mem, alloc int, alive bool) v1.Host {
		return v1.Host{Name: name, MemoryMiB: mem, AllocatedMemoryMiB: alloc, Alive: alive}
	}
	maint := func(h v1.Host) v1.Host { h.Maintenance = true; return h }
	cases := []struct {
		name  string
		hosts []v1.Host
		mem   int
		want  string
		err   bool
	}{
		{"single host", []v1.Host{h("a", 1024, 0, true)}, 512, "a", false},
		{"most free wins", []v1.Host{h("a", 4096, 3000, true), h("b", 2048, 0, true)}, 512, "b", false},
		{"dead host skipped", []v1.Host{h("a", 8192, 0, false), h("b", 1024, 0, true)}, 512, "b", false},
		{"tie broken by name", []v1.Host{h("b", 1024, 0, true), h("a", 1024, 0, true)}, 512, "a", false},
		{"nothing fits", []v1.Host{h("a", 1024, 800, true)}, 512, "", true},
		{"no live host", []v1.Host{h("a", 1024, 0, false)}, 512, "", true},
		{"no hosts", nil, 512, "", true},
		{"maintenance skipped", []v1.Host{maint(h("a", 8192, 0, true)), h("b", 1024, 0, true)}, 512, "b", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Place(c.hosts, v1.VMSpec{MemoryMiB: c.mem})
			if c.err {
				if !errors.Is(err, ErrNoHost) {
					t.Fatalf("err = %v, want ErrNoHost", err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("Place = %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func TestLargestHostMemory(t *testing.T) {
	hosts := []v1.Host{{Name: "a", MemoryMiB: 9000}, {Name: "b", MemoryMiB: 4096, Alive: true}, {Name: "c", MemoryMiB: 2048, Alive: true}}
	if got := LargestHostMemory(hosts); got != 4096 {
		t.Fatalf("LargestHostMemory = %d, want 4096 (the dead host does not count)", got)
	}
	if got := LargestHostMemory(nil); got != 0 {
		t.Fatalf("LargestHostMemory(nil) = %d", got)
	}
}

func TestFromSpec(t *testing.T) {
	if PlacementAuto != v1.PlacementAuto || PlacementPreferred != v1.PlacementPreferred || PlacementManual != v1.PlacementManual {
		t.Fatal("the scheduler's placement modes differ from the API's")
	}
	spec := v1.VMSpec{Name: "db1", CPUs: 2, MemoryMiB: 2048, Placement: v1.PlacementManual, PreferredHosts: []string{"h2"}, AntiAffinityGroup: "db"}
	r := FromSpec(spec, []string{"shared"})
	got, err := Plan(Snapshot{Hosts: []Host{host("h1", 8, 8192, "shared"), host("h2", 8, 4096, "shared")}}, []Request{r})
	if err != nil || got[0].Host != "h2" {
		t.Fatalf("manual placement from a spec: %+v, %v (request %+v)", got, err, r)
	}
	if r.AntiAffinity != "db" || r.CPUs != 2 || r.MemoryMiB != 2048 || r.VM != "db1" || r.Pools[0] != "shared" {
		t.Fatalf("FromSpec = %+v", r)
	}
}
