package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	v1 "hangar/api/v1"
)

// TestCreatePlacementFlags: --prefer-host, --placement and --anti-affinity
// reach the spec the CLI posts, over what -f gave.
func TestCreatePlacementFlags(t *testing.T) {
	var got v1.VMSpec
	sock := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/api/v1/vms" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, 404)
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(202)
		_ = json.NewEncoder(w).Encode(v1.Operation{ID: "op1", Kind: "create", Target: got.Name, State: v1.OpPending})
	})

	spec := filepath.Join(t.TempDir(), "db.yaml")
	writeFile(t, spec, "name: db1\nmemoryMiB: 64\npreferredHosts: [h9]\nantiAffinityGroup: old\n")
	for _, c := range []struct {
		args      []string
		placement string
		hosts     []string
		group     string
	}{
		{[]string{"vm", "create", "db1", "--memory", "64", "--prefer-host", "h2", "--prefer-host", "h3", "--anti-affinity", "db"}, "", []string{"h2", "h3"}, "db"},
		{[]string{"vm", "create", "db1", "--memory", "64", "--placement", "manual", "--prefer-host", "h3"}, "manual", []string{"h3"}, ""},
		{[]string{"vm", "create", "-f", spec}, "", []string{"h9"}, "old"},
		{[]string{"vm", "create", "-f", spec, "--prefer-host", "h1", "--anti-affinity", "web", "--placement", "preferred"}, "preferred", []string{"h1"}, "web"},
	} {
		got = v1.VMSpec{}
		if out, err := runCLI(sock, append(c.args, "--wait=false")...); err != nil {
			t.Fatalf("%v: %v\n%s", c.args, err, out)
		}
		if got.Placement != c.placement || !slices.Equal(got.PreferredHosts, c.hosts) || got.AntiAffinityGroup != c.group {
			t.Errorf("%v: posted placement %q, preferredHosts %v, antiAffinityGroup %q; want %q %v %q",
				c.args, got.Placement, got.PreferredHosts, got.AntiAffinityGroup, c.placement, c.hosts, c.group)
		}
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fakeAPI serves h on a unix socket for the CLI to talk to; it is closed
// with the test.
func fakeAPI(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return sock
}

// runCLI runs the hangar command line against the API at sock and
// returns what it printed.
func runCLI(sock string, args ...string) (string, error) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"--socket", sock}, args...))
	err := root.Execute()
	return out.String(), err
}

// TestParseNICLimits: --net-mbps N is NIC 0's, I=N NIC I's; both
// directions' flags land in one patch per NIC; a bad value is refused.
func TestParseNICLimits(t *testing.T) {
	out, err := parseNICLimits(nil, "net-mbps", []string{"100", "1=2.5"}, func(p *v1.NICPatch, n float64) { p.Mbps = &n })
	if err == nil {
		out, err = parseNICLimits(out, "net-tx-mbps", []string{"1=0.5"}, func(p *v1.NICPatch, n float64) { p.TxMbps = &n })
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || *out["0"].Mbps != 100 || *out["1"].Mbps != 2.5 || *out["1"].TxMbps != 0.5 || out["0"].TxMbps != nil {
		t.Errorf("patches %+v", out)
	}
	for _, bad := range []string{"x", "a=1", "0=-1", "0="} {
		if _, err := parseNICLimits(nil, "net-mbps", []string{bad}, func(p *v1.NICPatch, n float64) { p.Mbps = &n }); err == nil {
			t.Errorf("--net-mbps %q accepted", bad)
		}
	}
}
