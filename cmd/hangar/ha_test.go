package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	v1 "hangar/api/v1"
)

// TestVMHAFlags: `vm ha` sends exactly the HA fields its flags give
// through PATCH /vms/{name}, and refuses flags that ask for nothing or for
// both --enable and --disable before sending anything.
func TestVMHAFlags(t *testing.T) {
	var got map[string]any
	calls := 0
	sock := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		calls++
		if r.Method != "PATCH" || r.URL.Path != "/api/v1/vms/db1" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, 404)
			return
		}
		var p v1.VMPatch
		b := new(bytes.Buffer)
		_, _ = b.ReadFrom(r.Body)
		if err := json.Unmarshal(b.Bytes(), &got); err != nil || json.Unmarshal(b.Bytes(), &p) != nil || p.HA == nil {
			http.Error(w, "bad patch "+b.String(), 400)
			return
		}
		h := v1.HA{MaxRestarts: 3, RestartWindow: "1h"}
		if p.HA.Enabled != nil {
			h.Enabled = *p.HA.Enabled
		}
		if p.HA.Priority != nil {
			h.Priority = *p.HA.Priority
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v1.VM{Spec: v1.VMSpec{Name: "db1", HA: &h}})
	})

	for _, c := range []struct {
		args []string
		sent string // the JSON of the ha field
		out  string
	}{
		{[]string{"--enable"}, `{"enabled":true}`, "vm db1: HA on, priority 0, restart order 0, at most 3 restarts per 1h\n"},
		{[]string{"--enable", "--priority", "100", "--restart-order", "2"}, `{"enabled":true,"priority":100,"restartOrder":2}`,
			"vm db1: HA on, priority 100, restart order 0, at most 3 restarts per 1h\n"},
		{[]string{"--disable"}, `{"enabled":false}`, "vm db1: HA off, priority 0, restart order 0, at most 3 restarts per 1h\n"},
		{[]string{"--max-restarts", "5", "--window", "30m"}, `{"maxRestarts":5,"restartWindow":"30m"}`, ""},
		{[]string{"--priority", "0"}, `{"priority":0}`, ""}, // given, so sent even when zero
		{[]string{"--priority", "-5"}, `{"priority":-5}`, ""},
	} {
		got = nil
		out, err := runCLI(sock, append([]string{"vm", "ha", "db1"}, c.args...)...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", c.args, err, out)
		}
		sent, _ := json.Marshal(got["ha"])
		if string(sent) != c.sent || len(got) != 1 {
			t.Errorf("%v: sent %v, want {\"ha\":%s}", c.args, got, c.sent)
		}
		if c.out != "" && out != c.out {
			t.Errorf("%v: printed %q, want %q", c.args, out, c.out)
		}
	}

	calls = 0
	for _, c := range []struct {
		args []string
		err  string
	}{
		{nil, "nothing to change"},
		{[]string{"--enable", "--disable"}, "[disable enable] were all set"},
		{[]string{"--priority", "high"}, `invalid argument "high" for "--priority"`},
	} {
		out, err := runCLI(sock, append([]string{"vm", "ha", "db1"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%v: %v (%s), want an error with %q", c.args, err, out, c.err)
		}
	}
	if calls != 0 {
		t.Errorf("refused flags still sent %d requests", calls)
	}
}
