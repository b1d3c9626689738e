package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	v1 "hangar/api/v1"
)

var (
	specOnce   sync.Once
	specRouter routers.Router
	specErr    error
)

// openAPIRouter routes requests to the operations of api/v1/openapi.yaml.
func openAPIRouter() (routers.Router, error) {
	specOnce.Do(func() {
		doc, err := openapi3.NewLoader().LoadFromData(v1.OpenAPI)
		if err != nil {
			specErr = err
			return
		}
		doc.Servers = openapi3.Servers{{URL: "http://hangar/api/v1"}}
		specRouter, specErr = legacy.NewRouter(doc)
	})
	return specRouter, specErr
}

// checkSpec checks a real answer against the schema openapi.yaml gives for
// its operation and status. It reports whether the request had a route in
// the spec (unknown routes are answered by the edge, not an operation).
func checkSpec(t *testing.T, method, path string, status int, header http.Header, body []byte) bool {
	t.Helper()
	router, err := openAPIRouter()
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	u, err := url.Parse("http://hangar" + path)
	if err != nil {
		return false
	}
	req := &http.Request{Method: method, URL: u, Host: "hangar", Header: http.Header{}}
	route, params, err := router.FindRoute(req)
	if err != nil {
		return false
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Errorf("%s %s → %d does not match openapi.yaml (%s): %v\nbody: %.600s", method, path, status, route.Operation.OperationID, err, body)
	}
	return true
}

// getSpec sends a request with a JSON body (or none), checks the answer
// against the spec and returns it.
func (s *server) getSpec(t *testing.T, method, path string, body any, want int) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := http.Header{}
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
		h.Set("Content-Type", "application/json")
	}
	status, rh, rb, err := s.c.RawRequest(ctx, method, path, h, b)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if status != want {
		t.Fatalf("%s %s: %d, want %d: %.500s", method, path, status, want, rb)
	}
	if !checkSpec(t, method, path, status, rh, rb) {
		t.Errorf("%s %s: no operation in openapi.yaml", method, path)
	}
	return rb
}

