package manager

import (
	"encoding/json"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

func TestMigrateVM(t *testing.T) {
	ts := newTestServer(t)
	ts.createVM(`{"name":"web1","memoryMiB":128}`)
	if _, err := ts.st.Put(t.Context(), inventory.HostInfoKey("h2"), inventory.Marshal(v1.Host{Name: "h2", CPUs: 4, MemoryMiB: 4096}), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	ts.setState("web1", v1.StateStopped)
	code, _, b := ts.do("POST", "/api/v1/vms/web1/migrate", "application/json", `{"to":"h2"}`)
	if e := apiErr(t, code, b); code != 412 || e.Code != v1.CodeFailedPrecondition {
		t.Fatalf("migrate a stopped vm: %d %+v", code, e)
	}
	ts.setState("web1", v1.StateRunning)
	spec, _, _ := ts.s.inv.Spec(t.Context(), "web1")
	for _, tc := range []struct {
		body  string
		code  int
		field string
	}{
		{`{}`, 400, "to"},
		{`{"to":"H 2"}`, 400, "to"},
		{`{"to":"h2","maxBandwidth":-1}`, 400, "maxBandwidth"},
		{`{"to":"h2","downtimeLimitMs":600000}`, 400, "downtimeLimitMs"},
		{`{"to":"h2","progressTimeoutSec":-5}`, 400, "progressTimeoutSec"},
		{`{"to":"h2","speed":1}`, 400, "speed"},
		{`{"to":"h2","insecure":"yes"}`, 400, "insecure"},
		{`{"to":"h9"}`, 404, "to"},
		{`{"to":"` + spec.Host + `"}`, 412, "to"},
	} {
		code, _, b := ts.do("POST", "/api/v1/vms/web1/migrate", "application/json", tc.body)
		if e := apiErr(t, code, b); code != tc.code || e.Field != tc.field {
			t.Errorf("%s: %d %+v, want %d field %s", tc.body, code, e, tc.code, tc.field)
		}
	}
	code, _, b = ts.do("POST", "/api/v1/vms/web1/migrate", "application/json", `{"to":"h2","maxBandwidth":104857600,"downtimeLimitMs":200}`)
	var op v1.Operation
	if code != 202 || json.Unmarshal(b, &op) != nil || op.Kind != "migrate" || op.Target != "web1" {
		t.Fatalf("migrate: %d %s", code, b)
	}
	var args v1.MigrateArgs
	if err := json.Unmarshal(op.Args, &args); err != nil || args != (v1.MigrateArgs{To: "h2", MaxBandwidth: 104857600, DowntimeLimitMs: 200}) {
		t.Fatalf("args %s: %v", op.Args, err)
	}
	// A migration in progress refuses another.
	if _, err := ts.st.Put(t.Context(), inventory.MigrationKey("web1"), []byte("{}"), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	code, _, b = ts.do("POST", "/api/v1/vms/web1/migrate", "application/json", `{"to":"h2"}`)
	if e := apiErr(t, code, b); code != 409 || e.Field != "name" {
		t.Fatalf("second migration: %d %+v", code, e)
	}
}
