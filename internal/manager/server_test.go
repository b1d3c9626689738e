package manager

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/authn"
	"hangar/internal/buildinfo"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/inventory"
	"hangar/internal/master"
	"hangar/internal/secrets"
	"hangar/internal/store"
)

// testServer is an API server on an embedded etcd member with one live
// host ("h1", 4096 MiB) and no agent: tests write observed status
// themselves.
type testServer struct {
	t  *testing.T
	s  *Server
	st store.Store
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	st := store.NewEtcd(etcdtest.Start(t).Client())
	if _, err := st.Put(ctx, inventory.HostInfoKey("h1"), inventory.Marshal(v1.Host{Name: "h1", CPUs: 4, MemoryMiB: 4096, Accelerator: "tcg"}), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, inventory.HostKey("h1"), []byte("{}"), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	box, err := secrets.LoadOrCreate(filepath.Join(t.TempDir(), "secrets.key"))
	if err != nil {
		t.Fatal(err)
	}
	// The pool master places what the API records.
	m := master.New(master.Config{Client: st.Client(), Store: st, Host: "h1", Log: slog.New(slog.DiscardHandler)})
	mctx, mstop := context.WithCancel(context.Background())
	mdone := make(chan struct{})
	go func() { defer close(mdone); _ = m.Run(mctx) }()
	t.Cleanup(func() { mstop(); <-mdone })
	return &testServer{t: t, s: New(Config{Store: st, Secrets: box, Log: slog.New(slog.DiscardHandler)}), st: st}
}

// do sends one request; ctype "" sends none.
func (ts *testServer) do(method, path, ctype, body string, hdr ...string) (int, http.Header, []byte) {
	ts.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	ts.s.ServeHTTP(rec, req)
	return rec.Code, rec.Header(), rec.Body.Bytes()
}

func (ts *testServer) setState(name, state string) {
	ts.t.Helper()
	if _, err := ts.st.Put(ts.t.Context(), inventory.StatusKey(name), inventory.Marshal(v1.VMStatus{State: state, Host: "h1"}), store.AnyRevision); err != nil {
		ts.t.Fatal(err)
	}
}

func (ts *testServer) createVM(body string) {
	ts.t.Helper()
	code, _, b := ts.do("POST", "/api/v1/vms", "application/json", body)
	if code != 202 {
		ts.t.Fatalf("create: %d %s", code, b)
	}
	// Wait until the master placed it.
	var op v1.Operation
	if err := json.Unmarshal(b, &op); err != nil {
		ts.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, _, err := ts.s.inv.Op(ts.t.Context(), op.ID)
		if err != nil {
			ts.t.Fatal(err)
		}
		if got.Host != "" || got.Done() {
			return
		}
		if time.Now().After(deadline) {
			ts.t.Fatalf("create %s not placed", op.Target)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// apiErr decodes an error answer, failing the test if it is not one.
func apiErr(t *testing.T, code int, body []byte) v1.Error {
	t.Helper()
	var er v1.ErrorResponse
	if err := json.Unmarshal(body, &er); err != nil || er.Error == nil || er.Error.Code == "" || er.Error.Message == "" {
		t.Fatalf("status %d: not a JSON error with a code: %s", code, body)
	}
	return *er.Error
}

func TestPatchVM(t *testing.T) {
	ts := newTestServer(t)
	ts.createVM(`{"name":"web1","memoryMiB":128}`)
	ts.setState("web1", v1.StateStopped)

	code, _, b := ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"cpus":2,"memoryMiB":256}`)
	var v v1.VM
	if code != 200 || json.Unmarshal(b, &v) != nil || v.Spec.CPUs != 2 || v.Spec.MemoryMiB != 256 {
		t.Fatalf("patch stopped vm: %d %s", code, b)
	}
	spec, rev, err := ts.s.inv.Spec(t.Context(), "web1")
	if err != nil || spec.CPUs != 2 || spec.MemoryMiB != 256 || rev != v.Revision {
		t.Fatalf("stored spec %+v rev %d (answer rev %d): %v", spec, rev, v.Revision, err)
	}

	// Validated like create.
	for body, field := range map[string]string{
		`{"cpus":-1}`:               "cpus",
		`{"cpus":0}`:                "cpus",
		`{"memoryMiB":8}`:           "memoryMiB",
		`{"memoryMiB":99999999}`:    "memoryMiB",
		`{"restartPolicy":"often"}`: "restartPolicy",
		`{"cpus":"two"}`:            "cpus",
		`{"disks":[]}`:              "disks",
		`{"cpus":1,"cpus":2}`:       "cpus",
	} {
		code, _, b := ts.do("PATCH", "/api/v1/vms/web1", "application/json", body)
		if e := apiErr(t, code, b); code != 400 || e.Field != field {
			t.Errorf("%s: %d %+v, want 400 field %s", body, code, e, field)
		}
	}

	// Running: the machine cannot change, the restart policy can.
	ts.setState("web1", v1.StateRunning)
	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"cpus":4}`)
	if e := apiErr(t, code, b); code != 412 || e.Code != v1.CodeFailedPrecondition || e.Field != "cpus" ||
		e.Message != `vm "web1" is running: cpus can change only while it is stopped` {
		t.Fatalf("cpus of a running vm: %d %+v", code, e)
	}
	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"cpus":-1}`)
	if e := apiErr(t, code, b); code != 400 || e.Field != "cpus" {
		t.Fatalf("cpus -1 of a running vm: %d %+v, want 400 (bad values before state)", code, e)
	}
	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/merge-patch+json", `{"restartPolicy":"never","cpus":2}`)
	if code != 200 || json.Unmarshal(b, &v) != nil || v.Spec.RestartPolicy != "never" {
		t.Fatalf("restart policy of a running vm: %d %s", code, b)
	}
	if spec, _, _ := ts.s.inv.Spec(t.Context(), "web1"); spec.RestartPolicy != "never" || spec.CPUs != 2 {
		t.Fatalf("stored spec after policy change: %+v", spec)
	}

	// HA settings: in a create (with their defaults, checked like the
	// rest), and at any time by a patch, merged field by field.
	ts.createVM(`{"name":"db1","memoryMiB":128,"ha":{"enabled":true,"restartOrder":4}}`)
	if spec, _, _ := ts.s.inv.Spec(t.Context(), "db1"); spec.HA == nil ||
		*spec.HA != (v1.HA{Enabled: true, RestartOrder: 4, MaxRestarts: 3, RestartWindow: "1h"}) {
		t.Fatalf("created with ha: %+v", spec.HA)
	}
	code, _, b = ts.do("POST", "/api/v1/vms", "application/json", `{"name":"db2","memoryMiB":128,"ha":{"enabled":true,"maxRestarts":500}}`)
	if e := apiErr(t, code, b); code != 400 || e.Field != "ha.maxRestarts" {
		t.Fatalf("create with ha.maxRestarts 500: %d %+v", code, e)
	}
	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/merge-patch+json", `{"ha":{"enabled":true,"priority":7}}`)
	if code != 200 || json.Unmarshal(b, &v) != nil || v.Spec.HA == nil ||
		*v.Spec.HA != (v1.HA{Enabled: true, Priority: 7, MaxRestarts: 3, RestartWindow: "1h"}) {
		t.Fatalf("enable ha: %d %s", code, b)
	}
	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"ha":{"restartOrder":2,"maxRestarts":5,"restartWindow":"30m"}}`)
	if code != 200 || json.Unmarshal(b, &v) != nil ||
		*v.Spec.HA != (v1.HA{Enabled: true, Priority: 7, RestartOrder: 2, MaxRestarts: 5, RestartWindow: "30m"}) {
		t.Fatalf("change ha: %d %s", code, b)
	}
	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"ha":{"enabled":false}}`)
	if spec, _, _ := ts.s.inv.Spec(t.Context(), "web1"); code != 200 || spec.HA == nil ||
		*spec.HA != (v1.HA{Priority: 7, RestartOrder: 2, MaxRestarts: 5, RestartWindow: "30m"}) {
		t.Fatalf("disable ha: %d %s; stored %+v", code, b, spec.HA)
	}
	for body, field := range map[string]string{
		`{"ha":{"maxRestarts":0}}`:        "ha.maxRestarts",
		`{"ha":{"priority":5000}}`:        "ha.priority",
		`{"ha":{"restartOrder":-1}}`:      "ha.restartOrder",
		`{"ha":{"restartWindow":"soon"}}`: "ha.restartWindow",
		`{"ha":{"restartWindow":""}}`:     "ha.restartWindow",
		`{"ha":{"priority":"high"}}`:      "ha.priority",
		`{"ha":{"preferredHosts":[]}}`:    "ha.preferredHosts",
	} {
		code, _, b := ts.do("PATCH", "/api/v1/vms/web1", "application/json", body)
		if e := apiErr(t, code, b); code != 400 || e.Field != field {
			t.Errorf("%s: %d %+v, want 400 field %s", body, code, e, field)
		}
	}
	code, _, b = ts.do("GET", "/api/v1/vms/web1", "", "")
	if code != 200 || json.Unmarshal(b, &v) != nil {
		t.Fatalf("get: %d %s", code, b)
	}

	// CAS on the revision the caller saw.
	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"restartPolicy":"always"}`, "If-Match", `"1"`)
	if e := apiErr(t, code, b); code != 412 || e.Field != "If-Match" {
		t.Fatalf("stale If-Match: %d %+v", code, e)
	}
	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "application/json", `{"restartPolicy":"always"}`, "If-Match", jsonInt(v.Revision))
	if code != 200 {
		t.Fatalf("current If-Match: %d %s", code, b)
	}

	code, _, b = ts.do("PATCH", "/api/v1/vms/nope", "application/json", `{"cpus":2}`)
	if e := apiErr(t, code, b); code != 404 || e.Message != `vm "nope" not found` {
		t.Fatalf("patch of a missing vm: %d %+v", code, e)
	}
	code, _, b = ts.do("PATCH", "/api/v1/vms/web1", "text/plain", `{"cpus":2}`)
	if e := apiErr(t, code, b); code != 415 {
		t.Fatalf("text/plain patch: %d %+v", code, e)
	}
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestEdge(t *testing.T) {
	ts := newTestServer(t)
	var logBuf strings.Builder
	var mu sync.Mutex
	ts.s.cfg.Log = slog.New(slog.NewJSONHandler(lockedWriter{&mu, &logBuf}, nil))

	cases := []struct {
		method, path, ctype, body string
		status                    int
		code, field, allow        string
	}{
		{"PUT", "/api/v1/vms", "application/json", `{}`, 405, v1.CodeMethodNotAllowed, "", "GET, HEAD, POST"},
		{"GET", "/api/v1/vms/x/start", "", "", 405, v1.CodeMethodNotAllowed, "", "POST"},
		{"DELETE", "/api/v1/hosts", "", "", 405, v1.CodeMethodNotAllowed, "", "GET, HEAD"},
		{"GET", "/api/v1/nothing", "", "", 404, v1.CodeNotFound, "", ""},
		{"GET", "/api", "", "", 404, v1.CodeNotFound, "", ""},
		{"GET", "//api/v1/vms", "", "", 400, v1.CodeInvalidArgument, "path", ""},
		{"GET", "/api/v1/../v1/vms", "", "", 400, v1.CodeInvalidArgument, "path", ""},
		{"GET", "/api/v1/./vms", "", "", 400, v1.CodeInvalidArgument, "path", ""},
		{"POST", "/api/v1/vms", "text/plain", `{"name":"a","memoryMiB":64}`, 415, v1.CodeUnsupportedMediaType, "Content-Type", ""},
		{"POST", "/api/v1/vms", "", `{"name":"a","memoryMiB":64}`, 415, v1.CodeUnsupportedMediaType, "Content-Type", ""},
		{"POST", "/api/v1/vms/x/start", "application/x-www-form-urlencoded", "", 415, v1.CodeUnsupportedMediaType, "Content-Type", ""},
		{"PUT", "/api/v1/pools/default/volumes/images%2Fa.raw/data", "application/json", "{}", 415, v1.CodeUnsupportedMediaType, "Content-Type", ""},
		{"POST", "/api/v1/vms/x/stop", "application/json", `{"x":"` + strings.Repeat("y", 70<<10) + `"}`, 413, v1.CodeTooLarge, "body", ""},
		{"POST", "/api/v1/vms", "application/json", `{"x":"` + strings.Repeat("y", 1<<20) + `"}`, 413, v1.CodeTooLarge, "body", ""},
		{"DELETE", "/api/v1/vms/x", "application/json", `{"force":true}`, 400, v1.CodeInvalidArgument, "body", ""},
		{"POST", "/api/v1/vms/x/reboot", "application/json", `{"hard":true}`, 400, v1.CodeInvalidArgument, "body", ""},
		{"POST", "/api/v1/vms/x/reboot", "application/json", `{}`, 404, v1.CodeNotFound, "", ""},
		{"POST", "/api/v1/vms/x/stop", "application/json", `{"force":true}`, 404, v1.CodeNotFound, "", ""},
		{"POST", "/api/v1/vms", "application/json", `{"name":"Big","memoryMiB":64,"cloudInit":{"metaData":"` + strings.Repeat("y", 500<<10) + `"}}`, 400, v1.CodeInvalidArgument, "name", ""},
	}
	for _, c := range cases {
		code, hdr, b := ts.do(c.method, c.path, c.ctype, c.body)
		e := apiErr(t, code, b)
		if code != c.status || e.Code != c.code || e.Field != c.field || hdr.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d %+v Allow %q, want %d %s field %q Allow %q", c.method, c.path, code, e, hdr.Get("Allow"), c.status, c.code, c.field, c.allow)
		}
		if ct := hdr.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q", c.method, c.path, ct)
		}
	}

	// A chunked body (no Content-Length) over the limit is cut off while read.
	req := httptest.NewRequest("POST", "/api/v1/vms/x/stop", strings.NewReader(`{"x":"`+strings.Repeat("y", 70<<10)+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.ContentLength = -1
	rec := httptest.NewRecorder()
	ts.s.ServeHTTP(rec, req)
	if e := apiErr(t, rec.Code, rec.Body.Bytes()); rec.Code != 413 || e.Field != "body" {
		t.Errorf("chunked oversize: %d %+v", rec.Code, e)
	}

	// Cross-site browser requests that change things are refused.
	for _, h := range [][2]string{{"Sec-Fetch-Site", "cross-site"}, {"Origin", "http://evil.example"}} {
		code, _, b := ts.do("POST", "/api/v1/vms/x/stop", "", "", h[0], h[1])
		if e := apiErr(t, code, b); code != 403 || e.Code != v1.CodePermissionDenied {
			t.Errorf("%s: %d %+v", h[0], code, e)
		}
	}

	// One access-log line per request, with the operation it made.
	mu.Lock()
	logBuf.Reset()
	mu.Unlock()
	code, hdr, b := ts.do("POST", "/api/v1/vms", "application/json", `{"name":"logged","memoryMiB":64}`)
	if code != 202 {
		t.Fatalf("create: %d %s", code, b)
	}
	opID := strings.TrimPrefix(hdr.Get("Location"), "/api/v1/operations/")
	mu.Lock()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logBuf.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "http" {
			lines = append(lines, m)
		}
	}
	mu.Unlock()
	if len(lines) != 1 {
		t.Fatalf("access log lines: %v", lines)
	}
	l := lines[0]
	if l["method"] != "POST" || l["path"] != "/api/v1/vms" || l["status"] != float64(202) || l["route"] != "POST /api/v1/vms" || l["op"] != opID || l["dur"] == nil {
		t.Errorf("access log line: %v (op %s)", l, opID)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestRedactedAnswers(t *testing.T) {
	ts := newTestServer(t)
	ts.createVM(`{"name":"ci","memoryMiB":64,"cloudInit":{"userData":"#cloud-config\npassword: s3cret\n","metaData":"instance-id: ci\n"}}`)
	for _, p := range []string{"/api/v1/vms/ci", "/api/v1/vms", "/api/v1/operations"} {
		code, _, b := ts.do("GET", p, "", "")
		if code != 200 || strings.Contains(string(b), "s3cret") {
			t.Errorf("GET %s: %d shows the user-data: %s", p, code, b)
		}
	}
	_, _, b := ts.do("GET", "/api/v1/vms/ci", "", "")
	var v v1.VM
	if json.Unmarshal(b, &v) != nil || v.Spec.CloudInit == nil || len(v.Spec.CloudInit.UserDataSHA256) != 64 {
		t.Errorf("no user-data hash in %s", b)
	}
	// In etcd it is sealed with the hosts' key, which opens it again.
	kv, err := ts.st.Get(t.Context(), inventory.VMKey("ci"))
	if err != nil || strings.Contains(string(kv.Value), "s3cret") {
		t.Fatalf("etcd holds the user-data in the clear: %s %v", kv.Value, err)
	}
	spec, _, err := ts.s.inv.Spec(t.Context(), "ci")
	if err != nil || spec.CloudInit == nil || spec.CloudInit.UserData != "" || spec.CloudInit.UserDataSHA256 != v.Spec.CloudInit.UserDataSHA256 {
		t.Fatalf("stored cloud-init: %+v %v", spec.CloudInit, err)
	}
	if ud, err := ts.s.cfg.Secrets.Open(spec.CloudInit.UserDataSealed); err != nil || ud != "#cloud-config\npassword: s3cret\n" {
		t.Fatalf("open the stored user-data: %q %v", ud, err)
	}
	// Requests cannot set what hangar sets.
	code, _, b := ts.do("POST", "/api/v1/vms", "application/json", `{"name":"ci2","memoryMiB":64,"cloudInit":{"userDataSealed":"`+spec.CloudInit.UserDataSealed+`"}}`)
	if e := apiErr(t, code, b); code != 400 || e.Field != "cloudInit.userDataSealed" {
		t.Errorf("request with a sealed value: %d %+v", code, e)
	}
}

// tokenAuth lets requests with "Authorization: Bearer good" through as "ops".
type tokenAuth struct{}

func (tokenAuth) Authenticate(r *http.Request) (authn.Identity, error) {
	if r.Header.Get("Authorization") == "Bearer good" {
		return authn.Identity{Name: "ops", Method: authn.MethodToken, Full: true}, nil
	}
	return authn.Identity{}, authn.ErrNoCredentials
}

// TestAccessLogAuthenticated: behind authentication (the TCP listener)
// refused requests are logged too, and let-through ones name the client.
func TestAccessLogAuthenticated(t *testing.T) {
	ts := newTestServer(t)
	var mu sync.Mutex
	var buf strings.Builder
	ts.s.cfg.Log = slog.New(slog.NewJSONHandler(lockedWriter{&mu, &buf}, nil))
	h := ts.s.Logged(func(next http.Handler) http.Handler { return authn.Require(tokenAuth{}, next) })
	for _, tok := range []string{"", "good"} {
		req := httptest.NewRequest("GET", "/api/v1/vms", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	mu.Lock()
	defer mu.Unlock()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "http" {
			lines = append(lines, m)
		}
	}
	if len(lines) != 2 || lines[0]["status"] != float64(401) || lines[1]["status"] != float64(200) ||
		lines[1]["client"] != "ops" || lines[1]["route"] != "GET /api/v1/vms" {
		t.Fatalf("access log: %v", lines)
	}
}

// TestVersion: GET /api/v1/version names the server's build and each
// host's QEMU from its facts.
func TestVersion(t *testing.T) {
	ts := newTestServer(t)
	if _, err := ts.st.Put(t.Context(), inventory.HostInfoKey("h1"), inventory.Marshal(v1.Host{Name: "h1", CPUs: 4, MemoryMiB: 4096, Accelerator: "tcg", QEMUVersion: "7.2.15"}), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	code, hdr, b := ts.do("GET", "/api/v1/version", "", "")
	if code != 200 || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /version: %d %s %s", code, hdr.Get("Content-Type"), b)
	}
	var v v1.Version
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	want := buildinfo.Get()
	if v.Version != want.Version || v.Version == "" || v.Commit != want.Commit || v.GoVersion != want.GoVersion {
		t.Errorf("version %+v, want the build's %+v", v, want)
	}
	if len(v.QEMU) != 1 || v.QEMU[0] != (v1.HostQEMU{Host: "h1", Version: "7.2.15", Accelerator: "tcg"}) {
		t.Errorf("qemu = %+v, want h1's 7.2.15 tcg", v.QEMU)
	}
	if code, _, b := ts.do("POST", "/api/v1/version", "application/json", "{}"); code != 405 {
		t.Errorf("POST /version: %d %s, want 405", code, b)
	}
}

// TestLocalPin: disks of a host's own pool pin a new VM to that host; disks
// on two hosts' own pools, or on another host than the create's pin, are
// refused naming the disk.
func TestLocalPin(t *testing.T) {
	vol := func(ref string) v1.Disk { return v1.Disk{Volume: ref} }
	clone := func(ref string) v1.Disk { return v1.Disk{Clone: &v1.CloneSource{Volume: ref}} }
	for _, c := range []struct {
		name       string
		disks      []v1.Disk
		host, want string
		errField   string
	}{
		{name: "none", disks: []v1.Disk{{SizeMiB: 8}, vol("nfs/a.raw")}},
		{name: "attached", disks: []v1.Disk{{SizeMiB: 8}, vol("local-h2/a.raw")}, want: "h2"},
		{name: "cloned", disks: []v1.Disk{clone("local-h3/images/b.qcow2")}, want: "h3"},
		{name: "pinned alike", disks: []v1.Disk{vol("local-h2/a.raw")}, host: "h2", want: "h2"},
		{name: "pinned elsewhere", disks: []v1.Disk{vol("local-h2/a.raw")}, host: "h1", errField: "disks[0].volume"},
		{name: "two hosts", disks: []v1.Disk{vol("local-h2/a.raw"), clone("local-h1/b.qcow2")}, errField: "disks[1].clone.volume"},
		{name: "kept pin", disks: []v1.Disk{vol("nfs/a.raw")}, host: "h4", want: "h4"},
	} {
		got, err := localPin(v1.VMSpec{Name: "x", Disks: c.disks}, c.host)
		var ae *v1.Error
		switch {
		case c.errField != "":
			if !errors.As(err, &ae) || ae.Field != c.errField {
				t.Errorf("%s: %v, want an error on %s", c.name, err, c.errField)
			}
		case err != nil || got != c.want:
			t.Errorf("%s: %q %v, want %q", c.name, got, err, c.want)
		}
	}
}
