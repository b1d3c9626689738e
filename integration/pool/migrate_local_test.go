package pool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// TestLiveMigrationLocal: a guest whose disk is on h1's own (local) pool
// serves HTTP on its bridged IP while it is live-migrated (TLS) h1→h2→h1:
// the target makes an empty volume of the disk's size in its own pool and
// exports it over NBD, the source mirrors the disk into it, then moves RAM.
// A client in the client namespace reads the guest every 20 ms: one boot
// id, neither the memory counter nor the disk counter (a file on the
// migrated disk) ever goes backwards, and the disk counter goes on after
// each move. After each migration the VM's status names a volume of the
// new host, its QEMU runs there exactly once, none is left on the host it
// left, and the disk file and seed there are gone. The longest gap is logged. A VM
// whose cdrom holds an ISO of its host only is still refused.
func TestLiveMigrationLocal(t *testing.T) {
	p := sharedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	// Its disk: an overlay on the guest image in h1's default pool; its
	// cloud-init seed is a file of the host it runs on too.
	g := p.BootGuest(t, "h1", "ml", func(s *v1.VMSpec) { s.CloudInit = &v1.CloudInit{UserData: "#cloud-config\n"} })
	v := p.WaitVM(t, "h1", "ml", "h1", time.Minute, v1.StateRunning)
	disk := v.Status.Disks[0].Path
	if !strings.HasPrefix(disk, p.Host(t, "h1").DataDir+"/") {
		t.Fatalf("disk of ml at %s, not in h1's data directory", disk)
	}
	poll := p.Poll(t, g)
	if err := poll.WaitOK(ctx, 10); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"h2", "h1"} {
		from := "h1"
		if to == "h1" {
			from = "h2"
		}
		before := poll.Result().LastDiskCounter
		start := time.Now()
		out := p.CLI(t, "h1", "vm", "migrate", "ml", "--to", to)
		t.Logf("migrate to %s took %v: %s", to, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
		v := p.WaitVM(t, "h1", "ml", to, 2*time.Minute, v1.StateRunning)
		if v.Spec.Host != to {
			t.Fatalf("after migrating to %s the vm is placed on %s", to, v.Spec.Host)
		}
		moved := v.Status.Disks[0].Path
		if !strings.HasPrefix(moved, p.Host(t, to).DataDir+"/") {
			t.Fatalf("after migrating to %s the status names disk %s, not a file of %s", to, moved, to)
		}
		if _, err := os.Stat(moved); err != nil {
			t.Fatalf("disk of ml on %s: %v", to, err)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(moved), "cidata.iso")); err != nil {
			t.Fatalf("cloud-init seed of ml on %s: %v", to, err)
		}
		if n := countQEMUs(t, p, to, "ml"); n != 1 {
			t.Fatalf("%d QEMUs of ml on %s, want 1", n, to)
		}
		deadline := time.Now().Add(time.Minute)
		for p.QEMUOf(t, from, "ml") != 0 || !gone(disk) || !gone(filepath.Dir(disk)) {
			if time.Now().After(deadline) {
				t.Fatalf("on %s after the migration: QEMU pid %d, disk file %s still there: %v, its directory: %v",
					from, p.QEMUOf(t, from, "ml"), disk, !gone(disk), !gone(filepath.Dir(disk)))
			}
			time.Sleep(200 * time.Millisecond)
		}
		// The guest goes on writing its (now migrated) disk.
		deadline = time.Now().Add(2 * time.Minute)
		for poll.Result().LastDiskCounter < before+3 {
			if time.Now().After(deadline) {
				t.Fatalf("the disk counter does not move on after the migration to %s: %s", to, poll.Result())
			}
			time.Sleep(200 * time.Millisecond)
		}
		disk = moved
	}
	r := poll.Stop()
	t.Logf("client saw %s", r)
	t.Logf("longest gap %v at %v", r.LongestGap, r.LongestGapStart.UTC().Format("15:04:05.000"))
	if len(r.BootIDs) != 1 || r.BootIDs[0] != g.BootID {
		t.Fatalf("boot ids %v across the migrations, want only %s", r.BootIDs, g.BootID)
	}
	if len(r.Decreases) != 0 {
		t.Fatalf("the guest's counter went backwards: %v", r.Decreases)
	}
	if len(r.DiskDecreases) != 0 {
		t.Fatalf("the guest's disk counter went backwards: %v", r.DiskDecreases)
	}

	// A cdrom holding an ISO of h1's pool only: refused by the blocker
	// check.
	iso := filepath.Join(p.Host(t, "h1").DataDir, "pools", "default", "images", "ml-local.iso")
	if err := os.MkdirAll(filepath.Dir(iso), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(iso, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	p.CreateGuest(t, "h1", "ml-iso", func(s *v1.VMSpec) {
		s.Disks = append(s.Disks, v1.Disk{Name: "iso", Media: "cdrom", Image: iso})
	})
	p.WaitVM(t, "h1", "ml-iso", "h1", 2*time.Minute, v1.StateRunning)
	if out, err := p.CLIErr(t, "h1", "vm", "migrate", "ml-iso", "--to", "h2"); err == nil || !strings.Contains(out, "cdrom iso holds") {
		t.Fatalf("migrating a vm with a local iso: %v\n%s", err, out)
	}
	if pid := p.QEMUOf(t, "h2", "ml-iso"); pid != 0 {
		t.Fatalf("a QEMU of ml-iso on h2 (pid %d) after a refused migration", pid)
	}
}

// countQEMUs is how many QEMUs of VM name run in host's namespace.
func countQEMUs(t *testing.T, p *Pool, host, name string) int {
	n := 0
	for _, cmd := range p.QEMUs(t, host) {
		if strings.Contains(cmd, "guest="+name+",") {
			n++
		}
	}
	return n
}

func gone(path string) bool {
	_, err := os.Stat(path)
	return errors.Is(err, os.ErrNotExist)
}

// TestLocalMigrationTargetLost: a target holding a file under the disk's
// volume name (h2) refuses the migration and leaves the file alone; then
// the target (h3) loses power while a guest's local disk is being copied
// to it. The migration fails, the guest
// runs on on h1 untouched (one boot id, neither counter goes back, the disk
// counter goes on, its disk file in place), and when h3 comes back — the
// migration's records are gone by then: a dead target counts as settled —
// its agent deletes the volume it had made (from its own journal) and runs
// no QEMU of the guest.
func TestLocalMigrationTargetLost(t *testing.T) {
	p := sharedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if sp := p.Host(t, "h3").ServeProc(); sp == nil || sp.Exited() {
			p.Restart(t, "h3")
		}
	})
	g := p.BootGuest(t, "h1", "mx", nil)
	v := p.WaitVM(t, "h1", "mx", "h1", time.Minute, v1.StateRunning)
	disk := v.Status.Disks[0].Path
	rel, err := filepath.Rel(p.Host(t, "h1").DataDir, disk)
	if err != nil || !filepath.IsLocal(rel) {
		t.Fatalf("disk of mx at %s, not in h1's data directory", disk)
	}
	onTarget := filepath.Join(p.Host(t, "h3").DataDir, rel) // the same volume name in h3's pool
	poll := p.Poll(t, g)
	if err := poll.WaitOK(ctx, 10); err != nil {
		t.Fatal(err)
	}
	c := p.API(t, "h1")

	// A file of that name on h2 already: h2 refuses to prepare and leaves
	// the file as it was.
	planted := filepath.Join(p.Host(t, "h2").DataDir, rel)
	if err := os.MkdirAll(filepath.Dir(planted), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(planted, []byte("not the migration's"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(filepath.Dir(planted)) })
	op, err := c.Migrate(ctx, "mx", v1.MigrateArgs{To: "h2"}, 0)
	if err == nil {
		op, err = c.Wait(ctx, op, nil)
	}
	if err == nil || op.State != v1.OpFailed || !strings.Contains(op.Error.Message, "exists on this host already") {
		t.Fatalf("migration onto a taken volume name: %s %v (%+v)", op.State, err, op.Error)
	}
	if b, err := os.ReadFile(planted); err != nil || string(b) != "not the migration's" {
		t.Fatalf("the file on h2 after the refused migration: %q %v", b, err)
	}
	if pid := p.QEMUOf(t, "h2", "mx"); pid != 0 {
		t.Fatalf("a QEMU of mx on h2 (pid %d) after the refused migration", pid)
	}

	op, err = c.Migrate(ctx, "mx", v1.MigrateArgs{To: "h3"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for gone(onTarget) {
		if time.Now().After(deadline) {
			t.Fatalf("h3 made no volume %s for the migration", onTarget)
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.PowerLoss(t, "h3")
	lost := poll.Result().LastDiskCounter
	if op, err = c.Wait(ctx, op, nil); err == nil || op.State != v1.OpFailed {
		t.Fatalf("migration to a host that lost power: %s %v (%+v)", op.State, err, op.Error)
	}
	t.Logf("migration failed: %s", op.Error.Message)
	v = p.WaitVM(t, "h1", "mx", "h1", time.Minute, v1.StateRunning)
	if v.Spec.Host != "h1" || v.Status.Disks[0].Path != disk || gone(disk) {
		t.Fatalf("after the failed migration: placed on %s, disk %s (was %s), file gone %v", v.Spec.Host, v.Status.Disks[0].Path, disk, gone(disk))
	}
	deadline = time.Now().Add(2 * time.Minute)
	for poll.Result().LastDiskCounter < lost+3 {
		if time.Now().After(deadline) {
			t.Fatalf("the disk counter does not move on on h1: %s", poll.Result())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if gone(onTarget) {
		t.Fatalf("%s gone while h3 was down: who removed it?", onTarget)
	}
	p.Restart(t, "h3")
	deadline = time.Now().Add(time.Minute)
	for !gone(onTarget) || !gone(filepath.Dir(onTarget)) {
		if time.Now().After(deadline) {
			t.Fatalf("h3 still holds %s (or its directory) a minute after its restart", onTarget)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if pid := p.QEMUOf(t, "h3", "mx"); pid != 0 {
		t.Fatalf("a QEMU of mx on h3 (pid %d) after its restart", pid)
	}
	r := poll.Stop()
	t.Logf("client saw %s", r)
	if len(r.BootIDs) != 1 || r.BootIDs[0] != g.BootID || len(r.Decreases) != 0 || len(r.DiskDecreases) != 0 {
		t.Fatalf("the guest on h1 across the failed migration: %s", r)
	}
}
