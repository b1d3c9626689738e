package blockops

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/qemu"
	"hangar/internal/qemu/config"
	"hangar/internal/serial"
	"hangar/internal/serial/serialtest"
)

const qemuBinary = "/usr/bin/qemu-system-x86_64"

var (
	guestOnce  sync.Once
	guestImage string
	guestErr   error
)

// needGuest skips the test when QEMU is missing and returns the test
// guest image, building it once if needed.
func needGuest(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(qemuBinary); err != nil {
		t.Skipf("SKIPPED: %s not installed (apt-get install qemu-system-x86 qemu-utils): real-QEMU block operation tests NOT RUN: %v", qemuBinary, err)
	}
	if _, err := exec.LookPath(qemuImg); err != nil {
		t.Skipf("SKIPPED: qemu-img not installed (apt-get install qemu-utils): real-QEMU block operation tests NOT RUN: %v", err)
	}
	guestOnce.Do(func() {
		const cached = "/var/cache/hangar/guest/hangar-guest.qcow2"
		if _, err := os.Stat(cached); err == nil && os.Getenv("HANGAR_GUEST_DIR") == "" {
			guestImage = cached
			return
		}
		cmd := exec.Command("bash", "../../../guest/build.sh")
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			guestErr = fmt.Errorf("build test guest (guest/build.sh): %w", err)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		guestImage = lines[len(lines)-1]
	})
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guestImage
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// testVM is one VM spec whose QEMU the test starts (possibly several
// times, one at a time).
type testVM struct {
	t      *testing.T
	spec   v1.VMSpec
	disks  []config.DiskFile
	runDir string
	logDir string
	port   int
	inst   *qemu.Instance
}

// newVM makes a VM with the given disk files (the first one boots) and a
// user NIC forwarding a free local port to the guest's port 80.
func newVM(t *testing.T, name string, disks ...string) *testVM {
	t.Helper()
	runDir, err := os.MkdirTemp("", "bo") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	v := &testVM{t: t, runDir: runDir, logDir: t.TempDir(), port: freePort(t)}
	v.spec = v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: 256, Machine: "q35", CPUModel: "max",
		Boot: []string{"disk"},
		NICs: []v1.NIC{{Mode: v1.NICUser, MAC: "52:54:00:12:34:56",
			Forwards: []v1.Forward{{Protocol: "tcp", HostPort: v.port, GuestPort: 80}}}}}
	for i, d := range disks {
		v.spec.Disks = append(v.spec.Disks, v1.Disk{Name: fmt.Sprintf("disk%d", i), Bus: "virtio"})
		v.disks = append(v.disks, config.DiskFile{Path: d, Format: "qcow2"})
	}
	return v
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// disk is disk i as QEMU has it open right after start.
func (v *testVM) disk(i int) Disk {
	name := v.spec.Disks[i].Name
	return Disk{Name: name, Node: config.NodeName(name), Path: v.disks[i].Path, Format: v.disks[i].Format}
}

func (v *testVM) serialLog() string { return filepath.Join(v.logDir, config.SerialLog) }

// start runs QEMU (paused, or waiting for an incoming migration). The
// process is killed by its pid when the test ends.
func (v *testVM) start(ctx context.Context, incoming string) {
	t := v.t
	t.Helper()
	if v.inst != nil {
		t.Fatal("start: qemu already running")
	}
	argv, err := config.Argv(config.Params{Spec: v.spec, Accel: "tcg", RunDir: v.runDir, LogDir: v.logDir,
		Disks: v.disks, Taps: make([]string, len(v.spec.NICs)), Incoming: incoming})
	if err != nil {
		t.Fatal(err)
	}
	caps := qemu.Capabilities{Binary: qemuBinary, Accel: "tcg"}
	inst, err := qemu.Start(ctx, caps, v.spec.Name, v.runDir, argv, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	v.inst = inst
	t.Cleanup(func() {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if t.Failed() && inst.Mon != nil {
			// What QEMU says of the guest and its disks, before it goes:
			// a guest whose console stopped answering may be waiting on I/O.
			for _, cmd := range []string{"query-status", "query-blockstats", "query-block-jobs"} {
				var reply any
				err := inst.Mon.Execute(kctx, cmd, nil, &reply)
				b, _ := json.Marshal(reply)
				t.Logf("%s of %s: %s %v", cmd, v.spec.Name, b, err)
			}
		}
		if err := inst.Kill(kctx); err != nil { // this QEMU only, by its pid
			t.Errorf("kill qemu %d: %v", inst.PID, err)
		}
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(v.runDir, "qemu.log")); err == nil && len(b) > 0 {
				t.Logf("qemu.log of %s (pid %d):\n%s", v.spec.Name, inst.PID, b)
			}
			if b, err := os.ReadFile(v.serialLog()); err == nil {
				t.Logf("serial log of %s, its end:\n%s", v.spec.Name, b[max(0, len(b)-3000):])
			}
		}
	})
}

