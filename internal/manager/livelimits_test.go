package manager

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

// fakeLimitsAgent ends every pending "limits" operation as an agent would:
// it reads the spec and refuses a CPU weight of refuse, applying the rest.
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
				if op.Kind != "limits" || op.Done() {
					continue
				}
				spec, _, err := ts.s.inv.Spec(ctx, op.Target)
				if err != nil {
					continue
				}
				op.State = v1.OpSucceeded
				if spec.Resources != nil && spec.Resources.CPUShares == refuse {
					op.State, op.Error = v1.OpFailed, &v1.Error{Code: v1.CodeFailedPrecondition, Field: "resources.cpuShares", Message: "refused by the test agent"}
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
	if got := applied(); len(got) != 2 || got[1].Resources == nil || *got[1].Resources != *before.Resources {
		t.Errorf("the host was asked to apply %+v, want the refused change and then the old limits", got)
	}

	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"resources":{"cpuShares":2048}}`)
	if code != 200 || json.Unmarshal(b, &v) != nil || v.Spec.Resources == nil || v.Spec.Resources.CPUShares != 2048 {
		t.Fatalf("accepted live change: %d %s", code, b)
	}
}

// TestRollbackConditioned: the roll-back of a refused change does not
// overwrite a change written after it.
func TestRollbackConditioned(t *testing.T) {
	ts := newTestServer(t)
	ts.createVM(`{"name":"web1","memoryMiB":128}`)
	old, _, err := ts.s.inv.Spec(t.Context(), "web1")
	if err != nil {
		t.Fatal(err)
	}
	refused := old
	refused.Resources = &v1.Resources{CPUShares: 4096}
	rev, err := ts.st.Put(t.Context(), inventory.VMKey("web1"), inventory.Marshal(refused), store.AnyRevision)
	if err != nil {
		t.Fatal(err)
	}
	later := old
	later.RestartPolicy = "never"
	if _, err := ts.st.Put(t.Context(), inventory.VMKey("web1"), inventory.Marshal(later), rev); err != nil {
		t.Fatal(err)
	}
	if err := ts.s.rollbackLimits(t.Context(), old, "h1", rev); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("roll back over a later change: %v, want a conflict", err)
	}
	if spec, _, _ := ts.s.inv.Spec(t.Context(), "web1"); spec.RestartPolicy != "never" {
		t.Fatalf("after the roll-back: %+v, want the later change kept", spec)
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
