package integration

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	v1 "hangar/api/v1"
	"hangar/internal/serial"
)

// loopFS is a small ext4 file system on a loop device, mounted at dir; it is
// unmounted and detached when the test ends, on every path.
type loopFS struct {
	t   *testing.T
	dir string
}

func newLoopFS(t *testing.T, mib int64) *loopFS {
	t.Helper()
	for _, tool := range []string{"losetup", "mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: cannot make a small file system", tool)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("a loop mount needs root")
	}
	base := t.TempDir()
	img, dir := filepath.Join(base, "fs.img"), filepath.Join(base, "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err == nil {
		err = f.Truncate(mib << 20)
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	// -m 0: no blocks reserved for root, so the agent (root) and QEMU (its
	// own uid) see the same free space.
	run("mkfs.ext4", "-q", "-F", "-m", "0", img)
	dev := run("losetup", "--find", "--show", img)
	t.Cleanup(func() {
		if err := exec.Command("umount", dir).Run(); err != nil {
			_ = exec.Command("umount", "-l", dir).Run()
		}
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	run("mount", "-t", "ext4", dev, dir)
	return &loopFS{t: t, dir: dir}
}

func (l *loopFS) free() int64 {
	var fs unix.Statfs_t
	if err := unix.Statfs(l.dir, &fs); err != nil {
		l.t.Fatal(err)
	}
	return int64(fs.Bavail) * fs.Bsize
}

// fill takes all but leave bytes of the file system with a filler file.
func (l *loopFS) fill(leave int64) string {
	l.t.Helper()
	p := filepath.Join(l.dir, "filler")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		l.t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	size := st.Size() + l.free() - leave
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		l.t.Fatalf("fallocate %s %d: %v", p, size, err)
	}
	return p
}

// typeLine types cmd once on the VM's serial console (the guest's shell).
func (s *server) typeLine(name, cmd string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := s.c.Console(ctx, name)
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		s.t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the proxy pass it on before closing
}

// lastMatch is the last submatch of re in the VM's serial log after offset
// ("" for none).
func (s *server) lastMatch(name string, offset int64, re *regexp.Regexp) string {
	b, _ := os.ReadFile(s.serialLog(name))
	if int64(len(b)) < offset {
		return ""
	}
	m := re.FindAllStringSubmatch(string(b[offset:]), -1)
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1][1]
}

func diskIOError(v v1.VM, disk string) v1.DiskIOError {
	for _, e := range v.Status.IOErrors {
		if e.Disk == disk {
			return e
		}
	}
	return v1.DiskIOError{}
}

// guestWrites is a shell loop for the guest: it writes MiB from..to-1 of
// its second disk (/dev/vdb) one at a time with O_DIRECT, printing W-<n>
// after each, IOERR-<n> when a write fails, and DONE-<n> at the end.
func guestWrites(from, to int) string {
	return "i=" + strconv.Itoa(from) + "; while [ $i -lt " + strconv.Itoa(to) + " ]; do " +
		"dd if=/dev/zero of=/dev/vdb bs=1M count=1 seek=$i oflag=direct conv=notrunc 2>/dev/null || { echo IOERR-$i; break; }; " +
		"i=$((i+1)); echo W-$i; done; echo DONE-$i"
}

var (
	reWrote = regexp.MustCompile(`W-(\d+)`)
	reDone  = regexp.MustCompile(`DONE-(\d+)`)
	reIOErr = regexp.MustCompile(`IOERR-(\d+)`)
)

