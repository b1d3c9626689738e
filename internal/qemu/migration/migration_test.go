package migration

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"hangar/internal/qemu/config"
)

// pair is a booted source with a local overlay disk and a fresh target
// listening for it.
type pair struct {
	src, tgt *testVM
	tls      hostTLS
	bootID   string
}

// bootSource boots the test guest on a qcow2 overlay of the guest image.
func bootSource(ctx context.Context, t *testing.T) (*testVM, string) {
	img := needGuest(t)
	disk := filepath.Join(t.TempDir(), "src.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", img, disk)
	src := newVM(t, disk)
	return src, src.boot(ctx)
}

// newTarget starts a target QEMU (-incoming defer) on an empty volume of
// the source disk's size (local disks), or on the source's own file
// (shared storage), and prepares it.
func newTarget(ctx context.Context, t *testing.T, src *testVM, h hostTLS, shared, insecure, multifd bool) (*testVM, Target) {
	t.Helper()
	disk := src.disk
	if !shared {
		disk = filepath.Join(t.TempDir(), "tgt.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", disk, "128M")
	}
	tgt := newVM(t, disk)
	tgt.start(ctx, "defer")
	tt := Target{IP: "127.0.0.1", Port: freePort(t), Multifd: multifd}
	if multifd {
		tt.MultifdChannels = 2
	}
	if !shared {
		tt.NBDPort = freePort(t)
		tt.Exports = []string{config.NodeName("disk0")}
	}
	if !insecure {
		tt.TLS = h.forVM(tgt, h.tgt)
	}
	if err := PrepareTarget(ctx, tgt.inst.Mon, tt); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(tgt.runDir, "tls")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the tls creds dir is still on disk after the object was created: %v", err)
	}
	return tgt, tt
}

func sourceFor(src *testVM, tt Target, h hostTLS) Source {
	s := Source{TargetHost: "h-tgt", IP: tt.IP, Port: tt.Port, NBDPort: tt.NBDPort, Multifd: tt.Multifd, MultifdChannels: tt.MultifdChannels}
	if tt.NBDPort != 0 {
		s.Disks = []Disk{{Node: config.NodeName("disk0"), Export: config.NodeName("disk0")}}
	}
	if tt.TLS != nil {
		s.TLS = h.forVM(src, h.src)
	}
	return s
}

// progressLog collects progress snapshots.
type progressLog struct {
	mu   sync.Mutex
	all  []Progress
	last Progress
}

func (l *progressLog) add(p Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, p)
	l.last = p
}

func (l *progressLog) maxThrottle() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := 0
	for _, p := range l.all {
		m = max(m, p.CPUThrottle)
	}
	return m
}

func (l *progressLog) phases() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := map[string]int{}
	for _, p := range l.all {
		m[p.Phase]++
	}
	return m
}

