package pool_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// TestMasterKilledDuringMigration: the pool master's hangar serve is
// killed with SIGKILL while a guest it migrates (disk on a shared pool,
// between the two other hosts, so the master is a third host) is moving
// its RAM at a low max bandwidth; the next master, elected from the
// survivors, drives the recorded migration on from its records. Afterwards
// the VM runs exactly once — one QEMU in the pool, on the host its spec
// and status (moved with the owner record in the switch-over) name — with
// the same boot id and its HTTP server answering throughout bar the
// switch-over; the migrate operation succeeded, one migration was started
// and one switch-over made; no listener or QEMU of the migration is left;
// and the record is gone (a migration back is accepted and succeeds). The
// killed host restarts on its data with its own guests still running, and
// the successor stays master: one election in all (no flapping).
func TestMasterKilledDuringMigration(t *testing.T) {
	p := joinedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()
	master := waitMaster(ctx, t, p, "h1", "")
	var others []string
	for _, h := range p.Hosts {
		if h.Name != master {
			others = append(others, h.Name)
		}
	}
	src, dst := others[0], others[1]
	// A name of its own at each run (-count N): the DHCP server keeps the
	// leases of a name, and a host the serial log of a VM deleted there.
	mkRuns++
	name := fmt.Sprintf("mk%d", mkRuns)
	t.Logf("master %s; migrating %s from %s to %s", master, name, src, dst)

	vol := sharedVolume(ctx, t, p, "mkill", name+".qcow2")
	g := p.BootGuest(t, src, name, func(s *v1.VMSpec) { s.Disks = []v1.Disk{{Volume: vol}} })
	t.Cleanup(func() { // before the VM's delete removes its logs
		if t.Failed() {
			for _, h := range []string{src, dst} {
				log := fileTail(p.Host(t, h).SerialLog(name), 3000)
				t.Logf("serial log of %s on %s:\n%s", name, h, log)
				if slices.ContainsFunc([]string{"Kernel panic", "general protection fault", "BUG", "Oops"}, func(s string) bool { return strings.Contains(log, s) }) {
					t.Logf("NOTE: the guest's kernel crashed on %s (see its serial log): the known crash of guests right after a live migration", h)
				}
			}
		}
	})
	poll := p.Poll(t, g)
	time.Sleep(time.Second)
	survivors := p.QEMUs(t, master) // the master's own guests: they must outlive its serve

	c := p.API(t, src)
	// 4 MiB/s: the guest's RAM in use (over 100 MiB) takes longer to move
	// than the master takes to be replaced (about 8 s), and the stream
	// still outruns what the idle guest dirties (about 1 MiB/s), so
	// auto-converge need not throttle it much.
	op, err := c.Migrate(ctx, name, v1.MigrateArgs{To: dst, MaxBandwidth: 4 << 20}, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		op, err = c.Operation(ctx, op.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if m := op.Progress.Migration; m != nil && m.RAMTransferred > 0 && m.RAMRemaining > 0 {
			t.Logf("RAM moving %v after the request: %s", time.Since(start).Round(time.Millisecond), migrationFigures(*m))
			break
		}
		if op.State != v1.OpPending && op.State != v1.OpRunning {
			t.Fatalf("migration ended before its RAM phase was seen: %+v (%+v)", op.Progress, op.Error)
		}
		if time.Since(start) > 3*time.Minute {
			t.Fatalf("no RAM transfer 3 minutes after the request: %+v", op.Progress)
		}
		time.Sleep(100 * time.Millisecond)
	}

	elections := countLogLines(t, p, "elected pool master")
	sp := p.Host(t, master).ServeProc()
	if err := sp.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-sp.Done()
	killed := time.Now()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			p.Restart(t, master)
		}
	})
	next := waitMaster(ctx, t, p, src, master)
	t.Logf("%s elected pool master %v after %s was killed", next, time.Since(killed).Round(time.Millisecond), master)
	if op, err := c.Operation(ctx, op.ID, 0); err == nil && op.Progress.Migration != nil {
		t.Logf("at the election: phase %q%s", op.Progress.Phase, migrationFigures(*op.Progress.Migration))
	}

	op, err = c.Wait(ctx, op, nil)
	if err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("migration across the master's death: %s %+v (%v)", op.State, op.Error, err)
	}
	t.Logf("migration succeeded %v after the request: %s", time.Since(start).Round(time.Millisecond), migrationFigures(*op.Progress.Migration))
	v := p.WaitVM(t, src, name, dst, 2*time.Minute, v1.StateRunning)
	if v.Spec.Host != dst {
		t.Fatalf("after the migration the spec names %s, the status %s", v.Spec.Host, v.Status.Host)
	}
	p.WaitQEMUGone(t, src, name, 2*time.Minute)
	for _, h := range p.Hosts {
		if pid := p.QEMUOf(t, h.Name, name); (pid != 0) != (h.Name == dst) {
			t.Errorf("QEMU of %s on %s: pid %d (it runs on %s)", name, h.Name, pid, dst)
		}
	}
	StopPollOnce(t, poll, g, "the migration")
	if st := p.GuestStatus(t, g); st.BootID != g.BootID {
		t.Fatalf("boot id %s after the migration, was %s", st.BootID, g.BootID)
	}
	for _, h := range []string{src, dst} {
		if l := qemuListeners(ctx, t, p, h); l != "" {
			t.Errorf("QEMU still listens on %s after the migration:\n%s", h, l)
		}
	}

	// Exactly once: one operation, one migration started, one switch-over.
	ops, err := c.Operations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, o := range ops {
		if o.Kind == "migrate" && o.Target == name {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d migrate operations of %s, want 1", n, name)
	}
	for msg, want := range map[string]int{"migration started": 1, "migration switched over": 1} {
		if got := countLogLines(t, p, msg, "vm="+name+" "); got != want {
			t.Errorf("%d log lines %q of %s across the hosts, want %d", got, msg, name, want)
		}
	}

	p.Restart(t, master)
	restarted = true
	for pid, cmd := range survivors {
		if now := p.QEMUs(t, master)[pid]; now != cmd {
			t.Errorf("QEMU %d on %s (%s) did not survive its serve's kill", pid, master, cmd)
		}
	}

	// The record is gone once the source is cleaned: a migration back is
	// accepted (409 while the record exists) and succeeds.
	deadline := time.Now().Add(time.Minute)
	for {
		op, err = c.Migrate(ctx, name, v1.MigrateArgs{To: src}, 0)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "being migrated already") || time.Now().After(deadline) {
			t.Fatalf("migrate %s back to %s: %v", name, src, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if op, err = c.Wait(ctx, op, nil); err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("migrate %s back to %s: %s %+v (%v)", name, src, op.State, op.Error, err)
	}
	p.WaitVM(t, src, name, src, 2*time.Minute, v1.StateRunning)
	if st := p.GuestStatus(t, g); st.BootID != g.BootID {
		t.Fatalf("boot id %s after the migration back, was %s", st.BootID, g.BootID)
	}
	// One election in all that (the successor's): leadership did not flap
	// while the killed host restarted and rejoined its etcd.
	if n := countLogLines(t, p, "elected pool master"); n != elections+1 {
		t.Errorf("%d elections since the kill, want 1", n-elections)
	}
	if m := waitMaster(ctx, t, p, master, ""); m != next {
		t.Errorf("pool master %s at the end, %s was elected after the kill", m, next)
	}
}

var mkRuns int // runs of the master-kill tests in this process

// joinedPool is the shared pool when its hosts are one pool (else the
// test is skipped).
func joinedPool(t *testing.T) *Pool {
	t.Helper()
	p := sharedPool(t)
	if !p.Joined {
		t.Skip("the hosts are not one pool (serve has no --join)")
	}
	return p
}

// waitMaster waits until host ask's API names a pool master other than
// not and returns it.
func waitMaster(ctx context.Context, t *testing.T, p *Pool, ask, not string) string {
	t.Helper()
	c := p.API(t, ask)
	deadline := time.Now().Add(2 * time.Minute)
	var last string
	for {
		info, err := c.PoolInfo(ctx)
		if err == nil && info.Master != "" && info.Master != not {
			return info.Master
		}
		if err == nil {
			last = info.Master
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pool master other than %q after 2 minutes (last %q, err %v)", not, last, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// qemuListeners are the TCP sockets QEMU processes listen on in host's
// namespace (ss lines): the incoming migration and NBD exports are the
// only ones a QEMU of Hangar opens.
func qemuListeners(ctx context.Context, t *testing.T, p *Pool, host string) string {
	t.Helper()
	out, err := p.Host(t, host).Exec(ctx, "ss", "-Hltnp")
	if err != nil {
		t.Fatalf("ss on %s: %v: %s", host, err, out)
	}
	var l []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "qemu") {
			l = append(l, line)
		}
	}
	return strings.Join(l, "\n")
}

// countLogLines counts the lines of every host's serve log that hold all
// of parts.
func countLogLines(t *testing.T, p *Pool, parts ...string) int {
	t.Helper()
	n := 0
	for _, h := range p.Hosts {
		b, err := os.ReadFile(h.ServeLog)
		if err != nil {
			t.Fatal(err)
		}
	line:
		for _, line := range strings.Split(string(b), "\n") {
			for _, s := range parts {
				if !strings.Contains(line, s) {
					continue line
				}
			}
			n++
		}
	}
	return n
}

func migrationFigures(m v1.MigrationProgress) string {
	return fmt.Sprintf(" ram %d MiB sent, %d MiB left of %d MiB", m.RAMTransferred>>20, m.RAMRemaining>>20, m.RAMTotal>>20)
}

// TestMasterSourceKilledDuringMigration: the pool master is the source of
// the migration, and its serve (master and source agent at once) is killed
// while RAM moves at full speed, so the source QEMU (which survives) may
// finish its part while no agent watches it. Whatever the next master
// decides (switch over from the records, or abort because the source host
// is not alive), once the killed host is back the VM runs exactly once:
// one QEMU, running, on the host its spec names, with the same boot id,
// answering; the operation ended once and no QEMU listener is left.
func TestMasterSourceKilledDuringMigration(t *testing.T) {
	p := joinedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()
	src := waitMaster(ctx, t, p, "h1", "")
	dst := p.Hosts[0].Name
	if dst == src {
		dst = p.Hosts[1].Name
	}
	mkRuns++
	name := fmt.Sprintf("mk%d", mkRuns)
	t.Logf("master %s is the source; migrating %s to %s", src, name, dst)
	vol := sharedVolume(ctx, t, p, "mkill", name+".qcow2")
	g := p.BootGuest(t, src, name, func(s *v1.VMSpec) { s.Disks = []v1.Disk{{Volume: vol}} })
	poll := p.Poll(t, g)
	time.Sleep(time.Second)
	c := p.API(t, dst)
	op, err := c.Migrate(ctx, name, v1.MigrateArgs{To: dst}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if op, err = c.Operation(ctx, op.ID, 0); err != nil {
			t.Fatal(err)
		}
		if m := op.Progress.Migration; (m != nil && m.RAMTransferred > 0) || op.Done() {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	sp := p.Host(t, src).ServeProc()
	if err := sp.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-sp.Done()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			p.Restart(t, src)
		}
	})
	next := waitMaster(ctx, t, p, dst, src)
	t.Logf("%s elected pool master after %s was killed", next, src)
	op, _ = c.Wait(ctx, op, nil)
	t.Logf("migration ended %s %+v", op.State, op.Error)
	p.Restart(t, src)
	restarted = true
	v := p.WaitVM(t, dst, name, "", 2*time.Minute, v1.StateRunning)
	on := v.Spec.Host
	want := dst
	if op.State != v1.OpSucceeded {
		want = src
	}
	if on != want || v.Status.Host != want {
		t.Fatalf("operation %s, vm on %s (status %s), want %s", op.State, on, v.Status.Host, want)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n := 0
		for _, h := range p.Hosts {
			if pid := p.QEMUOf(t, h.Name, name); pid != 0 {
				n++
				if h.Name != on {
					if time.Now().After(deadline) {
						t.Fatalf("QEMU %d of %s on %s, it runs on %s", pid, name, h.Name, on)
					}
				}
			}
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d QEMUs of %s", n, name)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st := p.GuestStatus(t, g); st.BootID != g.BootID {
		t.Fatalf("boot id %s after the migration, was %s", st.BootID, g.BootID)
	}
	StopPollOnce(t, poll, g, "the migration")
	for _, h := range []string{src, dst} {
		if l := qemuListeners(ctx, t, p, h); l != "" {
			t.Errorf("QEMU still listens on %s after the migration:\n%s", h, l)
		}
	}
}
