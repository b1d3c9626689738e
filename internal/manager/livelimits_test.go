package manager

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// fakeLimitsAgent ends every pending "limits" operation as an agent would:
// it reads the spec and refuses a CPU weight of refuse (handing a live
// change off to the master), applying the rest.
// It returns the specs it was asked to apply, in order.
func (ts *testServer) fakeLimitsAgent(refuse int) func() []v1.VMSpec {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var seen []v1.VMSpec
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			ops, revs, _, err := ts.s.inv.Ops(ctx)
			if err != nil {
				return
			}
			for i, op := range ops {
				if op.Kind != "limits" || op.Done() || op.HandOff {
					continue
				}
				spec, _, err := ts.s.inv.Spec(ctx, op.Target)
				if err != nil {
					continue
				}
				op.State = v1.OpSucceeded
				if spec.Resources != nil && spec.Resources.CPUShares == refuse {
					op.Error = &v1.Error{Code: v1.CodeFailedPrecondition, Field: "resources.cpuShares", Message: "refused by the test agent"}
					op.State, op.HandOff = v1.OpRunning, len(op.Args) > 0 // a live change: the master rolls it back
					if !op.HandOff {
						op.State = v1.OpFailed
					}
				}
				if _, err := ts.st.Put(ctx, inventory.OpKey(op.ID), inventory.Marshal(op), revs[i]); err == nil {
					mu.Lock()
					seen = append(seen, spec)
					mu.Unlock()
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	ts.t.Cleanup(func() { cancel(); <-done })
	return func() []v1.VMSpec {
		mu.Lock()
		defer mu.Unlock()
		return append([]v1.VMSpec(nil), seen...)
	}
}

// TestLiveChangeRefused: a live change the host refuses answers with the
// host's error and leaves the spec as it was; the host is asked to apply
// the old limits again. An accepted one stays.
func TestLiveChangeRefused(t *testing.T) {
	ts := newTestServer(t)
	ts.createVM(`{"name":"web1","memoryMiB":128,"resources":{"cpuShares":512}}`)
	ts.setState("web1", v1.StateRunning)
	applied := ts.fakeLimitsAgent(4096)
	before, rev0, err := ts.s.inv.Spec(t.Context(), "web1")
	if err != nil {
		t.Fatal(err)
	}

	code, _, b := ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"resources":{"cpuShares":4096,"cpuLimit":0.5}}`)
	e := apiErr(t, code, b)
	if code != 412 || e.Field != "resources.cpuShares" {
		t.Fatalf("refused live change: %d %+v, want 412 on resources.cpuShares", code, e)
	}
	t.Logf("refused: %d %s", code, e.Message)
	code, _, b = ts.do("GET", "/api/v1/vms/web1", "", "")
	var v v1.VM
	if code != 200 || json.Unmarshal(b, &v) != nil || v.Spec.Resources == nil || *v.Spec.Resources != *before.Resources {
		t.Fatalf("after the refusal: %d %s, want the resources %+v", code, b, *before.Resources)
	}
	if v.Revision <= rev0 {
		t.Errorf("revision %d after a roll-back, want past %d (written back)", v.Revision, rev0)
	}
	// The master asks the host to apply the old limits again (after it
	// ended the refused change: the answer does not wait for that).
	deadline := time.Now().Add(time.Minute)
	for len(applied()) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := applied(); len(got) != 2 || got[1].Resources == nil || *got[1].Resources != *before.Resources {
		t.Errorf("the host was asked to apply %+v, want the refused change and then the old limits", got)
	}

	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"resources":{"cpuShares":2048}}`)
	if code != 200 || json.Unmarshal(b, &v) != nil || v.Spec.Resources == nil || v.Spec.Resources.CPUShares != 2048 {
		t.Fatalf("accepted live change: %d %s", code, b)
	}
}