// TestAPIMatchesOpenAPI: real answers of every GET (and of the changes that
// make something to GET) match the schemas of openapi.yaml. Cloud-init
// user-data is in no answer.
func TestAPIMatchesOpenAPI(t *testing.T) {
	s := newServer(t)
	const secret = "#cloud-config\npassword: hunter2-secret\n"
	spec := v1.VMSpec{Name: "specvm", MemoryMiB: 64, Disks: []v1.Disk{{SizeMiB: 16}},
		NICs:      []v1.NIC{{Mode: v1.NICUser, Forwards: []v1.Forward{{HostPort: freePort(t), GuestPort: 80}}}},
		CloudInit: &v1.CloudInit{UserData: secret}}
	var op v1.Operation
	if err := json.Unmarshal(s.getSpec(t, "POST", "/api/v1/vms?wait=90s", spec, 200), &op); err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("create: %+v %v", op, err)
	}
	opPath := "/api/v1/operations/" + op.ID
	s.getSpec(t, "GET", opPath, nil, 200)
	s.getSpec(t, "GET", "/api/v1/operations", nil, 200)
	s.getSpec(t, "PATCH", "/api/v1/vms/specvm", v1.VMPatch{CPUs: ptr(2)}, 200)
	vmBody := s.getSpec(t, "GET", "/api/v1/vms/specvm", nil, 200)
	listBody := s.getSpec(t, "GET", "/api/v1/vms", nil, 200)
	var v v1.VM
	if err := json.Unmarshal(vmBody, &v); err != nil || v.Spec.CloudInit == nil || len(v.Spec.CloudInit.UserDataSHA256) != 64 {
		t.Fatalf("vm answer has no user-data hash: %s", vmBody)
	}
	s.getSpec(t, "GET", "/api/v1/vms/specvm/console/log", nil, 200)

	// Snapshots (offline, of the stopped VM), pools and volumes.
	if err := json.Unmarshal(s.getSpec(t, "POST", "/api/v1/vms/specvm/snapshots?wait=90s", v1.SnapshotArgs{Name: "s1"}, 200), &op); err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("snapshot: %+v %v", op, err)
	}
	s.getSpec(t, "GET", "/api/v1/vms/specvm/snapshots", nil, 200)
	s.getSpec(t, "GET", "/api/v1/vms/specvm", nil, 200) // with snapshots in its status
	s.getSpec(t, "GET", "/api/v1/pools", nil, 200)
	s.getSpec(t, "POST", "/api/v1/pools/local-testhost/volumes", v1.VolumeCreateArgs{Name: "images/blank.qcow2", SizeMiB: 8}, 201)
	s.getSpec(t, "GET", "/api/v1/pools/local-testhost/volumes", nil, 200)
	s.getSpec(t, "GET", "/api/v1/pools/local-testhost/volumes/images%2Fblank.qcow2", nil, 200)

	// A template of a second VM.
	if err := json.Unmarshal(s.getSpec(t, "POST", "/api/v1/vms?wait=90s", v1.VMSpec{Name: "tplsrc", MemoryMiB: 64, Disks: []v1.Disk{{SizeMiB: 8}}}, 200), &op); err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("create tplsrc: %+v %v", op, err)
	}
	if err := json.Unmarshal(s.getSpec(t, "POST", "/api/v1/vms/tplsrc/template?wait=90s", v1.TemplateArgs{Template: "tpl1"}, 200), &op); err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("template: %+v %v", op, err)
	}
	s.getSpec(t, "GET", "/api/v1/templates", nil, 200)
	s.getSpec(t, "GET", "/api/v1/templates/tpl1", nil, 200)

	s.getSpec(t, "GET", "/api/v1/hosts", nil, 200)
	s.getSpec(t, "GET", "/api/v1/hosts/testhost", nil, 200)
	s.getSpec(t, "GET", "/api/v1/capacity", nil, 200)
	s.getSpec(t, "GET", "/api/v1/alerts", nil, 200)
	s.getSpec(t, "GET", "/api/v1/hosts/testhost/history", nil, 200)
	s.getSpec(t, "GET", "/api/v1/vms/specvm/history", nil, 200)
	s.getSpec(t, "GET", "/api/v1/vms/specvm/usage", nil, 412) // stopped
	s.getSpec(t, "GET", "/api/v1/version", nil, 200)
	s.getSpec(t, "GET", "/api/v1/pool", nil, 200)
	s.getSpec(t, "POST", "/api/v1/pool/join-tokens", v1.JoinTokenRequest{TTLSeconds: 60}, 201)
	s.getSpec(t, "POST", "/api/v1/pool/credentials", v1.CredentialsRequest{Name: "alice"}, 201)
	s.getSpec(t, "POST", "/api/v1/pool/join", v1.JoinRequest{Token: "hgjoin1.bad", Host: "h2", CSR: "x", Address: "10.0.0.2:8443"}, 401)
	s.getSpec(t, "DELETE", "/api/v1/hosts/ghost", nil, 404)
	// Errors are documented answers too.
	s.getSpec(t, "GET", "/api/v1/vms/ghost", nil, 404)
	s.getSpec(t, "GET", "/api/v1/templates/ghost", nil, 404)
	s.getSpec(t, "POST", "/api/v1/vms/specvm/pause", nil, 412)

	// No answer carries the user-data: not the VM, the list, nor any
	// operation's arguments.
	opsBody := s.getSpec(t, "GET", "/api/v1/operations", nil, 200)
	for what, b := range map[string][]byte{"vm": vmBody, "vm list": listBody, "operations": opsBody} {
		if strings.Contains(string(b), "hunter2") {
			t.Errorf("%s answer shows the cloud-init user-data: %s", what, b)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestCloudInitSealed: a VM whose only disk is its cloud-init seed is
// created; the seed ISO holds the user-data and is 0600; no file of etcd
// (WAL, snapshot, database) holds the user-data in the clear.
func TestCloudInitSealed(t *testing.T) {
	if _, err := exec.LookPath("genisoimage"); err != nil {
		t.Skip("genisoimage not installed (apt-get install genisoimage)")
	}
	s := newServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const secret = "#cloud-config\npassword: correct-horse-battery-staple\n"
	op, err := s.c.CreateVM(ctx, v1.VMSpec{Name: "cionly", MemoryMiB: 64, CloudInit: &v1.CloudInit{UserData: secret}}, false, time.Minute)
	if err == nil {
		_, err = s.c.Wait(ctx, op, nil)
	}
	if err != nil {
		t.Fatalf("create a vm with only a seed: %v", err)
	}
	v, err := s.c.VM(ctx, "cionly")
	if err != nil {
		t.Fatal(err)
	}
	seed := ""
	for _, d := range v.Status.Disks {
		if d.Name == "cidata" {
			seed = d.Path
		}
	}
	b, err := os.ReadFile(seed)
	if err != nil || !strings.Contains(string(b), "correct-horse-battery-staple") {
		t.Fatalf("seed %q lacks the user-data: %v", seed, err)
	}
	if st, err := os.Stat(seed); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("seed mode %v %v, want 0600", st.Mode().Perm(), err)
	}
	found := ""
	_ = filepath.WalkDir(filepath.Join(s.dataDir, "etcd"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte("correct-horse-battery-staple")) {
				found = p
			}
		}
		return nil
	})
	if found != "" {
		t.Fatalf("etcd file %s holds the user-data in the clear", found)
	}
}
