package scheduler

import (
	"errors"
	"strings"
	"testing"
)

func host(name string, cpus, mem int, pools ...string) Host {
	return Host{Name: name, CPUs: cpus, MemoryMiB: mem, Alive: true, Pools: pools}
}

func TestPlanTable(t *testing.T) {
	down := func(h Host) Host { h.Alive = false; return h }
	maint := func(h Host) Host { h.Maintenance = true; return h }
	vm := func(name string, cpus, mem int) Request { return Request{VM: name, CPUs: cpus, MemoryMiB: mem} }
	with := func(r Request, f func(*Request)) Request { f(&r); return r }
	cases := []struct {
		name   string
		snap   Snapshot
		reqs   []Request
		want   []string // host per request; "" = refused with ErrNoHost
		errHas []string // substrings of the refusal errors, in order
	}{
		{
			name: "most free memory wins",
			snap: Snapshot{Hosts: []Host{host("a", 8, 8192), host("b", 8, 8192)},
				Allocs: []Alloc{{Host: "a", VM: "x", CPUs: 1, MemoryMiB: 4096}}},
			reqs: []Request{vm("v", 1, 512)},
			want: []string{"b"},
		},
		{
			name: "absolute, not a fraction: the big half-full host beats the small empty one",
			snap: Snapshot{Hosts: []Host{host("big", 64, 262144), host("small", 4, 4096)},
				Allocs: []Alloc{{Host: "big", VM: "x", CPUs: 128, MemoryMiB: 131072}}},
			reqs: []Request{vm("v", 1, 1024)},
			want: []string{"big"},
		},
		{
			name: "equal free memory: the most free CPUs wins",
			snap: Snapshot{Hosts: []Host{host("a", 4, 8192), host("b", 8, 8192), host("c", 16, 8192)},
				Allocs: []Alloc{{Host: "c", VM: "x", CPUs: 40, MemoryMiB: 0}}},
			reqs: []Request{vm("v", 1, 1024)},
			want: []string{"b"},
		},
		{
			name: "the scarcer resource decides: memory to spare but one CPU slot left loses",
			snap: Snapshot{Hosts: []Host{host("a", 1, 65536), host("b", 16, 8192)},
				Allocs: []Alloc{{Host: "a", VM: "x", CPUs: 3, MemoryMiB: 0}}},
			reqs: []Request{vm("v", 1, 1024)},
			want: []string{"b"},
		},
		{
			name: "tie broken by name, whatever the order of the hosts",
			snap: Snapshot{Hosts: []Host{host("c", 4, 4096), host("a", 4, 4096), host("b", 4, 4096)}},
			reqs: []Request{vm("v1", 1, 1024), vm("v2", 1, 1024), vm("v3", 1, 1024), vm("v4", 1, 1024)},
			want: []string{"a", "b", "c", "a"},
		},
		{
			name:   "down and maintenance hosts take nothing",
			snap:   Snapshot{Hosts: []Host{down(host("a", 64, 65536)), maint(host("b", 64, 65536)), host("c", 1, 1024)}},
			reqs:   []Request{vm("v", 1, 512), vm("w", 1, 1024)},
			want:   []string{"c", ""},
			errHas: []string{`vm "w" needs 1 CPUs and 1024 MiB; of 3 hosts: 1 down, 1 in maintenance, 1 short of memory (c: 512 MiB free of 1024 MiB allocatable (1024 MiB, 0 reserved for the host, × overcommit 1.0))`},
		},
		{
			name: "the host must reach every pool of the vm",
			snap: Snapshot{Hosts: []Host{host("a", 8, 8192, "shared"), host("b", 8, 8192, "shared", "fast"), host("c", 8, 8192, "fast")}},
			reqs: []Request{
				with(vm("v", 1, 512), func(r *Request) { r.Pools = []string{"shared", "fast"} }),
				with(vm("w", 1, 512), func(r *Request) { r.Pools = []string{"nowhere"} }),
			},
			want:   []string{"b", ""},
			errHas: []string{"3 not reaching pool nowhere"},
		},
		{
			name: "anti-affinity spreads a group and refuses when every host has one",
			snap: Snapshot{Hosts: []Host{host("a", 8, 8192), host("b", 8, 8192)},
				Allocs: []Alloc{{Host: "a", VM: "db0", CPUs: 1, MemoryMiB: 512, AntiAffinity: "db"}}},
			reqs: []Request{
				with(vm("db1", 1, 512), func(r *Request) { r.AntiAffinity = "db" }),
				with(vm("db2", 1, 512), func(r *Request) { r.AntiAffinity = "db" }),
				with(vm("web", 1, 512), func(r *Request) { r.AntiAffinity = "web" }),
			},
			want:   []string{"b", "", "a"},
			errHas: []string{"2 already running a vm of anti-affinity group db"},
		},
		{
			name: "a vm's own allocation does not repel it",
			snap: Snapshot{Hosts: []Host{host("a", 8, 8192)},
				Allocs: []Alloc{{Host: "a", VM: "db0", CPUs: 1, MemoryMiB: 512, AntiAffinity: "db"}}},
			reqs: []Request{with(vm("db0", 1, 512), func(r *Request) { r.AntiAffinity = "db" })},
			want: []string{"a"},
		},
		{
			name:   "cpu overcommit 4 by default: 8 vCPUs on 2 CPUs, not 9",
			snap:   Snapshot{Hosts: []Host{host("a", 2, 65536)}},
			reqs:   []Request{vm("v", 8, 512), vm("w", 1, 512)},
			want:   []string{"a", ""},
			errHas: []string{"1 short of CPUs (a: 0 CPUs free of 8 allocatable (2 CPUs, 0 reserved for the host, × overcommit 4.0))"},
		},
		{
			name: "configured ratios: memory 1.5, cpu 1",
			snap: Snapshot{Hosts: []Host{host("a", 4, 1000)}, Policy: Policy{CPUOvercommit: 1, MemoryOvercommit: 1.5}},
			reqs: []Request{vm("v", 4, 1500), vm("w", 1, 1)},
			want: []string{"a", ""},
		},
		{
			name:   "memory is not overcommitted by default",
			snap:   Snapshot{Hosts: []Host{host("a", 64, 4096)}, Allocs: []Alloc{{Host: "a", VM: "x", CPUs: 1, MemoryMiB: 3072}}},
			reqs:   []Request{vm("v", 1, 1025), vm("w", 1, 1024)},
			want:   []string{"", "a"},
			errHas: []string{"a: 1024 MiB free of 4096 MiB allocatable (4096 MiB, 0 reserved for the host, × overcommit 1.0)"},
		},
		{
			name: "preferred hosts win over freer ones, and fall back when full",
			snap: Snapshot{Hosts: []Host{host("a", 8, 8192), host("b", 8, 2048), host("c", 8, 2048)},
				Allocs: []Alloc{{Host: "c", VM: "x", CPUs: 1, MemoryMiB: 1024}}},
			reqs: []Request{
				with(vm("v", 1, 1024), func(r *Request) { r.PreferredHosts = []string{"c", "b"} }),
				with(vm("w", 1, 1024), func(r *Request) { r.Placement = PlacementPreferred; r.PreferredHosts = []string{"c"} }),
				with(vm("x2", 1, 2048), func(r *Request) { r.Placement = PlacementPreferred; r.PreferredHosts = []string{"c", "b", "gone"} }),
			},
			want: []string{"b", "c", "a"},
		},
		{
			name: "manual: exactly that host, never another",
			snap: Snapshot{Hosts: []Host{host("a", 8, 8192), host("b", 8, 2048), maint(host("m", 8, 8192))}},
			reqs: []Request{
				with(vm("v", 1, 2048), func(r *Request) { r.Placement = PlacementManual; r.PreferredHosts = []string{"b"} }),
				with(vm("w", 1, 1024), func(r *Request) { r.Placement = PlacementManual; r.PreferredHosts = []string{"b"} }),
				with(vm("x", 1, 1024), func(r *Request) { r.Placement = PlacementManual; r.PreferredHosts = []string{"m"} }),
				with(vm("y", 1, 1024), func(r *Request) { r.Placement = PlacementManual; r.PreferredHosts = []string{"zz"} }),
				with(vm("z", 1, 1024), func(r *Request) { r.Placement = PlacementManual; r.PreferredHosts = []string{"b", "a"} }),
			},
			want: []string{"b", "", "", "", "a"},
			errHas: []string{
				"of 1 manual hosts: 1 short of memory (b: 0 MiB free of 2048",
				"of 1 manual hosts: 1 in maintenance",
				"of 1 manual hosts: 1 not in the pool",
			},
		},
		{
			name: "exclude the source of a migration",
			snap: Snapshot{Hosts: []Host{host("a", 8, 8192), host("b", 8, 2048)}},
			reqs: []Request{
				with(vm("v", 1, 1024), func(r *Request) { r.Exclude = []string{"a"} }),
				with(vm("w", 1, 1024), func(r *Request) { r.Exclude = []string{"a", "b"} }),
				vm("x", 1, 1024),
			},
			want:   []string{"b", "", "a"},
			errHas: []string{"2 excluded"},
		},
		{
			name: "a batch never overcommits: each placement books its host",
			snap: Snapshot{Hosts: []Host{host("a", 4, 4096), host("b", 4, 4096)}},
			reqs: []Request{vm("v1", 1, 3000), vm("v2", 1, 3000), vm("v3", 1, 1096), vm("v4", 1, 1096), vm("v5", 1, 1)},
			want: []string{"a", "b", "a", "b", ""},
		},
		{
			name: "allocations on a host that left the pool are ignored",
			snap: Snapshot{Hosts: []Host{host("a", 4, 4096)}, Allocs: []Alloc{{Host: "gone", VM: "x", CPUs: 99, MemoryMiB: 99999}}},
			reqs: []Request{vm("v", 1, 4096)},
			want: []string{"a"},
		},
		{
			name:   "no hosts at all",
			snap:   Snapshot{},
			reqs:   []Request{vm("v", 1, 1)},
			want:   []string{""},
			errHas: []string{"of 0 hosts: the pool has no hosts"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Plan(c.snap, c.reqs)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.reqs) {
				t.Fatalf("%d placements for %d requests", len(got), len(c.reqs))
			}
			var errs []string
			for i, p := range got {
				if p.VM != c.reqs[i].VM {
					t.Errorf("placement %d is for %q, want %q", i, p.VM, c.reqs[i].VM)
				}
				if p.Host != c.want[i] {
					t.Errorf("%s: host %q (err %v), want %q", p.VM, p.Host, p.Err, c.want[i])
				}
				if c.want[i] == "" {
					if !errors.Is(p.Err, ErrNoHost) {
						t.Errorf("%s: err %v, want ErrNoHost", p.VM, p.Err)
					} else {
						errs = append(errs, p.Err.Error())
					}
				} else if p.Err != nil {
					t.Errorf("%s: err %v with host %q", p.VM, p.Err, p.Host)
				}
			}
			for k, want := range c.errHas {
				if k >= len(errs) || !strings.Contains(errs[k], want) {
					t.Errorf("refusal %d: %q, want it to contain %q", k, errs, want)
				}
			}
		})
	}
}