// TestIOErrorPolicy: a real storage error — ENOSPC on a small loop-mounted
// ext4 pool under a thin disk bigger than it. With the default policy
// (stop) the guest's writes pause the VM (state paused, reason naming
// io-error and the disk) and its own progress stops; a restart of hangar
// serve finds it paused and watches it again; a user's resume on the full
// pool pauses it again (a second pause); once the filler is deleted
// Hangar resumes the VM by itself and the guest finishes its writes without
// seeing an error. With report the guest sees the error and keeps running.
func TestIOErrorPolicy(t *testing.T) {
	fs := newLoopFS(t, 96) // before the server: unmounted after its VMs are gone
	s := newServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := s.c.AddPool(ctx, v1.StoragePool{Name: "small", Type: "dir", Path: fs.dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateVolume(ctx, "small", v1.VolumeCreateArgs{Name: "data.qcow2", Format: "qcow2", SizeMiB: 256}); err != nil {
		t.Fatal(err)
	}
	port := s.createGuest("ioe", func(sp *v1.VMSpec) {
		sp.Disks = append(sp.Disks, v1.Disk{Name: "data", Volume: "small/data.qcow2"})
	})
	boot, off := s.waitReady("ioe", 0)
	if v, err := s.c.VM(ctx, "ioe"); err != nil || v.Spec.IOErrorPolicy != v1.IOErrorStop {
		t.Fatalf("default policy: %+v %v", v.Spec, err)
	}
	s.consoleExpect("ioe", "echo SH-$((40+2))", regexp.MustCompile(`SH-42`))
	counterBefore := counter(t, mustGuestStatus(t, port), "counter")

	// 48 MiB to write, 16 MiB free: the pool fills on the way.
	filler := fs.fill(16 << 20)
	start := time.Now()
	s.typeLine("ioe", guestWrites(0, 48))
	v := s.waitState("ioe", time.Minute, v1.StatePaused)
	t.Logf("paused %s after the guest began writing (at MiB %s)", time.Since(start).Round(time.Millisecond), s.lastMatch("ioe", off, reWrote))
	if !strings.HasPrefix(v.Status.Reason, "io-error: disk data: write") || !strings.Contains(v.Status.Reason, "(no space)") {
		t.Fatalf("reason of the pause: %q", v.Status.Reason)
	}
	if e := diskIOError(v, "data"); e.Action != v1.IOErrorStop || !e.NoSpace || e.Pauses < 1 || e.Count < 1 || e.Operation != "write" {
		t.Fatalf("disk data's i/o error record: %+v", e)
	}
	if e := diskIOError(v, "disk0"); e.Count != 0 {
		t.Fatalf("disk0 has errors: %+v", e)
	}
	// The guest's own progress stops while it is paused.
	at := s.lastMatch("ioe", off, reWrote)
	time.Sleep(3 * time.Second)
	if now := s.lastMatch("ioe", off, reWrote); now != at || s.lastMatch("ioe", off, reDone) != "" || s.lastMatch("ioe", off, reIOErr) != "" {
		t.Fatalf("the guest went on while paused: wrote %s, then %s (done %q, error %q)", at, now,
			s.lastMatch("ioe", off, reDone), s.lastMatch("ioe", off, reIOErr))
	}
	// A user's resume retries the write: the pool is still full, so QEMU
	// pauses the VM again, a second pause.
	s.action("ioe", "resume", nil)
	deadline := time.Now().Add(30 * time.Second)
	for v, _ = s.c.VM(ctx, "ioe"); diskIOError(v, "data").Pauses < 2 || v.Status.State != v1.StatePaused; v, _ = s.c.VM(ctx, "ioe") {
		if time.Now().After(deadline) {
			t.Fatalf("after a user's resume on a full pool: %s %q %+v", v.Status.State, v.Status.Reason, diskIOError(v, "data"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n, ok := sample(scrape(t, s), "hangar_vm_io_error_pauses_total", map[string]string{"vm": "ioe", "disk": "data"}); !ok || n != 2 {
		t.Fatalf("hangar_vm_io_error_pauses_total{vm=ioe,disk=data} = %v (%v), want 2", n, ok)
	}

	// hangar serve restarts: it finds the VM paused on the error and
	// watches it again.
	s.stop()
	s.start()
	v = s.waitState("ioe", time.Minute, v1.StatePaused)
	if !strings.HasPrefix(v.Status.Reason, "io-error: disk data") {
		t.Fatalf("reason after the restart: %q", v.Status.Reason)
	}
	time.Sleep(2 * time.Second) // a few probes find the pool still full
	if v, _ = s.c.VM(ctx, "ioe"); v.Status.State != v1.StatePaused || s.lastMatch("ioe", off, reWrote) != at {
		t.Fatalf("resumed while the pool is full: %s, wrote %s", v.Status.State, s.lastMatch("ioe", off, reWrote))
	}

	// Room again: Hangar resumes the VM by itself, the guest finishes.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	v = s.waitState("ioe", 30*time.Second, v1.StateRunning)
	t.Logf("resumed %s after the filler was deleted", time.Since(start).Round(time.Millisecond))
	dctx, dcancel := context.WithTimeout(ctx, time.Minute)
	m, _, err := serial.WaitFor(dctx, s.serialLog("ioe"), off, reDone)
	dcancel()
	if err != nil || m[1] != "48" {
		b, _ := os.ReadFile(s.serialLog("ioe"))
		t.Fatalf("guest did not finish its writes (%v %v):\n%s", m, err, tail(string(b), 2000))
	}
	if e := s.lastMatch("ioe", off, reIOErr); e != "" {
		t.Fatalf("the guest saw an error at MiB %s", e)
	}
	st := mustGuestStatus(t, port)
	if st["boot_id"] != boot || counter(t, st, "counter") <= counterBefore {
		t.Fatalf("guest after the pause: %v (boot %s, counter before %d)", st, boot, counterBefore)
	}
	v, _ = s.c.VM(ctx, "ioe")
	e := diskIOError(v, "data")
	if v.Status.Reason != "" || e.Resumed == nil || e.Pauses != 2 {
		t.Fatalf("status after the resume: reason %q, data %+v", v.Status.Reason, e)
	}
	pauses, errs := e.Pauses, e.Count

	// report (set by PATCH, applied at the next start): the guest sees the
	// error and the VM keeps running.
	if v, err = s.c.PatchVM(ctx, "ioe", v1.VMPatch{Disks: map[string]v1.DiskPatch{"data": {IOErrorPolicy: ptr(v1.IOErrorReport)}}}); err != nil ||
		v.Spec.Disks[1].IOErrorPolicy != v1.IOErrorReport {
		t.Fatalf("patch: %+v %v", v.Spec.Disks, err)
	}
	s.action("ioe", "stop", nil)
	s.action("ioe", "start", nil)
	_, off = s.waitReady("ioe", off)
	s.consoleExpect("ioe", "echo SH-$((40+3))", regexp.MustCompile(`SH-43`))
	fs.fill(8 << 20)
	s.typeLine("ioe", guestWrites(48, 96))
	dctx, dcancel = context.WithTimeout(ctx, time.Minute)
	m, _, err = serial.WaitFor(dctx, s.serialLog("ioe"), off, reIOErr)
	dcancel()
	if err != nil {
		b, _ := os.ReadFile(s.serialLog("ioe"))
		t.Fatalf("the guest saw no error (%v):\n%s", err, tail(string(b), 2000))
	}
	t.Logf("guest saw the error at MiB %s", m[1])
	if st := mustGuestStatus(t, port); st["hostname"] != "ioe" {
		t.Fatalf("guest after the reported error: %v", st)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		v, err = s.c.VM(ctx, "ioe")
		if err != nil || v.Status.State != v1.StateRunning {
			t.Fatalf("vm after a reported error: %+v %v", v.Status, err)
		}
		e = diskIOError(v, "data")
		if e.Action == v1.IOErrorReport && e.Count > errs {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reported error is not recorded: %+v", e)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if e.Pauses != pauses || !e.NoSpace || v.Status.Reason != "" {
		t.Fatalf("a reported error paused the vm or was recorded wrong: %+v, reason %q", e, v.Status.Reason)
	}
}