// TestMigrateLocalDiskTLS migrates a running guest with a local qcow2 disk
// over TLS (disk by NBD mirror, then RAM) and reads the guest on the
// target: same boot, counter not gone backwards, a file written before is
// there. A plaintext connection to the TLS-only migration port is refused
// and leaves the target able to take the real migration.
func TestMigrateLocalDiskTLS(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	src, bootID := bootSource(ctx, t)
	h := newHostTLS(t)
	src.mark(ctx, "before-migration")
	before := src.status(ctx)
	if before["boot_id"] != bootID {
		t.Fatalf("status boot_id %q, serial said %q", before["boot_id"], bootID)
	}
	tgt, tt := newTarget(ctx, t, src, h, false, false, false)

	// Plaintext on the migration port: QEMU wants a TLS handshake.
	c, err := net.DialTimeout("tcp", net.JoinHostPort(tt.IP, strconv.Itoa(tt.Port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write([]byte("QEVM\x00\x00\x00\x03" + string(make([]byte, 512)))) // a plaintext migration stream's header
	n, rerr := c.Read(make([]byte, 64))
	c.Close()
	if rerr == nil || errors.Is(rerr, os.ErrDeadlineExceeded) {
		t.Fatalf("plaintext client on the migration port: read %d bytes, err %v; want the connection closed", n, rerr)
	}
	t.Logf("plaintext migration connection refused: %v", rerr)
	if ts, err := QueryTarget(ctx, tgt.inst.Mon); err != nil || ts.RunState != "inmigrate" {
		t.Fatalf("target after the plaintext attempt: %+v %v", ts, err)
	}

	s := sourceFor(src, tt, h)
	var pl progressLog
	s.Progress = pl.add
	s.DowntimeLimit = 300 * time.Millisecond
	s.AutoConverge = true
	s.Watchdog = Watchdog{Timeout: 60 * time.Second, Max: 3 * time.Minute}
	res, err := Migrate(ctx, src.inst.Mon, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitIncoming(ctx, tgt.inst.Mon); err != nil {
		t.Fatal(err)
	}
	if err := Resume(ctx, tgt.inst.Mon); err != nil {
		t.Fatal(err)
	}
	t.Logf("migrated: downtime %v, ram phase %v, whole %v, ram %d bytes, disk %d bytes; progress phases %v",
		res.Downtime, res.Total, res.Elapsed, res.RAMTransferred, res.DiskTransferred, pl.phases())
	if res.DiskTransferred <= 0 || pl.phases()[PhaseMirror] == 0 || pl.phases()[PhaseRAM] == 0 {
		t.Errorf("progress did not report both phases: %v, disk %d", pl.phases(), res.DiskTransferred)
	}
	if st, err := src.inst.Mon.QueryStatus(ctx); err != nil || st.Status != "postmigrate" {
		t.Errorf("source after migration: %+v %v, want postmigrate", st, err)
	}
	if jobs, err := src.inst.Mon.QueryJobs(ctx); err != nil || len(jobs) != 0 {
		t.Errorf("source jobs after migration: %+v %v", jobs, err)
	}
	after := tgt.status(ctx)
	if after["boot_id"] != bootID {
		t.Errorf("boot id on the target %q, before %q: the guest rebooted", after["boot_id"], bootID)
	}
	if num(t, after, "counter") < num(t, before, "counter") {
		t.Errorf("counter went backwards: %s before, %s after", before["counter"], after["counter"])
	}
	if after["marker"] != "before-migration" {
		t.Errorf("marker on the target disk %q, want before-migration", after["marker"])
	}
	// The guest keeps writing its disk on the target, and it survives.
	tgt.mark(ctx, "after-migration")
	if got := tgt.status(ctx)["marker"]; got != "after-migration" {
		t.Errorf("marker after a write on the target: %q", got)
	}
	// Stopping the source now must not matter to the target.
	src.inst.Kill(ctx)
	time.Sleep(1500 * time.Millisecond)
	if st := tgt.status(ctx); st["boot_id"] != bootID || num(t, st, "disk_counter") < num(t, after, "disk_counter") {
		t.Errorf("target after the source went away: %v", st)
	}
}

// TestMigrateAbortThenAutoConverge: a guest dirtying memory faster than a
// throttled stream is aborted by the watchdog, the source keeps running
// untouched (same boot, counter going on, disk intact, no jobs or NBD
// nodes left); then a second target takes the same guest with
// auto-converge.
func TestMigrateAbortThenAutoConverge(t *testing.T) {
	ctx := testCtx(t, 6*time.Minute)
	src, bootID := bootSource(ctx, t)
	h := newHostTLS(t)
	src.mark(ctx, "kept")
	// Dirty memory: rewrite 12 MiB of random data in tmpfs, forever.
	src.shell(ctx, "(while [ ! -e /tmp/stopdirty ]; do dd if=/dev/urandom of=/tmp/dirty bs=64k count=192 2>/dev/null; done) & echo DIRTY$((6*7))", "DIRTY42")
	before := src.status(ctx)

	tgt, tt := newTarget(ctx, t, src, h, false, false, false)
	s := sourceFor(src, tt, h)
	var pl progressLog
	s.Progress = pl.add
	s.MaxBandwidth = 1 << 20
	s.Watchdog = Watchdog{Timeout: 3 * time.Second, Max: 20 * time.Second}
	start := time.Now()
	_, err := Migrate(ctx, src.inst.Mon, s)
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("migrate with 1 MiB/s under a dirtying guest: %v, want an abort", err)
	}
	t.Logf("aborted after %v: %v (last progress %+v)", time.Since(start).Round(time.Millisecond), err, pl.last)
	if st, err := src.inst.Mon.QueryStatus(ctx); err != nil || st.Status != "running" {
		t.Fatalf("source after abort: %+v %v", st, err)
	}
	if jobs, err := src.inst.Mon.QueryJobs(ctx); err != nil || len(jobs) != 0 {
		t.Errorf("jobs left on the source: %+v %v", jobs, err)
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
	}
	if err := src.inst.Mon.Execute(ctx, "query-named-block-nodes", nil, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Drv == "nbd" {
			t.Errorf("nbd node %s left on the source", n.NodeName)
		}
	}
	st := src.status(ctx)
	if st["boot_id"] != bootID || num(t, st, "counter") <= num(t, before, "counter") || st["marker"] != "kept" {
		t.Fatalf("source guest after abort: %v (before %v)", st, before)
	}
	src.mark(ctx, "after-abort")
	// The caller kills the aborted target.
	tgt.inst.Kill(ctx)

	tgt2, tt2 := newTarget(ctx, t, src, h, false, false, false)
	s2 := sourceFor(src, tt2, h)
	var pl2 progressLog
	s2.Progress = pl2.add
	s2.MaxBandwidth = 8 << 20
	s2.AutoConverge = true
	s2.DowntimeLimit = 300 * time.Millisecond
	s2.Watchdog = Watchdog{Timeout: 90 * time.Second, Max: 4 * time.Minute}
	res, err := Migrate(ctx, src.inst.Mon, s2)
	if err != nil {
		t.Fatalf("migrate with auto-converge: %v (last progress %+v)", err, pl2.last)
	}
	if err := WaitIncoming(ctx, tgt2.inst.Mon); err != nil {
		t.Fatal(err)
	}
	if err := Resume(ctx, tgt2.inst.Mon); err != nil {
		t.Fatal(err)
	}
	t.Logf("auto-converge: downtime %v, ram phase %v, max throttle %d%%", res.Downtime, res.Total, pl2.maxThrottle())
	// The guest stops dirtying memory, so that it answers promptly under TCG.
	tgt2.shell(ctx, "touch /tmp/stopdirty; echo STOPPED$((1+1))", "STOPPED2")
	if pl2.maxThrottle() == 0 {
		t.Errorf("auto-converge never throttled the guest dirtying memory at 8 MiB/s")
	}
	after := tgt2.status(ctx)
	if after["boot_id"] != bootID || after["marker"] != "after-abort" || num(t, after, "counter") < num(t, st, "counter") {
		t.Errorf("guest on the second target: %v", after)
	}
}

// TestMigrateShared migrates RAM only (the disk on storage both ends
// open: here the same file): without TLS, as --insecure asks, and over TLS
// with multifd (QEMU 7.2 runs multifd channels under TLS).
func TestMigrateShared(t *testing.T) {
	for _, tc := range []struct {
		name     string
		insecure bool
		multifd  bool
	}{{"insecure", true, false}, {"tls-multifd", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t, 3*time.Minute)
			src, bootID := bootSource(ctx, t)
			h := newHostTLS(t)
			tgt, tt := newTarget(ctx, t, src, h, true, tc.insecure, tc.multifd)
			s := sourceFor(src, tt, h)
			res, err := Migrate(ctx, src.inst.Mon, s)
			if err != nil {
				t.Fatal(err)
			}
			if err := WaitIncoming(ctx, tgt.inst.Mon); err != nil {
				t.Fatal(err)
			}
			if err := Resume(ctx, tgt.inst.Mon); err != nil {
				t.Fatal(err)
			}
			t.Logf("shared %s: downtime %v, total %v", tc.name, res.Downtime, res.Total)
			if got := tgt.status(ctx)["boot_id"]; got != bootID {
				t.Errorf("boot id after %q, before %q", got, bootID)
			}
			// A second hop: the VM that arrived by migration leaves again
			// (QEMU 7.2's query-migrate then says "completed" from the
			// incoming side; Migrate must not believe it).
			src.inst.Kill(ctx)
			tgt2, tt2 := newTarget(ctx, t, tgt, h, true, tc.insecure, tc.multifd)
			s2 := sourceFor(tgt, tt2, h)
			if _, err := Migrate(ctx, tgt.inst.Mon, s2); err != nil {
				t.Fatal(err)
			}
			if st, err := tgt.inst.Mon.QueryStatus(ctx); err != nil || st.Status != "postmigrate" {
				t.Fatalf("second hop: Migrate returned with the source %+v %v, want postmigrate", st, err)
			}
			if err := WaitIncoming(ctx, tgt2.inst.Mon); err != nil {
				t.Fatal(err)
			}
			if err := Resume(ctx, tgt2.inst.Mon); err != nil {
				t.Fatal(err)
			}
			if got := tgt2.status(ctx)["boot_id"]; got != bootID {
				t.Errorf("boot id after the second hop %q, before %q", got, bootID)
			}
		})
	}
}

// TestRecover: the agent driving a migration dies (here: its Migrate call
// hangs in the progress callback) while QEMU goes on. Recover, run by the
// restarted agent, finishes a migration that completed meanwhile (mirrors
// completed, NBD nodes gone, the target gets a consistent disk) and rolls
// back one that did not (the source runs on, nothing left).
func TestRecover(t *testing.T) {
	ctx := testCtx(t, 5*time.Minute)
	src, bootID := bootSource(ctx, t)
	h := newHostTLS(t)
	src.mark(ctx, "before-recover")

	// 1. Not completed: a throttled stream, the driver dies in the RAM phase.
	tgt, tt := newTarget(ctx, t, src, h, false, false, false)
	s := sourceFor(src, tt, h)
	s.MaxBandwidth = 1 << 20
	dead := make(chan struct{})
	inRAM := make(chan struct{})
	var once sync.Once
	s.Progress = func(p Progress) {
		if p.Phase == PhaseRAM && p.RAMTransferred > 0 {
			once.Do(func() { close(inRAM) })
			<-dead // the agent is gone: this call never returns
		}
	}
	go Migrate(ctx, src.inst.Mon, s)
	select {
	case <-inRAM:
	case <-ctx.Done():
		t.Fatal("migration did not reach the RAM phase")
	}
	done, err := Recover(ctx, src.inst.Mon)
	if err != nil || done {
		t.Fatalf("recover an active migration: completed %v, %v; want rolled back", done, err)
	}
	assertClean(ctx, t, src, "running")
	if st := src.status(ctx); st["boot_id"] != bootID || st["marker"] != "before-recover" {
		t.Fatalf("source after the roll-back: %v", st)
	}
	tgt.inst.Kill(ctx)

	// 2. Completed while the driver was gone.
	tgt2, tt2 := newTarget(ctx, t, src, h, false, false, false)
	s2 := sourceFor(src, tt2, h)
	migrated := make(chan struct{})
	s2.Progress = func(p Progress) {
		if p.Phase == PhaseRAM {
			// Gone before the end; wait until QEMU completed on its own.
			for {
				if st, err := src.inst.Mon.QueryStatus(ctx); err != nil || st.Status == "postmigrate" {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			close(migrated)
			<-dead
		}
	}
	go Migrate(ctx, src.inst.Mon, s2)
	select {
	case <-migrated:
	case <-ctx.Done():
		t.Fatal("migration did not complete")
	}
	done, err = Recover(ctx, src.inst.Mon)
	if err != nil || !done {
		t.Fatalf("recover a completed migration: completed %v, %v", done, err)
	}
	assertClean(ctx, t, src, "postmigrate")
	if err := WaitIncoming(ctx, tgt2.inst.Mon); err != nil {
		t.Fatal(err)
	}
	if err := Resume(ctx, tgt2.inst.Mon); err != nil {
		t.Fatal(err)
	}
	if st := tgt2.status(ctx); st["boot_id"] != bootID || st["marker"] != "before-recover" {
		t.Fatalf("target after the recovered migration: %v", st)
	}
}

// assertClean: no mirror job, no NBD node, and the run state wanted.
func assertClean(ctx context.Context, t *testing.T, v *testVM, runState string) {
	t.Helper()
	if st, err := v.inst.Mon.QueryStatus(ctx); err != nil || st.Status != runState {
		t.Fatalf("source %+v %v, want %s", st, err, runState)
	}
	if jobs, err := v.inst.Mon.QueryJobs(ctx); err != nil || len(jobs) != 0 {
		t.Errorf("jobs left: %+v %v", jobs, err)
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
	}
	if err := v.inst.Mon.Execute(ctx, "query-named-block-nodes", nil, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Drv == "nbd" {
			t.Errorf("nbd node %s left", n.NodeName)
		}
	}
}