func TestPlanInvalid(t *testing.T) {
	ok := Snapshot{Hosts: []Host{host("a", 4, 4096)}}
	good := Request{VM: "v", CPUs: 1, MemoryMiB: 1}
	snaps := map[string]Snapshot{
		"unnamed host":    {Hosts: []Host{{CPUs: 1, MemoryMiB: 1}}},
		"duplicate host":  {Hosts: []Host{host("a", 1, 1), host("a", 1, 1)}},
		"negative cpus":   {Hosts: []Host{host("a", -1, 1)}},
		"huge memory":     {Hosts: []Host{host("a", 1, maxMemoryMiB+1)}},
		"negative alloc":  {Hosts: []Host{host("a", 4, 4096)}, Allocs: []Alloc{{Host: "a", VM: "x", CPUs: 1, MemoryMiB: -4096}}},
		"negative ratio":  {Hosts: []Host{host("a", 1, 1)}, Policy: Policy{CPUOvercommit: -1}},
		"unbounded ratio": {Hosts: []Host{host("a", 1, 1)}, Policy: Policy{MemoryOvercommit: 1e9}},
	}
	for name, s := range snaps {
		if _, err := Plan(s, []Request{good}); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
	}
	reqs := map[string]Request{
		"no name":             {CPUs: 1, MemoryMiB: 1},
		"zero cpus":           {VM: "v", MemoryMiB: 1},
		"negative memory":     {VM: "v", CPUs: 1, MemoryMiB: -1},
		"unknown placement":   {VM: "v", CPUs: 1, MemoryMiB: 1, Placement: "best"},
		"manual without host": {VM: "v", CPUs: 1, MemoryMiB: 1, Placement: PlacementManual},
		"preferred, no hosts": {VM: "v", CPUs: 1, MemoryMiB: 1, Placement: PlacementPreferred},
	}
	for name, r := range reqs {
		got, err := Plan(ok, []Request{r})
		if err != nil || !errors.Is(got[0].Err, ErrInvalid) || got[0].Host != "" {
			t.Errorf("%s: %+v, %v; want ErrInvalid", name, got, err)
		}
	}
	got, err := Plan(ok, []Request{good, good})
	if err != nil || got[0].Host != "a" || !errors.Is(got[1].Err, ErrInvalid) {
		t.Errorf("a vm twice in one batch: %+v, %v", got, err)
	}
}

