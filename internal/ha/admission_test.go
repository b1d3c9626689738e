package ha

import (
	"errors"
	"strings"
	"testing"

	"hangar/internal/scheduler"
)

func onHost(m VM, host string) VM { m.Spec.Host = host; return m }

func TestAdmit(t *testing.T) {
	pool := scheduler.Snapshot{Hosts: []scheduler.Host{
		{Name: "h1", CPUs: 4, MemoryMiB: 4096, Alive: true},
		{Name: "h2", CPUs: 4, MemoryMiB: 4096, Alive: true},
		{Name: "h3", CPUs: 4, MemoryMiB: 4096, Alive: true},
		{Name: "h9", CPUs: 64, MemoryMiB: 1 << 20}, // down: its VMs are another story
	}}
	book := func(s scheduler.Snapshot, vms []VM) scheduler.Snapshot {
		s.Allocs = nil
		for _, m := range vms {
			s.Allocs = append(s.Allocs, scheduler.Alloc{Host: m.Spec.Host, VM: m.Spec.Name, CPUs: m.Spec.CPUs, MemoryMiB: m.Spec.MemoryMiB})
		}
		return s
	}
	base := []VM{
		onHost(haVM("a1", 0, 0, 1, 2048), "h1"),
		onHost(haVM("a2", 0, 0, 1, 1024), "h1"), // h1: 3072 MiB of HA VMs, the largest
		onHost(haVM("b1", 0, 0, 1, 1024), "h2"),
		onHost(with(haVM("b2", 0, 0, 1, 2048), func(m *VM) { m.Spec.HA = nil }), "h2"), // not HA: booked, not restarted
		onHost(haVM("z", 0, 0, 64, 1<<19), "h9"),
	}
	if err := Admit(book(pool, base), base, DefaultFailures); err != nil {
		t.Fatalf("room on h3 for h1's HA VMs: %v", err)
	}
	// An HA VM of 3584 MiB on h3 makes h3 the largest, and nothing takes it.
	full := append(base, onHost(haVM("c1", 0, 0, 1, 3584), "h3"))
	err := Admit(book(pool, full), full, DefaultFailures)
	if !errors.Is(err, ErrNoFailoverRoom) || !errors.Is(err, scheduler.ErrNoHost) ||
		!strings.Contains(err.Error(), "if host h3 failed (HA VMs of 3584 MiB)") || !strings.Contains(err.Error(), "short of memory") {
		t.Fatalf("full pool: %v", err)
	}
	// The same VM without HA is only booked: h1 is again the largest.
	noHA := append(base, onHost(with(haVM("c1", 0, 0, 1, 3584), func(m *VM) { m.Spec.HA = nil }), "h3"))
	if err := Admit(book(pool, noHA), noHA, DefaultFailures); !strings.Contains(err.Error(), "if host h1 failed") ||
		!strings.Contains(err.Error(), `vm "a1" needs`) {
		t.Fatalf("h3 full of a non-HA VM: %v", err)
	}
	// CPUs fall short as well as memory, and say so.
	cpu := []VM{onHost(haVM("a1", 0, 0, 16, 64), "h1"), onHost(haVM("b1", 0, 0, 12, 64), "h2"), onHost(haVM("c1", 0, 0, 12, 64), "h3")}
	if err := Admit(book(pool, cpu), cpu, 1); !strings.Contains(err.Error(), "short of CPUs") {
		t.Fatalf("cpus: %v", err)
	}
	// Two failures: h1 and h2 (3072 + 1024) onto h3's 4096.
	if err := Admit(book(pool, base), base, 2); err != nil {
		t.Fatalf("two failures: %v", err)
	}
	if err := Admit(book(pool, base), base, 3); !errors.Is(err, ErrNoFailoverRoom) || !strings.Contains(err.Error(), "h1 and h2 and h3") {
		t.Fatalf("three failures of three hosts: %v", err)
	}
	if err := Admit(book(pool, full), full, 0); err != nil {
		t.Fatalf("admission off: %v", err)
	}
	if err := Admit(pool, base, -1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative failures: %v", err)
	}
}
