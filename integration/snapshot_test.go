package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/qemu/qmp"
)

// TestHotMode: a live snapshot of a running VM, then discard (the guest's
// later write is gone) or commit (kept; the chain is back to one layer).
func TestHotMode(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	port := s.createGuest("hot", nil)
	_, off := s.waitReady("hot", 0)
	markGuest(t, port, "before")

	// Discard without memory: the VM restarts from the snapshot's disks.
	s.wait(s.c.Snapshot(ctx, "hot", v1.SnapshotArgs{Name: "s1"}, time.Minute))
	snaps, err := s.c.Snapshots(ctx, "hot")
	if err != nil || len(snaps) != 1 {
		t.Fatalf("snapshots %+v %v", snaps, err)
	}
	markGuest(t, port, "after")
	s.wait(s.c.RevertSnapshot(ctx, "hot", "s1", true, time.Minute))
	_, off = s.waitReady("hot", off)
	if st := mustGuestStatus(t, port); st["marker"] != "before" {
		t.Fatalf("after discard the guest's marker is %q, want %q", st["marker"], "before")
	}

	// Commit: the write after the snapshot stays, merged while running.
	s.wait(s.c.Snapshot(ctx, "hot", v1.SnapshotArgs{Name: "s2"}, time.Minute))
	v, _ := s.c.VM(ctx, "hot")
	overlay := v.Status.Disks[0].Top
	if overlay == "" {
		t.Fatal("no overlay recorded for the snapshot")
	}
	boot := mustGuestStatus(t, port)["boot_id"]
	markGuest(t, port, "kept")
	s.wait(s.c.CommitSnapshot(ctx, "hot", "s2", time.Minute))
	st := mustGuestStatus(t, port)
	if st["marker"] != "kept" || st["boot_id"] != boot {
		t.Fatalf("after commit: %v (boot id was %s)", st, boot)
	}
	v, _ = s.c.VM(ctx, "hot")
	if v.Status.Disks[0].Top != "" || len(v.Status.Snapshots) != 0 {
		t.Fatalf("after commit the disk still has a snapshot layer: %+v", v.Status)
	}
	if _, err := os.Stat(overlay); !os.IsNotExist(err) {
		t.Fatalf("overlay %s left after commit: %v", overlay, err)
	}
	// One layer again: the VM's volume on the base image (its own overlay).
	out, err := exec.Command("qemu-img", "info", "-U", "--backing-chain", v.Status.Disks[0].Path).Output()
	if err != nil || strings.Count(string(out), "image: ") != 2 {
		t.Fatalf("chain after commit:\n%s %v", out, err)
	}
	// The merged write survives a cold restart.
	s.action("hot", "stop", nil)
	s.action("hot", "start", nil)
	s.waitReady("hot", off)
	if st := mustGuestStatus(t, port); st["marker"] != "kept" {
		t.Fatalf("after restart the marker is %q", st["marker"])
	}

	// With memory: discard resumes the guest exactly at the snapshot.
	pre := mustGuestStatus(t, port)
	s.wait(s.c.Snapshot(ctx, "hot", v1.SnapshotArgs{Name: "m1", Memory: true}, 2*time.Minute))
	markGuest(t, port, "lost")
	time.Sleep(3 * time.Second)
	post := counter(t, mustGuestStatus(t, port), "counter")
	s.wait(s.c.RevertSnapshot(ctx, "hot", "m1", true, 2*time.Minute))
	back := mustGuestStatus(t, port)
	if back["boot_id"] != pre["boot_id"] || back["marker"] != "kept" {
		t.Fatalf("after discard with memory: %v; before the snapshot: %v", back, pre)
	}
	// Resumed at the snapshot: later than before it, earlier than just
	// before the discard (3 s = 30 ticks after it).
	if c := counter(t, back, "counter"); c < counter(t, pre, "counter") || c >= post {
		t.Fatalf("counter %d after discard; %s before the snapshot, %d before the discard", c, pre["counter"], post)
	}
}

// TestSuspendResume: suspend to a file, restart hangar serve, resume: the
// guest goes on where it was (same boot, its counter continues).
func TestSuspendResume(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	port := s.createGuest("sleeper", nil)
	s.waitReady("sleeper", 0)
	before := mustGuestStatus(t, port)
	v := s.waitState("sleeper", 5*time.Second, v1.StateRunning)
	s.wait(s.c.Suspend(ctx, "sleeper", 2*time.Minute))
	v2 := s.waitState("sleeper", 5*time.Second, v1.StateSuspended)
	if alive(v.Status.PID) || v2.Status.StateFile == "" {
		t.Fatalf("suspended vm: pid %d alive, state file %q", v.Status.PID, v2.Status.StateFile)
	}
	if _, err := os.Stat(v2.Status.StateFile); err != nil {
		t.Fatal(err)
	}
	s.stop()
	time.Sleep(2 * time.Second)
	s.start()
	s.waitState("sleeper", 10*time.Second, v1.StateSuspended)
	s.action("sleeper", "resume", nil)
	s.waitState("sleeper", 10*time.Second, v1.StateRunning)
	after := mustGuestStatus(t, port)
	if after["boot_id"] != before["boot_id"] {
		t.Fatalf("boot id %s after resume, was %s", after["boot_id"], before["boot_id"])
	}
	c0, c1 := counter(t, before, "counter"), counter(t, after, "counter")
	if c1 < c0 || c1 > c0+30 {
		t.Fatalf("counter %d after resume, %d before suspend", c1, c0)
	}
	time.Sleep(time.Second)
	if c2 := counter(t, mustGuestStatus(t, port), "counter"); c2 <= c1 {
		t.Fatalf("counter does not go on after resume: %d then %d", c1, c2)
	}
	if _, err := os.Stat(v2.Status.StateFile); !os.IsNotExist(err) {
		t.Fatalf("state file left after resume: %v", err)
	}
}

