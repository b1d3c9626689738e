package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	sum, err := sha256File(p)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func (s *server) wait(op v1.Operation, err error) v1.Operation {
	s.t.Helper()
	if err == nil {
		op, err = s.c.Wait(context.Background(), op, nil)
	}
	if err != nil {
		s.t.Fatalf("operation %s %s: %v", op.Kind, op.Target, err)
	}
	return op
}

// markGuest asks the guest to write a marker file on its disk (and sync).
func markGuest(t *testing.T, port int, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/mark?%s", port, value), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("mark %s: %v", value, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if strings.TrimSpace(string(b)) != "ok" {
		t.Fatalf("mark %s: guest answered %q", value, b)
	}
}

// TestTemplatesAndClones: a stopped VM becomes a template; a linked clone
// boots and writes to its own overlay while the template's base stays
// unchanged; a template with linked clones cannot be deleted.
func TestTemplatesAndClones(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	s.createGuest("golden", nil)
	s.waitReady("golden", 0)
	s.action("golden", "stop", nil)
	s.wait(s.c.MakeTemplate(ctx, "golden", "base", time.Minute))
	if _, err := s.c.VM(ctx, "golden"); !isCode(err, v1.CodeNotFound) {
		t.Fatalf("the vm is still there after becoming a template: %v", err)
	}
	ts, err := s.c.Templates(ctx)
	if err != nil || len(ts) != 1 || ts[0].Name != "base" || len(ts[0].Disks) != 1 {
		t.Fatalf("templates %+v %v", ts, err)
	}
	basePath := filepath.Join(s.dataDir, "pools", "default", "templates", "base", "disk0.qcow2")
	before := fileSHA(t, basePath)

	port := freePort(t)
	start := time.Now()
	op := s.wait(s.c.Deploy(ctx, "base", v1.DeployArgs{Name: "linked1", Linked: true, Start: true,
		Forwards: []v1.Forward{{HostPort: port, GuestPort: 80}}}, time.Minute))
	t.Logf("linked deploy (create overlay + start qemu): %s", op.Updated.Sub(op.Created).Round(time.Millisecond))
	s.waitReady("linked1", 0)
	t.Logf("linked deploy to guest ready: %s", time.Since(start).Round(time.Millisecond))
	markGuest(t, port, "linked-write")
	if st := mustGuestStatus(t, port); st["marker"] != "linked-write" || st["hostname"] != "linked1" {
		t.Fatalf("linked clone says %v", st)
	}
	v := s.waitState("linked1", 5*time.Second, v1.StateRunning)
	if v.Status.Disks[0].Backing == "" {
		t.Fatalf("linked clone disk has no backing: %+v", v.Status.Disks[0])
	}
	if got := fileSHA(t, basePath); got != before {
		t.Fatal("the template's base changed under a linked clone")
	}
	s.wait(s.c.Deploy(ctx, "base", v1.DeployArgs{Name: "full1", Start: true}, time.Minute))
	s.waitReady("full1", 0)

	if err := s.c.DeleteTemplate(ctx, "base"); !isCode(err, v1.CodeConflict) {
		t.Fatalf("delete of a template with a linked clone: %v", err)
	}
	s.wait(s.c.DeleteVM(ctx, "linked1", true, time.Minute))
	if err := s.c.DeleteTemplate(ctx, "base"); err != nil {
		t.Fatalf("delete of a template without linked clones: %v", err)
	}
	// The full clone does not depend on the template: it reboots fine.
	_, off := s.waitReady("full1", 0)
	s.action("full1", "reboot", nil)
	s.waitReady("full1", off)
}

// TestCloneRunningVM: a running VM is cloned without stopping it; the clone
// boots and its disk counter shows the value at clone time.
func TestCloneRunningVM(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	port := s.createGuest("prod", nil)
	boot, _ := s.waitReady("prod", 0)
	deadline := time.Now().Add(30 * time.Second)
	for counter(t, mustGuestStatus(t, port), "disk_counter") < 3 && time.Now().Before(deadline) {
		time.Sleep(300 * time.Millisecond)
	}
	c0 := counter(t, mustGuestStatus(t, port), "disk_counter")
	copyPort := freePort(t)
	s.wait(s.c.Clone(ctx, "prod", v1.CloneArgs{Name: "test-copy", Forwards: []v1.Forward{{HostPort: copyPort, GuestPort: 80}}}, time.Minute))
	c1 := counter(t, mustGuestStatus(t, port), "disk_counter")
	if st := mustGuestStatus(t, port); st["boot_id"] != boot {
		t.Fatal("the source rebooted during the clone")
	}
	v, err := s.c.VM(ctx, "test-copy")
	if err != nil || v.Status.State != v1.StateStopped {
		t.Fatalf("clone: %+v %v", v.Status, err)
	}
	// The test guest runs no qemu-guest-agent: Hangar records that the copy
	// is crash-consistent, not filesystem-consistent.
	if !strings.Contains(v.Status.Reason, "crash-consistent") {
		t.Fatalf("clone consistency not recorded: %q", v.Status.Reason)
	}
	s.action("test-copy", "start", nil)
	copyBoot, _ := s.waitReady("test-copy", 0)
	st := mustGuestStatus(t, copyPort)
	dc := counter(t, st, "disk_counter")
	// The copy's counter went on from the value on disk at the clone's
	// instant: between what the source had synced before and after it.
	if dc < c0-1 || dc > c1+3 {
		t.Fatalf("clone's disk counter %d, source had %d before and %d after the clone", dc, c0, c1)
	}
	if copyBoot == boot || st["hostname"] != "test-copy" {
		t.Fatalf("clone status %v", st)
	}
	if later := counter(t, mustGuestStatus(t, port), "disk_counter"); later <= c1 {
		t.Fatalf("source counter stuck at %d", later)
	}
	// A stopped VM is cloned by copying its volumes; the copy boots.
	s.action("prod", "stop", nil)
	s.wait(s.c.Clone(ctx, "prod", v1.CloneArgs{Name: "cold-copy"}, time.Minute))
	if v, _ := s.c.VM(ctx, "cold-copy"); !strings.Contains(v.Status.Reason, "stopped") {
		t.Fatalf("cold clone: %q", v.Status.Reason)
	}
	s.action("cold-copy", "start", nil)
	s.waitReady("cold-copy", 0)
}