func TestPlaceIO(t *testing.T) {
	s := Snapshot{
		Hosts: []Host{host("a", 8, 8192, "shared"), host("b", 8, 8192, "shared", "fast"), host("c", 64, 65536, "fast"),
			{Name: "d", CPUs: 64, MemoryMiB: 65536, Pools: []string{"shared", "fast"}}}, // down
		Allocs: []Alloc{{Host: "b", VM: "x", CPUs: 32, MemoryMiB: 8192}}, // b is full: an I/O job still goes there
	}
	for _, c := range []struct {
		pools []string
		want  string
	}{{[]string{"shared"}, "a"}, {[]string{"fast"}, "c"}, {[]string{"shared", "fast"}, "b"}, {nil, "c"}, {[]string{"nowhere"}, ""}} {
		got, err := PlaceIO(s, c.pools)
		if got != c.want || (c.want == "") != errors.Is(err, ErrNoHost) {
			t.Errorf("PlaceIO(%v) = %q, %v; want %q", c.pools, got, err, c.want)
		}
	}
}

// TestShortError: a refusal for capacity alone is a ShortError naming the
// resource and the reserve; one with hosts down as well is not.
func TestShortError(t *testing.T) {
	snap := Snapshot{Policy: Policy{ReserveMemoryMiB: 3072, ReserveCPUs: 1},
		Hosts: []Host{{Name: "a", CPUs: 4, MemoryMiB: 4096, Alive: true}}}
	plan, err := Plan(snap, []Request{{VM: "big", CPUs: 1, MemoryMiB: 2048}})
	if err != nil {
		t.Fatal(err)
	}
	var se *ShortError
	if !errors.As(plan[0].Err, &se) || se.Field != "memoryMiB" || !errors.Is(plan[0].Err, ErrNoHost) {
		t.Fatalf("refusal %v, want a ShortError on memoryMiB", plan[0].Err)
	}
	if want := "a: 1024 MiB free of 1024 MiB allocatable (4096 MiB, 3072 reserved for the host"; !strings.Contains(se.Error(), want) {
		t.Errorf("refusal %q, want it to contain %q", se, want)
	}
	snap.Hosts = append(snap.Hosts, Host{Name: "b", CPUs: 8, MemoryMiB: 8192})
	plan, _ = Plan(snap, []Request{{VM: "big", CPUs: 1, MemoryMiB: 8192}})
	if errors.As(plan[0].Err, &se) || !errors.Is(plan[0].Err, ErrNoHost) {
		t.Errorf("with a host down: %v, want a plain ErrNoHost", plan[0].Err)
	}
}