// TestRollbackByMaster: the pool master rolls back a live change its host
// refused from the operation record alone — the manager that wrote it may
// be gone — and only while the spec's limits are still the change's.
func TestRollbackByMaster(t *testing.T) {
	ts := newTestServer(t)
	ts.createVM(`{"name":"web1","memoryMiB":128,"resources":{"cpuShares":512}}`)
	ts.setState("web1", v1.StateRunning)
	spec, rev, err := ts.s.inv.Spec(t.Context(), "web1")
	if err != nil {
		t.Fatal(err)
	}
	// handedOff writes spec with the limits next and a "limits" operation
	// whose host refused the change from the spec's limits to next.
	handedOff := func(next v1.Resources, specLimits v1.Resources) string {
		t.Helper()
		prev := vm.LimitsOf(spec)
		sp := spec
		sp.Resources = &specLimits
		op := ts.s.newOp("limits", "web1", "h1", v1.LimitsArgs{Previous: prev, Next: vm.LimitsOf(vm.WithLimits(spec, v1.VMLimits{Resources: &next}))})
		op.State, op.HandOff = v1.OpRunning, true
		op.Error = &v1.Error{Code: v1.CodeFailedPrecondition, Field: "resources.cpuShares", Message: "refused"}
		if rev, err = ts.st.Txn(t.Context(), nil, append(inventory.NewOpWrites(op), store.PutOp(inventory.VMKey("web1"), inventory.Marshal(sp), rev))...); err != nil {
			t.Fatal(err)
		}
		return op.ID
	}
	// No manager waits: the master ends it, writes the old limits back and
	// asks the host to apply them.
	id := handedOff(v1.Resources{CPUShares: 4096}, v1.Resources{CPUShares: 4096})
	done, err := ts.s.waitOp(t.Context(), id, time.Minute)
	if err != nil || done.State != v1.OpFailed || done.Error == nil || !strings.Contains(done.Error.Message, "as they were") || done.Error.Field != "resources.cpuShares" {
		t.Fatalf("handed-off refused change: %+v %v, want failed, rolled back, on the host's field", done, err)
	}
	got, rev2, err := ts.s.inv.Spec(t.Context(), "web1")
	if err != nil || got.Resources == nil || got.Resources.CPUShares != 512 {
		t.Fatalf("after the roll-back: %+v %v, want cpuShares 512", got.Resources, err)
	}
	rev = rev2
	ops, _, _, err := ts.s.inv.Ops(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	reapply := 0
	for _, o := range ops {
		if o.Kind == "limits" && o.ID != id && len(o.Args) == 0 && o.Host == "h1" {
			reapply++
		}
	}
	if reapply != 1 {
		t.Errorf("%d re-apply operations for h1, want 1: %+v", reapply, ops)
	}
	// A change written since stands: the spec's limits are not the
	// refused change's.
	id = handedOff(v1.Resources{CPUShares: 4096}, v1.Resources{CPUShares: 2048})
	done, err = ts.s.waitOp(t.Context(), id, time.Minute)
	if err != nil || done.State != v1.OpFailed || done.Error == nil || !strings.Contains(done.Error.Message, "a later change") {
		t.Fatalf("refused change overtaken by a later one: %+v %v", done, err)
	}
	if got, _, _ := ts.s.inv.Spec(t.Context(), "web1"); got.Resources == nil || got.Resources.CPUShares != 2048 {
		t.Fatalf("after a refused change overtaken: %+v, want the later cpuShares 2048 kept", got.Resources)
	}
}

// TestHugepagesRefusedUnderTCG: huge pages on a pool whose hosts run
// guests under TCG are refused at create and PATCH naming the field.
func TestHugepagesRefusedUnderTCG(t *testing.T) {
	ts := newTestServer(t)
	code, _, b := ts.do("POST", "/api/v1/vms", "application/json", `{"name":"big","memoryMiB":128,"resources":{"hugepages":true}}`)
	if e := apiErr(t, code, b); code != 412 || e.Field != "resources.hugepages" {
		t.Fatalf("create with huge pages under tcg: %d %+v", code, e)
	}
	ts.createVM(`{"name":"web1","memoryMiB":128}`)
	ts.setState("web1", v1.StateStopped)
	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"resources":{"hugepages":true}}`)
	e := apiErr(t, code, b)
	if code != 412 || e.Field != "resources.hugepages" {
		t.Fatalf("patch huge pages under tcg: %d %+v", code, e)
	}
	t.Logf("refused: %s", e.Message)
}
