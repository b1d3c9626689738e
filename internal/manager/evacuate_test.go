package manager

import (
	"encoding/json"
	"testing"

	v1 "hangar/api/v1"
)

// The maintenance and evacuation routes: bad input names its field,
// unknown hosts are 404, a second evacuation of one host is 409, and
// maintenance shows in the host.
func TestEvacuateAndMaintenanceRoutes(t *testing.T) {
	ts := newTestServer(t)
	for _, c := range []struct {
		path, body string
		code       int
		field      string
	}{
		{"/api/v1/hosts/nope/evacuate", `{}`, 404, ""},
		{"/api/v1/hosts/H1/evacuate", `{}`, 400, "name"},
		{"/api/v1/hosts/h1/evacuate", `{"shutdown":"yes"}`, 400, "shutdown"},
		{"/api/v1/hosts/h1/evacuate", `{"force":true}`, 400, "force"},
		{"/api/v1/hosts/h1/maintenance", `{"on":1}`, 400, "on"},
		{"/api/v1/hosts/nope/maintenance", `{"on":true}`, 404, ""},
	} {
		code, _, b := ts.do("POST", c.path, "application/json", c.body)
		if code != c.code {
			t.Errorf("%s %s: %d %s, want %d", c.path, c.body, code, b, c.code)
			continue
		}
		if e := apiErr(t, code, b); e.Field != c.field {
			t.Errorf("%s %s: field %q, want %q (%s)", c.path, c.body, e.Field, c.field, e.Message)
		}
	}
	code, _, b := ts.do("POST", "/api/v1/hosts/h1/maintenance", "application/json", `{"on":true}`)
	var h v1.Host
	if code != 200 || json.Unmarshal(b, &h) != nil || !h.Maintenance {
		t.Fatalf("maintenance on: %d %s", code, b)
	}
	code, _, b = ts.do("POST", "/api/v1/hosts/h1/maintenance", "application/json", `{"on":false}`)
	h = v1.Host{}
	if code != 200 || json.Unmarshal(b, &h) != nil || h.Maintenance {
		t.Fatalf("maintenance off: %d %s", code, b)
	}
	if code, _, b = ts.do("POST", "/api/v1/hosts/h1/evacuate", "application/json", `{}`); code != 202 {
		t.Fatalf("evacuate: %d %s", code, b)
	}
	code, _, b = ts.do("POST", "/api/v1/hosts/h1/evacuate", "application/json", `{}`)
	if e := apiErr(t, code, b); code != 409 || e.Field != "name" {
		// The master may have finished the first (nothing runs on h1):
		// then a second one is accepted.
		if code != 202 {
			t.Fatalf("second evacuation: %d %s", code, b)
		}
	}
}