// TestCheckResize: a placed VM grows within its host's allocatable less
// the other VMs' bookings (its own left out), else a ShortError on the
// resource short.
func TestCheckResize(t *testing.T) {
	pol, err := NormPolicy(Policy{ReserveMemoryMiB: 1024, ReserveCPUs: 1, CPUOvercommit: 1})
	if err != nil {
		t.Fatal(err)
	}
	h := Host{Name: "a", CPUs: 4, MemoryMiB: 4096}
	booked := []Alloc{{Host: "a", VM: "v", CPUs: 1, MemoryMiB: 1024}, {Host: "a", VM: "o", CPUs: 1, MemoryMiB: 1024}}
	for _, c := range []struct {
		cpus, mem int
		field     string
	}{{1, 2048, ""}, {2, 2049, "memoryMiB"}, {2, 1024, ""}, {3, 1024, "cpus"}} {
		err := pol.CheckResize(h, booked, "v", c.cpus, c.mem)
		var se *ShortError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%d CPUs %d MiB: %v", c.cpus, c.mem, err)
		case c.field != "" && (!errors.As(err, &se) || se.Field != c.field || !strings.Contains(se.Msg, "reserved for the host")):
			t.Errorf("%d CPUs %d MiB: %v, want a ShortError on %s", c.cpus, c.mem, err, c.field)
		}
	}
}
