package pool_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/client"
)

// TestPlacement: the pool master places stopped VMs (nothing boots; only
// bookings count) through any host's API: an anti-affinity group spreads
// over the three hosts and a fourth member is refused; a preferred host is
// honoured; memory is never overcommitted (a VM of most of a host's memory
// fits once per host, a fourth is refused); and a small VM then goes to
// the host with the most room left.
func TestPlacement(t *testing.T) {
	p := sharedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	c := p.API(t, "h2")
	hosts, err := c.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	free := map[string]int{}
	for _, h := range hosts {
		free[h.Name] = h.FreeMemoryMiB
	}
	create := func(spec v1.VMSpec) v1.Operation {
		t.Helper()
		if len(spec.Disks) == 0 {
			spec.Disks = []v1.Disk{{SizeMiB: 16}}
		}
		if spec.CPUs == 0 {
			spec.CPUs = 1
		}
		t.Cleanup(func() { p.DeleteVM(t, "h1", spec.Name) })
		op, err := c.CreateVM(ctx, spec, false, 0)
		var ae *v1.Error
		if errors.As(err, &ae) && (ae.Code == v1.CodeUnavailable || ae.Code == v1.CodeFailedPrecondition) {
			// Refused at once by the API's dry run (the hosts' facts
			// already show the room gone): as final as the master's "no".
			return v1.Operation{State: v1.OpFailed, Error: ae}
		}
		if err != nil {
			t.Fatalf("create %s: %v", spec.Name, err)
		}
		done, err := c.Wait(ctx, op, nil)
		if err != nil && done.Error == nil {
			t.Fatalf("create %s: %v", spec.Name, err)
		}
		return done
	}
	hostOf := func(name string) string {
		t.Helper()
		v, err := c.VM(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return v.Spec.Host
	}

	seen := map[string]string{}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("aa%d", i)
		if op := create(v1.VMSpec{Name: name, MemoryMiB: 64, AntiAffinityGroup: "spread"}); op.State != v1.OpSucceeded {
			t.Fatalf("%s: %+v", name, op.Error)
		}
		h := hostOf(name)
		if other, dup := seen[h]; dup {
			t.Fatalf("%s and %s of one anti-affinity group both on %s", other, name, h)
		}
		seen[h] = name
	}
	op := create(v1.VMSpec{Name: "aa4", MemoryMiB: 64, AntiAffinityGroup: "spread"})
	if op.State != v1.OpFailed || op.Error == nil || op.Error.Code != v1.CodeUnavailable {
		t.Fatalf("a fourth member of a group over three hosts: %+v %+v", op, op.Error)
	}

	if op := create(v1.VMSpec{Name: "pref", MemoryMiB: 64, PreferredHosts: []string{"h3"}}); op.State != v1.OpSucceeded || hostOf("pref") != "h3" {
		t.Fatalf("preferred h3: %+v on %s", op.Error, hostOf("pref"))
	}

	// Most of each host's memory, once per host: the memory overcommit
	// ratio is 1, so a fourth cannot be booked anywhere.
	big := free["h1"]
	for _, f := range free {
		big = min(big, f)
	}
	big -= 1024
	if big < 1024 {
		t.Skipf("hosts have too little free memory (%v MiB) for the overcommit case", free)
	}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("big%d", i)
		if op := create(v1.VMSpec{Name: name, MemoryMiB: big}); op.State != v1.OpSucceeded {
			t.Fatalf("%s (%d MiB): %+v", name, big, op.Error)
		}
	}
	op = create(v1.VMSpec{Name: "big4", MemoryMiB: big})
	if op.State != v1.OpFailed || op.Error == nil || op.Error.Code != v1.CodeFailedPrecondition || op.Error.Field != "memoryMiB" {
		t.Fatalf("past the memory overcommit: %+v %+v", op, op.Error)
	}
	if !strings.Contains(op.Error.Message, "MiB") {
		t.Errorf("refusal does not say why: %s", op.Error.Message)
	}
	assertBooked(ctx, t, c)
}

// assertBooked: no host is booked past its memory (the capacity view).
func assertBooked(ctx context.Context, t *testing.T, c *client.Client) {
	t.Helper()
	hosts, err := c.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if h.AllocatedMemoryMiB > h.MemoryMiB {
			t.Errorf("host %s booked %d MiB of %d", h.Name, h.AllocatedMemoryMiB, h.MemoryMiB)
		}
	}
}
