package blockops

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// progressLog records progress reports and checks they stay in 0..1 and
// never go backwards.
type progressLog struct {
	t    *testing.T
	mu   sync.Mutex
	vals []float64
}

func (p *progressLog) report(v float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v < 0 || v > 1 {
		p.t.Errorf("progress %v out of 0..1", v)
	}
	if n := len(p.vals); n > 0 && v < p.vals[n-1] {
		p.t.Errorf("progress went back from %v to %v", p.vals[n-1], v)
	}
	p.vals = append(p.vals, v)
}

func (p *progressLog) check(what string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.vals) == 0 || p.vals[len(p.vals)-1] != 1 {
		p.t.Errorf("%s progress %v: does not end at 1", what, p.vals)
	}
	p.t.Logf("%s: %d progress reports", what, len(p.vals))
}

func notOpen(t *testing.T, pid int, path string) {
	t.Helper()
	if slices.Contains(openFiles(t, pid), path) {
		t.Errorf("qemu still has %s open", path)
	}
}

// TestSnapshotCommit: a snapshot freezes the old top, guest writes go to
// the overlay; an active commit merges them back while the guest runs, and
// after a restart on the old top the data is there.
func TestSnapshotCommit(t *testing.T) {
	img := needGuest(t)
	ctx := testCtx(t, 6*time.Minute)
	dir := t.TempDir()
	base := newOverlay(t, img, filepath.Join(dir, "disk0.qcow2"))
	v := newVM(t, "snapvm", base)
	v.boot(ctx)
	v.mark(ctx, "before")
	mon := v.inst.Mon
	d0 := v.disk(0)
	chain0, err := Chain(ctx, mon, d0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{base, img}; !slices.Equal(chain0, want) {
		t.Fatalf("chain before = %q, want %q", chain0, want)
	}

	overlay := filepath.Join(dir, "disk0-s1.qcow2")
	start := time.Now()
	tops, err := Snapshot(ctx, mon, []Disk{d0}, map[string]string{"disk0": overlay})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot of 1 disk: %v", time.Since(start).Round(time.Microsecond))
	want := Disk{Name: "disk0", Node: "drive-disk0-s1", Path: overlay, Format: "qcow2"}
	if len(tops) != 1 || tops[0] != want {
		t.Fatalf("tops = %+v, want %+v", tops, want)
	}
	top := tops[0]
	if chain, err := Chain(ctx, mon, top); err != nil || !slices.Equal(chain, []string{overlay, base, img}) {
		t.Fatalf("chain after snapshot = %q, %v", chain, err)
	}
	if ii := info(t, overlay, true); ii.BackingFilename != base || ii.BackingFilenameFormat != "qcow2" || ii.VirtualSize != 128<<20 {
		t.Errorf("overlay info = %+v, want backed by %s (qcow2), 128 MiB", ii, base)
	}

	// The guest keeps writing (marker, disk counter every second, a big
	// file): the base does not change any more.
	sumBase := sha(t, base)
	v.mark(ctx, "after")
	const fillMiB = 32
	fillStart := time.Now()
	got := v.shell(ctx, "FILL-2", "dd if=/dev/urandom of=/data/fill bs=1M count="+strconv.Itoa(fillMiB)+
		" 2>/dev/null; sync; echo FILL-$((1+1))=$(stat -c %s /data/fill)")
	if got != strconv.Itoa(fillMiB<<20) {
		t.Fatalf("guest fill: size %q", got)
	}
	t.Logf("guest wrote %d MiB in %v", fillMiB, time.Since(fillStart).Round(time.Millisecond))
	dc, _ := v.counter(ctx, "disk_counter")
	waitFor(ctx, t, "disk counter to advance", func() bool { n, _ := v.counter(ctx, "disk_counter"); return n > dc })
	if s := sha(t, base); s != sumBase {
		t.Errorf("base changed after the snapshot: %s → %s", sumBase, s)
	}
	ovSize := info(t, overlay, true).ActualSize
	if ovSize < fillMiB<<20 {
		t.Errorf("overlay holds %d bytes, want ≥ %d MiB of guest writes", ovSize, fillMiB)
	}

	prog := &progressLog{t: t}
	start = time.Now()
	newTop, err := Commit(ctx, mon, top, prog.report)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("commit of %.1f MiB overlay: %v", float64(ovSize)/(1<<20), time.Since(start).Round(time.Millisecond))
	prog.check("commit")
	if newTop != d0 {
		t.Errorf("top after commit = %+v, want %+v", newTop, d0)
	}
	if chain, err := Chain(ctx, mon, newTop); err != nil || !slices.Equal(chain, chain0) {
		t.Errorf("chain after commit = %q, %v; want %q", chain, err, chain0)
	}
	if _, err := Chain(ctx, mon, top); err == nil {
		t.Errorf("old top node %s still exists", top.Node)
	}
	if m := v.status(ctx)["marker"]; m != "after" {
		t.Errorf("marker after commit = %q, want after", m)
	}
	notOpen(t, v.inst.PID, overlay)
	if err := os.Remove(overlay); err != nil {
		t.Fatal(err)
	}
	v.mark(ctx, "after-commit") // the guest writes to the base now

	// A fresh QEMU on the base sees everything.
	v.quit(ctx)
	v.boot(ctx)
	st := v.status(ctx)
	if st["marker"] != "after-commit" {
		t.Errorf("marker after restart = %q, want after-commit", st["marker"])
	}
	if got := v.shell(ctx, "FILLSZ-2", "echo FILLSZ-$((1+1))=$(stat -c %s /data/fill)"); got != strconv.Itoa(fillMiB<<20) {
		t.Errorf("big file after restart: size %q", got)
	}
}

// TestCommitIntoAutoNamedBase commits the disk's original top (from argv,
// with its own "file-disk0" node) into a backing image QEMU opened from the
// header: the new top carries QEMU's automatic name and both old nodes go.
func TestCommitIntoAutoNamedBase(t *testing.T) {
	img := needGuest(t)
	ctx := testCtx(t, 3*time.Minute)
	dir := t.TempDir()
	mid := newOverlay(t, img, filepath.Join(dir, "mid.qcow2"))
	top := newOverlay(t, mid, filepath.Join(dir, "disk0.qcow2"))
	v := newVM(t, "autovm", top)
	v.start(ctx, "")
	mon := v.inst.Mon
	if err := mon.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	namesBefore := nodeNames(ctx, t, v)
	slices.Sort(namesBefore)

	// Cancelled at its first progress report: the top stays active.
	cctx, cancel := context.WithCancel(ctx)
	var once sync.Once
	_, err := Commit(cctx, mon, v.disk(0), func(float64) { once.Do(cancel) })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled commit: err = %v, want context canceled", err)
	}
	if chain, err := Chain(ctx, mon, v.disk(0)); err != nil || !slices.Equal(chain, []string{top, mid, img}) {
		t.Errorf("chain after cancelled commit = %q, %v", chain, err)
	}
	names := nodeNames(ctx, t, v)
	slices.Sort(names)
	if !slices.Equal(names, namesBefore) {
		t.Errorf("nodes after cancelled commit %v, before %v", names, namesBefore)
	}
	if jobs, err := mon.QueryJobs(ctx); err != nil || len(jobs) != 0 {
		t.Errorf("jobs left: %+v, %v", jobs, err)
	}

	newTop, err := Commit(ctx, mon, v.disk(0), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(newTop.Node, "#block") || newTop.Path != mid || newTop.Format != "qcow2" {
		t.Errorf("new top = %+v, want an automatic node name on %s", newTop, mid)
	}
	if chain, err := Chain(ctx, mon, newTop); err != nil || !slices.Equal(chain, []string{mid, img}) {
		t.Errorf("chain = %q, %v", chain, err)
	}
	names = nodeNames(ctx, t, v)
	for _, n := range []string{"drive-disk0", "file-disk0"} {
		if slices.Contains(names, n) {
			t.Errorf("node %s left after commit: %v", n, names)
		}
	}
	notOpen(t, v.inst.PID, top)
	if _, err := Commit(ctx, mon, Disk{Name: "disk0", Node: "drive-disk0"}, nil); err == nil {
		t.Error("commit of a removed node accepted")
	}
}

// TestDiscardSnapshot: dropping an overlay (without RAM state) goes back
// to the disk as it was at the snapshot.
func TestDiscardSnapshot(t *testing.T) {
	img := needGuest(t)
	ctx := testCtx(t, 6*time.Minute)
	dir := t.TempDir()
	base := newOverlay(t, img, filepath.Join(dir, "disk0.qcow2"))
	v := newVM(t, "discvm", base)
	v.boot(ctx)
	v.mark(ctx, "kept")
	overlay := filepath.Join(dir, "disk0-s1.qcow2")
	if _, err := Snapshot(ctx, v.inst.Mon, []Disk{v.disk(0)}, map[string]string{"disk0": overlay}); err != nil {
		t.Fatal(err)
	}
	v.mark(ctx, "gone")
	if m := v.status(ctx)["marker"]; m != "gone" {
		t.Fatalf("marker = %q", m)
	}
	if info(t, overlay, true).ActualSize == 0 {
		t.Fatal("overlay empty")
	}
	v.quit(ctx)
	if err := os.Remove(overlay); err != nil {
		t.Fatal(err)
	}
	v.boot(ctx)
	if m := v.status(ctx)["marker"]; m != "kept" {
		t.Errorf("marker after discarding the overlay = %q, want kept", m)
	}
}

// TestSaveLoadState: RAM state saved to a file and loaded into a new QEMU
// continues the same boot.
func TestSaveLoadState(t *testing.T) {
	img := needGuest(t)
	ctx := testCtx(t, 6*time.Minute)
	dir := t.TempDir()
	v := newVM(t, "statevm", newOverlay(t, img, filepath.Join(dir, "disk0.qcow2")))
	bootID, _ := v.boot(ctx)
	mon := v.inst.Mon
	// Let the counter get well away from 0.
	waitFor(ctx, t, "counter ≥ 30", func() bool { n, _ := v.counter(ctx, "counter"); return n >= 30 })
	before, st := v.counter(ctx, "counter")
	if st["boot_id"] != bootID {
		t.Fatalf("boot_id %q, serial said %q", st["boot_id"], bootID)
	}

	statePath := filepath.Join(dir, "state")
	f, err := os.Create(statePath)
	if err != nil {
		t.Fatal(err)
	}
	prog := &progressLog{t: t}
	start := time.Now()
	if err := SaveState(ctx, mon, f, prog.report); err != nil {
		t.Fatal(err)
	}
	saveTime := time.Since(start)
	f.Close()
	prog.check("save state")
	fi, err := os.Stat(statePath)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("save state (256 MiB guest): %.1f MiB in %v", float64(fi.Size())/(1<<20), saveTime.Round(time.Millisecond))
	if s, err := mon.QueryStatus(ctx); err != nil || s.Status != "postmigrate" || s.Running {
		t.Errorf("status after save = %+v, %v; want postmigrate", s, err)
	}
	var params struct {
		MaxBandwidth int64 `json:"max-bandwidth"`
	}
	if err := mon.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil || params.MaxBandwidth == unlimitedBandwidth {
		t.Errorf("max-bandwidth after save = %d, %v; want it restored", params.MaxBandwidth, err)
	}
	v.quit(ctx)

	// Same argv plus -incoming defer.
	v.start(ctx, "defer")
	mon = v.inst.Mon
	f, err = os.Open(statePath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start = time.Now()
	if err := LoadState(ctx, mon, f); err != nil {
		t.Fatal(err)
	}
	t.Logf("load state: %v", time.Since(start).Round(time.Millisecond))
	if s, err := mon.QueryStatus(ctx); err != nil || s.Status != "paused" || s.Running {
		t.Errorf("status after load = %+v, %v; want paused", s, err)
	}
	if err := mon.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	after, st := v.counter(ctx, "counter")
	t.Logf("counter %d before save, %d after load", before, after)
	if st["boot_id"] != bootID {
		t.Errorf("boot_id after load = %q, want %q (same boot)", st["boot_id"], bootID)
	}
	if after < before || after > before+200 {
		t.Errorf("counter after load = %d, want it to continue from %d", after, before)
	}
	// A second load into a QEMU not waiting for one is refused.
	if err := LoadState(ctx, mon, f); err == nil {
		t.Error("LoadState into a running VM accepted")
	}
}

// TestBackupClone: a backup of a running VM boots as a clone while the
// source keeps running.
func TestBackupClone(t *testing.T) {
	img := needGuest(t)
	ctx := testCtx(t, 6*time.Minute)
	dir := t.TempDir()
	src := newVM(t, "srcvm", newOverlay(t, img, filepath.Join(dir, "disk0.qcow2")))
	src.boot(ctx)
	mon := src.inst.Mon
	src.mark(ctx, "from-src")
	const fillMiB = 32
	if got := src.shell(ctx, "FILL-2", "dd if=/dev/urandom of=/data/fill bs=1M count="+strconv.Itoa(fillMiB)+
		" 2>/dev/null; sync; echo FILL-$((1+1))=$(md5sum </data/fill | cut -c1-32)"); len(got) != 32 {
		t.Fatalf("guest fill: md5 %q", got)
	}
	fillSum := src.shell(ctx, "SUM-2", "echo SUM-$((1+1))=$(md5sum </data/fill | cut -c1-32)")
	waitFor(ctx, t, "disk counter ≥ 2", func() bool { n, _ := src.counter(ctx, "disk_counter"); return n >= 2 })
	dcBefore, st := src.counter(ctx, "disk_counter")
	cBefore, _ := strconv.Atoi(st["counter"])
	nodesBefore := len(nodeNames(ctx, t, src))

	events, stopEvents := mon.Subscribe()
	target := filepath.Join(dir, "clone-disk0.qcow2")
	prog := &progressLog{t: t}
	start := time.Now()
	if err := Backup(ctx, mon, []Disk{src.disk(0)}, map[string]string{"disk0": target}, prog.report); err != nil {
		t.Fatal(err)
	}
	t.Logf("backup of a %d MiB disk (target holds %.1f MiB): %v", info(t, target, false).VirtualSize>>20,
		float64(info(t, target, false).ActualSize)/(1<<20), time.Since(start).Round(time.Millisecond))
	prog.check("backup")
	stopEvents()
	for ev := range events {
		if ev.Name == "STOP" || ev.Name == "RESUME" {
			t.Errorf("source got %s during the backup", ev.Name)
		}
	}
	if s, err := mon.QueryStatus(ctx); err != nil || !s.Running {
		t.Errorf("source status after backup = %+v, %v; want running", s, err)
	}
	waitFor(ctx, t, "source counter to advance", func() bool { n, _ := src.counter(ctx, "counter"); return n > cBefore })
	if n := len(nodeNames(ctx, t, src)); n != nodesBefore {
		t.Errorf("%d block nodes after backup, %d before", n, nodesBefore)
	}
	notOpen(t, src.inst.PID, target)
	// Without -U: qemu-img takes the image lock, so QEMU let go of it.
	ii := info(t, target, false)
	if ii.BackingFilename != "" || ii.Format != "qcow2" || ii.VirtualSize != 128<<20 {
		t.Errorf("target = %+v, want a standalone 128 MiB qcow2", ii)
	}
	if jobs, err := mon.QueryJobs(ctx); err != nil || len(jobs) != 0 {
		t.Errorf("jobs left: %+v, %v", jobs, err)
	}
	src.quit(ctx)

	clone := newVM(t, "clonevm", target)
	clone.boot(ctx)
	dc, st := clone.counter(ctx, "disk_counter")
	t.Logf("disk counter %d before backup, clone boots with %d", dcBefore, dc)
	if dc < dcBefore {
		t.Errorf("clone disk_counter = %d, want ≥ %d", dc, dcBefore)
	}
	if st["hostname"] != "clonevm" {
		t.Errorf("clone hostname = %q, want clonevm", st["hostname"])
	}
	if st["marker"] != "from-src" {
		t.Errorf("clone marker = %q, want from-src", st["marker"])
	}
	if got := clone.shell(ctx, "SUM-2", "echo SUM-$((1+1))=$(md5sum </data/fill | cut -c1-32)"); got != fillSum {
		t.Errorf("clone's copy of the %d MiB file: md5 %s, want %s", fillMiB, got, fillSum)
	}
}

// TestSaveStateCancel: a save that cannot finish is cancelled with ctx; the
// VM runs again and the bandwidth limit is restored.
func TestSaveStateCancel(t *testing.T) {
	img := needGuest(t)
	ctx := testCtx(t, 3*time.Minute)
	v := newVM(t, "scvm", newOverlay(t, img, filepath.Join(t.TempDir(), "disk0.qcow2")))
	v.start(ctx, "")
	mon := v.inst.Mon
	if err := mon.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	var before struct {
		MaxBandwidth int64 `json:"max-bandwidth"`
	}
	if err := mon.Execute(ctx, "query-migrate-parameters", nil, &before); err != nil {
		t.Fatal(err)
	}
	// A pipe nobody reads: the migration blocks once it is full. Cancelling
	// cannot interrupt a blocked write to a pipe (no shutdown on pipes), so
	// the reader end is closed a little later, as a dying reader would.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	go func() {
		<-sctx.Done()
		time.Sleep(300 * time.Millisecond)
		r.Close()
	}()
	err = SaveState(sctx, mon, w, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if s, err := mon.QueryStatus(ctx); err != nil || !s.Running {
		t.Errorf("status after cancelled save = %+v, %v; want running again", s, err)
	}
	var after struct {
		MaxBandwidth int64 `json:"max-bandwidth"`
	}
	if err := mon.Execute(ctx, "query-migrate-parameters", nil, &after); err != nil || after != before {
		t.Errorf("max-bandwidth %d after, %d before (%v)", after.MaxBandwidth, before.MaxBandwidth, err)
	}
	mi, err := queryMigrate(ctx, mon)
	t.Logf("migration after cancel: %+v, %v", mi, err)
}

// TestBackupCancel: a cancelled backup leaves no job, node or file.
func TestBackupCancel(t *testing.T) {
	img := needGuest(t)
	ctx := testCtx(t, 3*time.Minute)
	dir := t.TempDir()
	v := newVM(t, "bcvm", newOverlay(t, img, filepath.Join(dir, "disk0.qcow2")))
	v.start(ctx, "")
	mon := v.inst.Mon
	nodesBefore := len(nodeNames(ctx, t, v))
	target := filepath.Join(dir, "t.qcow2")
	// Cancel as soon as the job reports progress, i.e. while it runs.
	bctx, cancel := context.WithCancel(ctx)
	var once sync.Once
	err := Backup(bctx, mon, []Disk{v.disk(0)}, map[string]string{"disk0": target}, func(float64) {
		once.Do(cancel)
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context canceled", err)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target left behind: %v", err)
	}
	if n := len(nodeNames(ctx, t, v)); n != nodesBefore {
		t.Errorf("%d block nodes after cancelled backup, %d before", n, nodesBefore)
	}
	if jobs, err := mon.QueryJobs(ctx); err != nil || len(jobs) != 0 {
		t.Errorf("jobs left: %+v, %v", jobs, err)
	}
}

// TestBlockResize grows a running VM's disk; the guest sees the new size.
func TestBlockResize(t *testing.T) {
	img := needGuest(t)
	ctx := testCtx(t, 6*time.Minute)
	dir := t.TempDir()
	disk := newOverlay(t, img, filepath.Join(dir, "disk0.qcow2"))
	v := newVM(t, "resizevm", disk)
	v.boot(ctx)
	const newSize = 192 << 20
	if err := BlockResize(ctx, v.inst.Mon, v.disk(0), newSize); err != nil {
		t.Fatal(err)
	}
	if got := info(t, disk, true).VirtualSize; got != newSize {
		t.Errorf("virtual size = %d, want %d", got, newSize)
	}
	if got := v.shell(ctx, "VDASIZE-2", "echo VDASIZE-$((1+1))=$(cat /sys/block/vda/size)"); got != strconv.Itoa(newSize/512) {
		t.Errorf("guest sees %s sectors, want %d", got, newSize/512)
	}
	if err := BlockResize(ctx, v.inst.Mon, v.disk(0), 64<<20); err == nil {
		t.Error("shrinking accepted")
	}
	if got := info(t, disk, true).VirtualSize; got != newSize {
		t.Errorf("virtual size after refused shrink = %d", got)
	}
}

// TestSnapshotFailure: a snapshot that fails leaves the VM on its old tops
// with no extra nodes or files, whether it fails creating a file or in the
// transaction.
func TestSnapshotFailure(t *testing.T) {
	img := needGuest(t)
	ctx := testCtx(t, 6*time.Minute)
	dir := t.TempDir()
	data := filepath.Join(dir, "disk1.qcow2")
	if err := createImage(ctx, "-f", "qcow2", data, "16M"); err != nil {
		t.Fatal(err)
	}
	v := newVM(t, "failvm", newOverlay(t, img, filepath.Join(dir, "disk0.qcow2")), data)
	v.boot(ctx)
	mon := v.inst.Mon
	d0, d1 := v.disk(0), v.disk(1)
	chains := func() [][]string {
		var out [][]string
		for _, d := range []Disk{d0, d1} {
			c, err := Chain(ctx, mon, d)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, c)
		}
		return out
	}
	chainsBefore := chains()
	names := nodeNames(ctx, t, v)
	slices.Sort(names)

	check := func(what string, err error, files ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: no error", what)
		}
		t.Logf("%s: %v", what, err)
		got := nodeNames(ctx, t, v)
		slices.Sort(got)
		if !slices.Equal(got, names) {
			t.Errorf("%s: nodes %v, before %v", what, got, names)
		}
		if c := chains(); !slices.EqualFunc(c, chainsBefore, slices.Equal) {
			t.Errorf("%s: chains %q, before %q", what, c, chainsBefore)
		}
		for _, f := range files {
			if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: %s left behind (%v)", what, f, err)
			}
		}
		v.mark(ctx, strings.ReplaceAll(what, " ", "-"))
		if m := v.status(ctx)["marker"]; m != strings.ReplaceAll(what, " ", "-") {
			t.Errorf("%s: marker %q", what, m)
		}
	}

	missing := filepath.Join(dir, "no-such-dir", "s1.qcow2")
	_, err := Snapshot(ctx, mon, []Disk{d0}, map[string]string{"disk0": missing})
	check("missing dir", err)

	// The first overlay is made and added before the second fails.
	ov0 := filepath.Join(dir, "disk0-s1.qcow2")
	_, err = Snapshot(ctx, mon, []Disk{d0, d1}, map[string]string{"disk0": ov0, "disk1": missing})
	check("second disk missing dir", err, ov0)

	// Both overlays are added; the transaction fails on its second action
	// (a node that is no top: disk0's backing image, as a stale record of a
	// top would be), so the first action is undone too.
	ovA, ovB := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	nodes, err := queryNodes(ctx, mon)
	if err != nil {
		t.Fatal(err)
	}
	below, err := backingNode(nodes, nodes[d0.Node])
	if err != nil {
		t.Fatal(err)
	}
	stale := Disk{Name: "disk1", Node: below.NodeName}
	_, err = Snapshot(ctx, mon, []Disk{d0, stale}, map[string]string{"disk0": ovA, "disk1": ovB})
	if err == nil || !strings.Contains(err.Error(), "qmp transaction") {
		t.Errorf("stale top: err = %v, want a transaction error", err)
	}
	check("stale top", err, ovA, ovB)

	// Existing overlay file: refused, not overwritten.
	if err := os.WriteFile(ovA, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Snapshot(ctx, mon, []Disk{d0}, map[string]string{"disk0": ovA})
	check("existing file", err)
	if b, _ := os.ReadFile(ovA); string(b) != "mine" {
		t.Errorf("existing file overwritten: %q", b)
	}
}

func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
