package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// TestBadInput: requests that are well-formed but clash with what exists
// (a taken name or host port, a running VM, a create the agent cannot do)
// get a 4xx JSON error naming the field, and leave no VM, volume or file
// behind. Malformed and hostile requests are in hostile_test.go.
func TestBadInput(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	notImage := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(notImage, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := func(extra string) string {
		return fmt.Sprintf(`{"name":"ok1","memoryMiB":128,"disks":[{"image":%q}]%s}`, guestImage, extra)
	}
	// Duplicate name: 409, and the first VM is untouched.
	status, body, err := s.c.Raw(ctx, "POST", "/api/v1/vms?wait=60s", []byte(good("")))
	if err != nil || status != 200 {
		t.Fatalf("create ok1: %d %s %v", status, body, err)
	}
	before, err := s.c.VM(ctx, "ok1")
	if err != nil {
		t.Fatal(err)
	}
	status, body, _ = s.c.Raw(ctx, "POST", "/api/v1/vms", []byte(fmt.Sprintf(`{"name":"ok1","memoryMiB":512,"disks":[{"sizeMiB":64}]}`)))
	var er v1.ErrorResponse
	if status != 409 || json.Unmarshal(body, &er) != nil || er.Error.Code != "conflict" || er.Error.Field != "name" {
		t.Fatalf("duplicate: %d %s", status, body)
	}
	after, _ := s.c.VM(ctx, "ok1")
	if after.Revision != before.Revision || after.Spec.MemoryMiB != 128 {
		t.Fatalf("duplicate create changed the existing vm: %+v", after.Spec)
	}
	// The same host port forwarded twice on a host: 409 naming the field.
	fwd := fmt.Sprintf(`{"name":"p1","memoryMiB":128,"disks":[{"sizeMiB":16}],"nics":[{"forwards":[{"hostPort":%d,"guestPort":80}]}]}`, freePort(t))
	if status, body, _ = s.c.Raw(ctx, "POST", "/api/v1/vms?wait=60s", []byte(fwd)); status != 200 {
		t.Fatalf("create p1: %d %s", status, body)
	}
	status, body, _ = s.c.Raw(ctx, "POST", "/api/v1/vms", []byte(strings.Replace(fwd, `"p1"`, `"p2"`, 1)))
	if status != 409 || !strings.Contains(string(body), `"nics[0].forwards[0].hostPort"`) {
		t.Fatalf("port clash: %d %s", status, body)
	}
	// Deleting a running VM without force is refused and changes nothing.
	if _, err := s.c.Action(ctx, "ok1", "start", nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	s.waitState("ok1", 30*time.Second, v1.StateRunning)
	if _, err := s.c.DeleteVM(ctx, "ok1", false, 0); !isCode(err, v1.CodeFailedPrecondition) {
		t.Fatalf("delete of running vm: %v", err)
	}
	// Pause of a stopped VM: precondition.
	if _, err := s.c.Action(ctx, "p1", "pause", nil, 0); !isCode(err, v1.CodeFailedPrecondition) {
		t.Fatalf("pause of stopped vm: %v", err)
	}

	// A disk smaller than its image is refused before any work starts
	// (it used to fail inside the create operation) and leaves nothing.
	_, err = s.c.CreateVM(ctx, v1.VMSpec{Name: "shrink", MemoryMiB: 128, Disks: []v1.Disk{{Image: guestImage, SizeMiB: 1}}}, true, time.Minute)
	var serr *v1.Error
	if !errors.As(err, &serr) || serr.Code != v1.CodeInvalidArgument || serr.Field != "disks[0].sizeMiB" {
		t.Fatalf("shrink create: %v", err)
	}
	if _, err := s.c.VM(ctx, "shrink"); !isCode(err, v1.CodeNotFound) {
		t.Fatalf("failed create left a vm: %v", err)
	}

	// Nothing left behind: only ok1 and p1 exist, and only their volumes.
	vms, err := s.c.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range vms {
		names = append(names, v.Spec.Name)
	}
	if strings.Join(names, ",") != "ok1,p1" {
		t.Fatalf("vms after bad input: %v", names)
	}
	dirs, _ := filepath.Glob(filepath.Join(s.dataDir, "pools", "default", "vms", "*"))
	var got []string
	for _, d := range dirs {
		got = append(got, filepath.Base(d))
	}
	if strings.Join(got, ",") != "ok1,p1" {
		t.Fatalf("volume directories after bad input: %v", got)
	}
	parts, _ := filepath.Glob(filepath.Join(s.dataDir, "pools", "default", "vms", "*", "*.part"))
	if len(parts) > 0 {
		t.Fatalf("partial files left: %v", parts)
	}
}

// TestMetrics: /metrics counts VMs by state and reports host capacity.
func TestMetrics(t *testing.T) {
	s := newServer(t)
	s.createGuest("metered", nil)
	s.waitState("metered", 30*time.Second, v1.StateRunning)
	m, err := s.c.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`hangar_vms{state="running"} 1`, `hangar_host_up{host="testhost"} 1`, `hangar_host_cpus{host="testhost"}`, `hangar_host_memory_bytes{host="testhost"}`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
