package manager

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

// removeAdmin is a PoolAdmin that records removals; CheckRemove refuses
// the host in refuse.
type removeAdmin struct {
	PoolAdmin
	refuse string

	mu      sync.Mutex
	removed []string
}

func (a *removeAdmin) CheckRemove(_ context.Context, name string) error {
	if name == a.refuse {
		return errdefs.Precondition("host %q answers this request and cannot remove itself", name)
	}
	return nil
}

func (a *removeAdmin) RemoveHost(_ context.Context, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.removed = append(a.removed, name)
	return nil
}

func (a *removeAdmin) removals() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.removed...)
}

// DELETE /hosts/{name} evacuates a live host first (on a real etcd, with
// the pool master running): it answers 202 with the evacuation and
// removes nothing while the host is out of maintenance or runs a VM, and
// the master's evacuation puts it in maintenance; asked again once the
// evacuation is done, it removes (204). A stopped host is not evacuated
// (nothing can migrate from it: the removal's own checks decide), and a
// removal refused whatever runs (the answering host) records nothing.
func TestRemoveHostEvacuatesFirst(t *testing.T) {
	ts := newTestServer(t)
	ctx := t.Context()
	admin := &removeAdmin{refuse: "h1"}
	ts.s.cfg.PoolAdmin = admin
	for _, k := range []string{inventory.HostInfoKey("h2"), inventory.HostKey("h2")} {
		if _, err := ts.st.Put(ctx, k, inventory.Marshal(v1.Host{Name: "h2", CPUs: 4, MemoryMiB: 4096}), store.AnyRevision); err != nil {
			t.Fatal(err)
		}
	}
	evacuations := func() int {
		ops, _, _, err := ts.s.inv.Ops(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, o := range ops {
			if o.Kind == "evacuate" {
				n++
			}
		}
		return n
	}

	code, _, b := ts.do("DELETE", "/api/v1/hosts/h1", "", "")
	if e := apiErr(t, code, b); code != 412 || evacuations() != 0 {
		t.Fatalf("remove the answering host: %d %+v, %d evacuations", code, e, evacuations())
	}
	code, _, b = ts.do("DELETE", "/api/v1/hosts/H2", "", "")
	if e := apiErr(t, code, b); code != 400 || e.Field != "name" {
		t.Fatalf("remove H2: %d %+v", code, e)
	}

	// Alive and out of maintenance: evacuated first, nothing removed.
	code, _, b = ts.do("DELETE", "/api/v1/hosts/h2", "", "")
	var op v1.Operation
	if code != 202 || json.Unmarshal(b, &op) != nil || op.Kind != "evacuate" || op.Target != "h2" {
		t.Fatalf("remove live h2: %d %s, want 202 and its evacuation", code, b)
	}
	if r := admin.removals(); len(r) != 0 {
		t.Fatalf("removed %v before the evacuation ended", r)
	}
	// Asked again while it runs: the same evacuation (or, once the master
	// finished it, the removal).
	code, _, b = ts.do("DELETE", "/api/v1/hosts/h2", "", "")
	var again v1.Operation
	if code == 202 && (json.Unmarshal(b, &again) != nil || again.ID != op.ID) {
		t.Fatalf("second remove during the evacuation: %s, want operation %s", b, op.ID)
	} else if code != 202 && code != 204 {
		t.Fatalf("second remove during the evacuation: %d %s", code, b)
	}
	waitOp(t, ts, op.ID, v1.OpSucceeded)
	if _, err := ts.st.Get(ctx, inventory.MaintenanceKey("h2")); err != nil {
		t.Fatalf("h2 not in maintenance after its evacuation: %v", err)
	}
	if code, _, b = ts.do("DELETE", "/api/v1/hosts/h2", "", ""); code != 204 {
		t.Fatalf("remove evacuated h2: %d %s", code, b)
	}
	if r := admin.removals(); len(r) == 0 || r[len(r)-1] != "h2" {
		t.Fatalf("removals %v, want h2", r)
	}

	// In maintenance, but a VM runs there again: evacuated again.
	spec := v1.VMSpec{Name: "web", CPUs: 1, MemoryMiB: 64, Host: "h2"}
	if _, err := ts.st.Put(ctx, inventory.VMKey("web"), inventory.Marshal(spec), store.MustNotExist); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.st.Put(ctx, inventory.StatusKey("web"), inventory.Marshal(v1.VMStatus{State: v1.StateRunning, Host: "h2"}), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	n := len(admin.removals())
	code, _, b = ts.do("DELETE", "/api/v1/hosts/h2", "", "")
	op = v1.Operation{}
	if code != 202 || json.Unmarshal(b, &op) != nil || op.Kind != "evacuate" {
		t.Fatalf("remove h2 running web: %d %s, want a new evacuation", code, b)
	}
	if len(admin.removals()) != n {
		t.Fatal("removed while a VM runs there")
	}

	// Stopped (no liveness): no evacuation; the removal's checks decide.
	if err := ts.st.Delete(ctx, inventory.HostKey("h2"), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	for ts.cancelEvacuations(op.ID) {
	}
	before := evacuations()
	if code, _, b = ts.do("DELETE", "/api/v1/hosts/h2", "", ""); code != 204 || evacuations() != before {
		t.Fatalf("remove stopped h2: %d %s (%d evacuations, %d before)", code, b, evacuations(), before)
	}
}

// cancelEvacuations marks operation id failed unless it ended; it reports
// whether to look again (a conflict with the master's write).
func (ts *testServer) cancelEvacuations(id string) bool {
	ts.t.Helper()
	op, rev, err := ts.s.inv.Op(ts.t.Context(), id)
	if err != nil {
		ts.t.Fatal(err)
	}
	if op.Done() {
		return false
	}
	op.State, op.Error = v1.OpFailed, &v1.Error{Code: v1.CodeInternal, Message: "ended by the test"}
	_, err = ts.st.Put(ts.t.Context(), inventory.OpKey(id), inventory.Marshal(op), rev)
	if errors.Is(err, store.ErrConflict) {
		return true
	}
	if err != nil {
		ts.t.Fatal(err)
	}
	return false
}

// waitOp waits for operation id to end in state want.
func waitOp(t *testing.T, ts *testServer, id, want string) v1.Operation {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		op, _, err := ts.s.inv.Op(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if op.Done() {
			if op.State != want {
				t.Fatalf("operation %s %s: %s %+v, want %s", op.Kind, op.Target, op.State, op.Error, want)
			}
			return op
		}
		if time.Now().After(deadline) {
			t.Fatalf("operation %s %s still %s after a minute", op.Kind, op.Target, op.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
