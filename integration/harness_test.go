// Package integration boots real guests under QEMU through a real `hangar
// serve` process and asserts on what the guests report.
package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/serial"
)

var (
	hangarBin  string // built once in TestMain
	guestImage string // built (or found in the cache) once in TestMain
	skipReason string // set when QEMU is absent
)

func TestMain(m *testing.M) {
	if os.Getenv(probeEnv) != "" { // a copy of this binary run as another user (trust_test.go)
		os.Exit(probeMain())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skipReason = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86 qemu-utils): integration tests cannot boot guests"
		fmt.Fprintln(os.Stderr, "WARNING:", skipReason)
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "hgit")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	hangarBin = filepath.Join(tmp, "hangar")
	build := []string{"build", "-o", hangarBin}
	if os.Getenv("HANGAR_TEST_RACE") != "" {
		build = append(build, "-race") // hangar serve under the race detector; reports fail the test
	}
	if out, err := exec.Command("go", append(build, "../cmd/hangar")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build hangar: %v\n%s", err, out)
		return 1
	}
	cmd := exec.Command("bash", "../guest/build.sh")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build test guest: %v\n", err)
		return 1
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	guestImage = lines[len(lines)-1]
	before, err := sha256File(guestImage)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	// No test may write the shared base image (a block-commit without a
	// base would, into the bottom of a chain).
	if after, err := sha256File(guestImage); err != nil || after != before {
		fmt.Fprintf(os.Stderr, "FAIL: the test guest image %s changed during the tests (%v)\n", guestImage, err)
		return 1
	}
	return code
}

func sha256File(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// server is one `hangar serve` process with its own state.
type server struct {
	t       *testing.T
	netns   string // run hangar serve in this network namespace
	cmd     *exec.Cmd
	dataDir string
	runDir  string
	socket  string
	c       *client.Client
	log     string
	// importDir is an --import-dir of the server: tests put the files they
	// name from outside the pools (imports, ISOs) here. The guest image's
	// directory is one too; importDirs are further ones.
	importDir  string
	importDirs []string
	args       []string // more flags for hangar serve
}

func needQEMU(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// newServer starts hangar serve in fresh directories. Cleanup deletes every
// VM (killing its QEMU) and stops the server.
func newServer(t *testing.T) *server { return newServerIn(t, "") }

// newServerIn starts hangar serve inside a network namespace ("" = this one).
func newServerIn(t *testing.T, netns string) *server { return newServerArgs(t, netns) }

// newServerArgs starts hangar serve with more flags.
func newServerArgs(t *testing.T, netns string, args ...string) *server {
	t.Helper()
	needQEMU(t)
	// Unix socket paths are limited to 108 bytes: keep the run dir short.
	run, err := os.MkdirTemp("", "hg")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, netns: netns, dataDir: t.TempDir(), runDir: run, socket: filepath.Join(run, "h.sock"), importDir: t.TempDir(), args: args}
	s.log = filepath.Join(s.dataDir, "serve.log")
	s.c = client.New(s.socket)
	s.start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if s.cmd != nil {
			vms, _ := s.c.VMs(ctx)
			for _, v := range vms {
				if op, err := s.c.DeleteVM(ctx, v.Spec.Name, true, 30*time.Second); err == nil {
					_, _ = s.c.Wait(ctx, op, nil)
				}
			}
			s.stop()
		}
		killVMsOf(run)
		os.RemoveAll(run)
		if b, err := os.ReadFile(s.log); err == nil && strings.Contains(string(b), "WARNING: DATA RACE") {
			t.Errorf("hangar serve reported a data race:\n%s", tail(string(b), 8000))
		}
		if t.Failed() {
			if b, err := os.ReadFile(s.log); err == nil {
				t.Logf("hangar serve log:\n%s", tail(string(b), 6000))
			}
		}
	})
	return s
}

