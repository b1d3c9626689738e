package manager

import (
	"encoding/json"
	"strings"
	"testing"

	v1 "hangar/api/v1"
)

// TestPoolSettings: the admission ratios are the defaults until set, a
// bad ratio is a 400 naming its field and changes nothing, and a set ratio
// is what the capacity view reports and what placement admits under.
func TestPoolSettings(t *testing.T) {
	ts := newTestServer(t)
	get := func() v1.PoolSettings {
		t.Helper()
		code, _, b := ts.do("GET", "/api/v1/pool/settings", "", "")
		var ps v1.PoolSettings
		if code != 200 || json.Unmarshal(b, &ps) != nil {
			t.Fatalf("get settings: %d %s", code, b)
		}
		return ps
	}
	if ps := get(); ps.CPUOvercommit != 4 || ps.MemoryOvercommit != 1 || ps.HAFailures == nil || *ps.HAFailures != 1 {
		t.Fatalf("defaults: %+v", ps)
	}
	for body, field := range map[string]string{
		`{"cpuOvercommit":-1}`:      "cpuOvercommit",
		`{"memoryOvercommit":65}`:   "memoryOvercommit",
		`{"cpuOvercommit":0.01}`:    "cpuOvercommit",
		`{"cpuOvercommit":"two"}`:   "cpuOvercommit",
		`{"cpuOvercommit":2,"x":1}`: "x",
		`{"haFailures":-1}`:         "haFailures",
		`{"haFailures":17}`:         "haFailures",
	} {
		code, _, b := ts.do("PUT", "/api/v1/pool/settings", "application/json", body)
		var e struct{ Error v1.Error }
		if code != 400 || json.Unmarshal(b, &e) != nil || e.Error.Field != field {
			t.Errorf("PUT %s: %d %s, want 400 naming %s", body, code, b, field)
		}
	}
	if ps := get(); ps.CPUOvercommit != 4 || ps.MemoryOvercommit != 1 {
		t.Fatalf("after refused changes: %+v", ps)
	}

	// h1 has 4 CPUs and 4096 MiB: at CPU ratio 1 it admits 4 vCPUs.
	code, _, b := ts.do("PUT", "/api/v1/pool/settings", "application/json", `{"cpuOvercommit":1,"memoryOvercommit":0.5}`)
	if code != 200 || !strings.Contains(string(b), `"cpuOvercommit": 1`) {
		t.Fatalf("put: %d %s", code, b)
	}
	ts.createVM(`{"name":"a","cpus":3,"memoryMiB":1024}`)
	refused := func(body, want string) {
		t.Helper()
		code, _, b := ts.do("POST", "/api/v1/vms?wait=30s", "application/json", body)
		// The API's dry run answers 412 (short of capacity), or the master
		// fails the operation.
		var op v1.Operation
		failed := code == 200 && json.Unmarshal(b, &op) == nil && op.State == v1.OpFailed
		if code != 412 && !failed || !strings.Contains(string(b), want) {
			t.Errorf("create %s: %d %s, want a refusal naming %q", body, code, b, want)
		}
	}
	refused(`{"name":"b","cpus":2,"memoryMiB":64}`, "1 CPUs free of 4 allocatable (4 CPUs, 0 reserved for the host, × overcommit 1.0)")
	refused(`{"name":"c","cpus":1,"memoryMiB":1100}`, "1024 MiB free of 2048 MiB allocatable (4096 MiB, 0 reserved for the host, × overcommit 0.5)")
	code, _, b = ts.do("GET", "/api/v1/capacity", "", "")
	var c v1.Capacity
	if code != 200 || json.Unmarshal(b, &c) != nil || c.Pool.CPUOvercommit != 1 || c.Pool.MemoryOvercommit != 0.5 ||
		c.Hosts[0].FreeCPUs != 1 || c.Hosts[0].FreeMemoryMiB != 1024 {
		t.Fatalf("capacity under the new ratios: %d %s", code, b)
	}
}