// TestOrphanJobAfterCrash: hangar serve dies while QEMU runs a block job
// (here a commit left in READY, as an interrupted "snapshot commit" leaves
// it); at restart the orphan job is cancelled and the commit succeeds.
func TestOrphanJobAfterCrash(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	port := s.createGuest("orphan", nil)
	s.waitReady("orphan", 0)
	s.wait(s.c.Snapshot(ctx, "orphan", v1.SnapshotArgs{Name: "s1"}, time.Minute))
	markGuest(t, port, "merged")
	v, _ := s.c.VM(ctx, "orphan")
	top := v.Status.Disks[0].Node
	s.kill9()

	// Play the dead agent's part: start an active commit and leave it.
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	mon, err := qmp.Dial(qctx, filepath.Join(s.runDir, "vms", "orphan", "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	// Into the VM's own volume (base-node): without it QEMU would commit
	// down to the bottom of the chain, the pool's shared image.
	events, stop := mon.Subscribe()
	if err := mon.Execute(qctx, "block-commit", map[string]any{"job-id": "orphan-commit", "device": top,
		"base": v.Status.Disks[0].Path, "auto-dismiss": false}, nil); err != nil {
		t.Fatal(err)
	}
	for ev := range events {
		if ev.Name == "BLOCK_JOB_READY" {
			break
		}
	}
	stop()
	mon.Close()

	s.start()
	s.waitState("orphan", 20*time.Second, v1.StateRunning)
	s.wait(s.c.CommitSnapshot(ctx, "orphan", "s1", time.Minute))
	if st := mustGuestStatus(t, port); st["marker"] != "merged" {
		t.Fatalf("marker %q after commit", st["marker"])
	}
	v, _ = s.c.VM(ctx, "orphan")
	if v.Status.Disks[0].Top != "" || len(v.Status.Snapshots) != 0 {
		t.Fatalf("status after commit: %+v", v.Status)
	}
}

// TestSnapshotChain: deleting a snapshot that has newer ones merges its
// changes into its base (live and offline); every remaining snapshot still
// goes back to its own point.
func TestSnapshotChain(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	port := s.createGuest("chain", nil)
	_, off := s.waitReady("chain", 0)
	snap := func(name string) { s.wait(s.c.Snapshot(ctx, "chain", v1.SnapshotArgs{Name: name}, time.Minute)) }
	names := func() string {
		snaps, err := s.c.Snapshots(ctx, "chain")
		if err != nil {
			t.Fatal(err)
		}
		var n []string
		for _, sn := range snaps {
			n = append(n, sn.Name)
		}
		return strings.Join(n, ",")
	}
	marker := func() string { return mustGuestStatus(t, port)["marker"] }
	markGuest(t, port, "a")
	snap("s1")
	markGuest(t, port, "b")
	snap("s2")
	markGuest(t, port, "c")
	snap("s3")
	markGuest(t, port, "d")
	v, _ := s.c.VM(ctx, "chain")
	s2Overlay := v.Status.Snapshots[1].Overlays["disk0"]

	s.wait(s.c.CommitSnapshot(ctx, "chain", "s2", time.Minute)) // live, inner
	if got := names(); got != "s1,s3" || marker() != "d" {
		t.Fatalf("after deleting s2: snapshots %s, marker %q", got, marker())
	}
	if _, err := os.Stat(s2Overlay); !os.IsNotExist(err) {
		t.Fatalf("s2's overlay left: %v", err)
	}
	s.wait(s.c.RevertSnapshot(ctx, "chain", "s3", false, time.Minute))
	_, off = s.waitReady("chain", off)
	if marker() != "c" {
		t.Fatalf("revert to s3 after s2 was merged: marker %q, want c", marker())
	}
	s.wait(s.c.RevertSnapshot(ctx, "chain", "s1", false, time.Minute))
	_, off = s.waitReady("chain", off)
	if got := names(); got != "s1" || marker() != "a" {
		t.Fatalf("after revert to s1: snapshots %s, marker %q", got, marker())
	}

	// Offline: snapshots of a stopped VM, the inner one deleted.
	markGuest(t, port, "e")
	s.action("chain", "stop", nil)
	snap("t1")
	snap("t2")
	s.wait(s.c.CommitSnapshot(ctx, "chain", "t1", time.Minute))
	if got := names(); got != "s1,t2" {
		t.Fatalf("after deleting t1 offline: %s", got)
	}
	s.action("chain", "start", nil)
	_, off = s.waitReady("chain", off)
	if marker() != "e" {
		t.Fatalf("marker %q after offline merge", marker())
	}
	s.wait(s.c.RevertSnapshot(ctx, "chain", "s1", true, time.Minute))
	s.waitReady("chain", off)
	if got := names(); got != "" || marker() != "a" {
		t.Fatalf("after discarding s1: snapshots %q, marker %q", got, marker())
	}
}