// boot starts QEMU, resumes the guest and waits for its ready line.
func (v *testVM) boot(ctx context.Context) (bootID, hostname string) {
	v.t.Helper()
	off := serial.Size(v.serialLog())
	start := time.Now()
	v.start(ctx, "")
	if err := v.inst.Mon.Cont(ctx); err != nil {
		v.t.Fatal(err)
	}
	m, _, err := serial.WaitFor(ctx, v.serialLog(), off, serial.ReadyMarker)
	if err != nil {
		v.t.Fatalf("%s did not boot: %v", v.spec.Name, err)
	}
	v.t.Logf("%s booted in %v (boot_id %s)", v.spec.Name, time.Since(start).Round(time.Millisecond), m[1])
	return m[1], m[2]
}

// quit makes QEMU exit and waits for it.
func (v *testVM) quit(ctx context.Context) {
	v.t.Helper()
	if err := v.inst.Quit(ctx); err != nil {
		v.t.Fatal(err)
	}
	v.inst = nil
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// get fetches a guest URL, retrying until ctx ends (the guest may be busy
// or its network just restored).
func (v *testVM) get(ctx context.Context, path string) string {
	v.t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d%s", v.port, path)
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := httpClient.Do(req)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(b)
			}
			err = fmt.Errorf("status %s, read %v: %q", resp.Status, rerr, b)
		}
		last = err
		select {
		case <-ctx.Done():
			v.t.Fatalf("GET %s: %v (last error: %v)", url, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// status is the guest's /cgi-bin/status.
func (v *testVM) status(ctx context.Context) map[string]string {
	v.t.Helper()
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(v.get(ctx, "/cgi-bin/status")))
	for sc.Scan() {
		if k, val, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = val
		}
	}
	return m
}

func (v *testVM) counter(ctx context.Context, key string) (int, map[string]string) {
	v.t.Helper()
	st := v.status(ctx)
	var n int
	if _, err := fmt.Sscan(st[key], &n); err != nil {
		v.t.Fatalf("status %s=%q: %v", key, st[key], err)
	}
	return n, st
}

func (v *testVM) mark(ctx context.Context, value string) {
	v.t.Helper()
	if got := strings.TrimSpace(v.get(ctx, "/cgi-bin/mark?"+value)); got != "ok" {
		v.t.Fatalf("mark %s: %q", value, got)
	}
}

// shell runs a command on the guest's serial console and returns what it
// printed after "<tag>=" (cmd must print that, e.g. `echo "$tag=$(...)"`,
// where the tag is built by the shell so that the echoed command line does
// not match).
func (v *testVM) shell(ctx context.Context, tag, cmd string) string {
	v.t.Helper()
	// A bound of its own, well past what a loaded machine takes: a guest
	// that stopped answering fails the test while there is time to ask
	// QEMU why (the cleanup logs it).
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	m, err := serialtest.Shell(ctx, filepath.Join(v.runDir, config.ConsoleSocket), v.serialLog(), cmd, regexp.MustCompile(regexp.QuoteMeta(tag)+`=(\S*)`))
	if err != nil {
		v.t.Fatal(err)
	}
	return m[1]
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// imgInfo is `qemu-img info -U --output=json` of one image.
type imgInfo struct {
	VirtualSize           int64  `json:"virtual-size"`
	ActualSize            int64  `json:"actual-size"`
	Format                string `json:"format"`
	BackingFilename       string `json:"backing-filename"`
	FullBackingFilename   string `json:"full-backing-filename"`
	BackingFilenameFormat string `json:"backing-filename-format"`
}

// info reads an image; force-share (-U) lets it read one QEMU has open.
func info(t *testing.T, path string, forceShare bool) imgInfo {
	t.Helper()
	args := []string{"info", "--output=json", path}
	if forceShare {
		args = append(args, "-U")
	}
	out, err := exec.Command(qemuImg, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
	var ii imgInfo
	if err := json.Unmarshal(out, &ii); err != nil {
		t.Fatal(err)
	}
	return ii
}

// newOverlay makes a qcow2 overlay on the test guest image.
func newOverlay(t *testing.T, image, path string) string {
	t.Helper()
	if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image, path).CombinedOutput(); err != nil {
		t.Fatalf("create overlay: %v\n%s", err, out)
	}
	return path
}

// nodeNames lists QEMU's named block nodes.
func nodeNames(ctx context.Context, t *testing.T, v *testVM) []string {
	t.Helper()
	nodes, err := queryNodes(ctx, v.inst.Mon)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range nodes {
		names = append(names, n)
	}
	return names
}

// openFiles lists the files QEMU has open.
func openFiles(t *testing.T, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			files = append(files, target)
		}
	}
	return files
}