func (s *server) start() {
	s.t.Helper()
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	defer logf.Close()
	accel := os.Getenv("HANGAR_TEST_ACCEL")
	if accel == "" {
		accel = "auto"
	}
	argv := []string{hangarBin}
	if s.netns != "" {
		argv = []string{"ip", "netns", "exec", s.netns, hangarBin}
	}
	args := []string{"serve", "--data-dir", s.dataDir, "--run-dir", s.runDir, "--socket", s.socket,
		"--host", "testhost", "--accel", accel, "--stop-timeout", "30s", "--log-level", "debug"}
	for _, d := range append([]string{filepath.Dir(guestImage), s.importDir}, s.importDirs...) {
		args = append(args, "--import-dir", d)
	}
	args = append(args, s.args...)
	s.cmd = exec.Command(argv[0], append(argv[1:], args...)...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := s.c.Hosts(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.log)
			s.t.Fatalf("hangar serve did not come up: %v\n%s", err, tail(string(b), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends hangar serve with SIGTERM (VMs keep running).
func (s *server) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

// kill9 ends hangar serve with SIGKILL, as a crash would.
func (s *server) kill9() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// killVMsOf kills QEMUs left under a run dir (by their pidfiles).
// processes maps the pid of every other live process to its command line
// (arguments joined by spaces).
func processes() map[int]string {
	out := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil {
			out[pid] = strings.ReplaceAll(string(b), "\x00", " ")
		}
	}
	return out
}

func killVMsOf(runDir string) {
	pidfiles, _ := filepath.Glob(filepath.Join(runDir, "vms", "*", "qemu.pid"))
	for _, pf := range pidfiles {
		b, err := os.ReadFile(pf)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), runDir) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

func (s *server) serialLog(name string) string {
	return filepath.Join(s.dataDir, "logs", name, "serial.log")
}

// createGuest creates and starts a VM of the test guest with its port 80
// forwarded to a free host port.
func (s *server) createGuest(name string, mutate func(*v1.VMSpec)) int {
	s.t.Helper()
	port := freePort(s.t)
	spec := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: 256, Disks: []v1.Disk{{Image: guestImage}},
		NICs: []v1.NIC{{Mode: v1.NICUser, Forwards: []v1.Forward{{HostPort: port, GuestPort: 80}}}}}
	if mutate != nil {
		mutate(&spec)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	op, err := s.c.CreateVM(ctx, spec, true, time.Minute)
	if err != nil {
		s.t.Fatalf("create %s: %v", name, err)
	}
	if _, err := s.c.Wait(ctx, op, nil); err != nil {
		s.t.Fatalf("create %s: %v", name, err)
	}
	return port
}

// waitReady waits for the guest's ready marker after byte offset of its
// serial log and returns the boot id it printed and the new offset.
func (s *server) waitReady(name string, offset int64) (bootID string, next int64) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m, next, err := serial.WaitFor(ctx, s.serialLog(name), offset, serial.ReadyMarker)
	if err != nil {
		b, _ := os.ReadFile(s.serialLog(name))
		s.t.Fatalf("guest %s not ready: %v\nserial log:\n%s", name, err, tail(string(b), 3000))
	}
	if m[2] != name {
		s.t.Errorf("guest reports hostname %q, want %q", m[2], name)
	}
	return m[1], next
}

// waitState polls until the VM's observed state is one of states.
func (s *server) waitState(name string, d time.Duration, states ...string) v1.VM {
	s.t.Helper()
	deadline := time.Now().Add(d)
	var last v1.VM
	for time.Now().Before(deadline) {
		v, err := s.c.VM(context.Background(), name)
		if err == nil {
			last = v
			for _, st := range states {
				if v.Status.State == st {
					return v
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("vm %s: state %q after %s, want one of %v (reason %q)", name, last.Status.State, d, states, last.Status.Reason)
	return last
}

func (s *server) action(name, verb string, body any) v1.Operation {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	op, err := s.c.Action(ctx, name, verb, body, time.Minute)
	if err == nil {
		op, err = s.c.Wait(ctx, op, nil)
	}
	if err != nil {
		s.t.Fatalf("%s %s: %v", verb, name, err)
	}
	return op
}

// guestStatus asks the guest's own HTTP server for its key=value status.
func guestStatus(t *testing.T, port int, timeout time.Duration) (map[string]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/status", port), nil)
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("guest answered %s", resp.Status)
	}
	out := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out, sc.Err()
}

// mustGuestStatus retries until the guest answers (its network may come up
// just after the ready marker).
func mustGuestStatus(t *testing.T, port int) map[string]string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := guestStatus(t, port, 5*time.Second)
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest on port %d does not answer: %v", port, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func counter(t *testing.T, st map[string]string, key string) int {
	t.Helper()
	n, err := strconv.Atoi(st[key])
	if err != nil {
		t.Fatalf("guest status %s=%q: %v (status %v)", key, st[key], err, st)
	}
	return n
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

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
