package migration

import (
	"bufio"
	"context"
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
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/pki"
	"hangar/internal/qemu"
	"hangar/internal/qemu/config"
	"hangar/internal/serial"
	"hangar/internal/serial/serialtest"
)

const qemuBinary = "/usr/bin/qemu-system-x86_64"

// needGuest skips when QEMU or the test guest is missing and returns the
// guest image (HANGAR_GUEST_DIR, else the cache).
func needGuest(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(qemuBinary); err != nil {
		t.Skipf("SKIPPED: %s not installed (apt-get install qemu-system-x86): real-QEMU migration tests NOT RUN", qemuBinary)
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("SKIPPED: qemu-img not installed (apt-get install qemu-utils): real-QEMU migration tests NOT RUN")
	}
	dir := os.Getenv("HANGAR_GUEST_DIR")
	if dir == "" {
		dir = "/var/cache/hangar/guest"
	}
	img := filepath.Join(dir, "hangar-guest.qcow2")
	if _, err := os.Stat(img); err != nil {
		t.Skipf("SKIPPED: no test guest at %s (build it with guest/build.sh, set HANGAR_GUEST_DIR): migration tests NOT RUN", img)
	}
	return img
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
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

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
}

// testVM is one QEMU of the test guest: the source, or a target with the
// same devices (only the user NIC's host port differs).
type testVM struct {
	t      *testing.T
	spec   v1.VMSpec
	disk   string
	runDir string
	logDir string
	port   int
	inst   *qemu.Instance
}

func newVM(t *testing.T, disk string) *testVM {
	t.Helper()
	runDir, err := os.MkdirTemp("", "mig") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	v := &testVM{t: t, disk: disk, runDir: runDir, logDir: t.TempDir(), port: freePort(t)}
	v.spec = v1.VMSpec{Name: "mig", CPUs: 1, MemoryMiB: 256, Machine: "q35", CPUModel: qemu.TCGCPUModel,
		Boot:  []string{"disk"},
		Disks: []v1.Disk{{Name: "disk0", Bus: "virtio"}},
		NICs: []v1.NIC{{Mode: v1.NICUser, MAC: "52:54:00:12:34:56",
			Forwards: []v1.Forward{{Protocol: "tcp", HostPort: v.port, GuestPort: 80}}}}}
	return v
}

// start runs QEMU (paused, or waiting for an incoming migration); the test
// kills it by its pid at the end.
func (v *testVM) start(ctx context.Context, incoming string) {
	t := v.t
	t.Helper()
	argv, err := config.Argv(config.Params{Spec: v.spec, Accel: "tcg", RunDir: v.runDir, LogDir: v.logDir,
		Disks: []config.DiskFile{{Path: v.disk, Format: "qcow2"}}, Taps: make([]string, 1), Incoming: incoming})
	if err != nil {
		t.Fatal(err)
	}
	inst, err := qemu.Start(ctx, qemu.Capabilities{Binary: qemuBinary, Accel: "tcg"}, v.spec.Name, v.runDir, argv, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	v.inst = inst
	t.Cleanup(func() {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := inst.Kill(kctx); err != nil {
			t.Errorf("kill qemu %d: %v", inst.PID, err)
		}
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(v.runDir, "qemu.log")); err == nil && len(b) > 0 {
				t.Logf("qemu.log (pid %d, incoming %q):\n%s", inst.PID, incoming, b)
			}
		}
	})
}

// diagnose logs what the guest says on its console when its HTTP server
// does not answer: whether it runs at all, and its NIC's counters.
func (v *testVM) diagnose() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st, err := v.inst.Mon.QueryStatus(ctx); err == nil {
		v.t.Logf("diagnose: QEMU status %+v", st)
	}
	_, err := serialtest.Shell(ctx, filepath.Join(v.runDir, config.ConsoleSocket), v.serialLog(),
		"cat /proc/net/dev; ip addr; ip route; ps; cat /proc/interrupts | grep -i virt; echo DIAG$((40+2))", regexp.MustCompile("DIAG42"))
	v.t.Logf("diagnose: console answer %v", err)
	if b, err := os.ReadFile(v.serialLog()); err == nil {
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		v.t.Logf("diagnose: serial log tail:\n%s", b)
	}
}

func (v *testVM) serialLog() string { return filepath.Join(v.logDir, config.SerialLog) }

func (v *testVM) boot(ctx context.Context) string {
	v.t.Helper()
	v.start(ctx, "")
	if err := v.inst.Mon.Cont(ctx); err != nil {
		v.t.Fatal(err)
	}
	m, _, err := serial.WaitFor(ctx, v.serialLog(), 0, serial.ReadyMarker)
	if err != nil {
		v.t.Fatalf("guest did not boot: %v", err)
	}
	return m[1]
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

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
			err = fmt.Errorf("status %s, read %v", resp.Status, rerr)
		}
		last = err
		select {
		case <-ctx.Done():
			v.diagnose()
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

func num(t *testing.T, st map[string]string, key string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(st[key], &n); err != nil {
		t.Fatalf("status %s=%q: %v", key, st[key], err)
	}
	return n
}

func (v *testVM) mark(ctx context.Context, value string) {
	v.t.Helper()
	if got := strings.TrimSpace(v.get(ctx, "/cgi-bin/mark?"+value)); got != "ok" {
		v.t.Fatalf("mark %s: %q", value, got)
	}
}

// shell types cmd on the guest's serial console once its shell answers
// and waits for re in the serial log.
func (v *testVM) shell(ctx context.Context, cmd, re string) {
	v.t.Helper()
	if _, err := serialtest.Shell(ctx, filepath.Join(v.runDir, config.ConsoleSocket), v.serialLog(), cmd, regexp.MustCompile(re)); err != nil {
		v.t.Fatal(err)
	}
}

// hostTLS makes a CA and host keypairs for the source and target.
type hostTLS struct {
	ca       *pki.CA
	src, tgt *pki.KeyPair
}

func newHostTLS(t *testing.T) hostTLS {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	lo := []net.IP{net.ParseIP("127.0.0.1")}
	src, err := ca.IssueHost("h-src", lo, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	tgt, err := ca.IssueHost("h-tgt", lo, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	return hostTLS{ca: ca, src: src, tgt: tgt}
}

func (h hostTLS) forVM(v *testVM, kp *pki.KeyPair) *TLS {
	return &TLS{Dir: filepath.Join(v.runDir, "tls"), CA: h.ca.CertPEM(), Cert: kp.CertPEM, Key: kp.KeyPEM, UID: os.Getuid(), GID: os.Getgid()}
}
