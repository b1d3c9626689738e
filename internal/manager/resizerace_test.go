package manager

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/scheduler"
	"hangar/internal/store"
)

// resizeRace makes two stopped VMs on h1 and returns a memory size that
// either of them may grow to, but not both.
func (ts *testServer) resizeRace() int {
	ts.t.Helper()
	for _, n := range []string{"a", "b"} {
		ts.createVM(fmt.Sprintf(`{"name":%q,"memoryMiB":128}`, n))
		ts.setState(n, v1.StateStopped)
	}
	pol, err := ts.s.inv.Admission(ts.t.Context())
	if err != nil {
		ts.t.Fatal(err)
	}
	capMem := pol.AllocatableMemoryMiB(4096)
	if capMem < 512 {
		ts.t.Fatalf("h1 admits %d MiB, the test wants 512", capMem)
	}
	return capMem/2 + 64
}

// TestResizeRaceConditioned: two resizes checked against the same
// bookings (read before either is written) are not both written: the
// second's conditions fail, and checked again it is refused.
func TestResizeRaceConditioned(t *testing.T) {
	ts := newTestServer(t)
	mem := ts.resizeRace()
	hosts, err := ts.s.hosts(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	grown := func(n string) (v1.VMSpec, int64) {
		sp, rev, err := ts.s.inv.Spec(t.Context(), n)
		if err != nil {
			t.Fatal(err)
		}
		sp.MemoryMiB = mem
		return sp, rev
	}
	a, revA := grown("a")
	b, revB := grown("b")
	condsA, errA := ts.s.checkResize(t.Context(), hosts, a)
	condsB, errB := ts.s.checkResize(t.Context(), hosts, b)
	if errA != nil || errB != nil {
		t.Fatalf("each alone fits: %v / %v", errA, errB)
	}
	if _, err := ts.st.Txn(t.Context(), condsA, store.PutOp(inventory.VMKey("a"), inventory.Marshal(a), revA)); err != nil {
		t.Fatalf("write the first resize: %v", err)
	}
	if _, err := ts.st.Txn(t.Context(), condsB, store.PutOp(inventory.VMKey("b"), inventory.Marshal(b), revB)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("write the second resize checked against the same bookings: %v, want a conflict", err)
	}
	var short *scheduler.ShortError
	if _, err := ts.s.checkResize(t.Context(), hosts, b); !errors.As(err, &short) || short.Field != "memoryMiB" {
		t.Fatalf("the second resize checked again: %v, want short of memory", err)
	}
}

// TestResizeRace: two PATCHes growing two stopped VMs of one host at the
// same moment, which together exceed it: one is admitted, the other gets
// a 412 on memoryMiB.
func TestResizeRace(t *testing.T) {
	ts := newTestServer(t)
	mem := ts.resizeRace()
	codes := make([]int, 2)
	bodies := make([]string, 2)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, n := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			code, _, b := ts.do("PATCH", "/api/v1/vms/"+n, "application/json", fmt.Sprintf(`{"memoryMiB":%d}`, mem))
			codes[i], bodies[i] = code, string(b)
		}()
	}
	close(start)
	wg.Wait()
	got := append([]int(nil), codes...)
	sort.Ints(got)
	if got[0] != 200 || got[1] != 412 {
		t.Fatalf("two resizes to %d MiB at once: %v %v, want one 200 and one 412", mem, codes, bodies)
	}
	t.Logf("answers: %v; refused: %s", codes, bodies[1-slices.Index(codes, 200)])
	specs, _, _, err := ts.s.inv.Specs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, sp := range specs {
		if sp.MemoryMiB == mem {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d vms saved at %d MiB, want 1", n, mem)
	}
}
