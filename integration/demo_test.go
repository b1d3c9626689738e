package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// demoRun is one `hangar demo` in its own process group and directories.
type demoRun struct {
	t       *testing.T
	cmd     *exec.Cmd
	runDir  string
	dataDir string
	mu      sync.Mutex
	lines   []string
	newLine chan struct{}
	stderr  bytes.Buffer
	done    chan struct{}
}

func startDemo(t *testing.T) *demoRun {
	t.Helper()
	needQEMU(t)
	run, err := os.MkdirTemp("", "hgd")
	if err != nil {
		t.Fatal(err)
	}
	d := &demoRun{t: t, runDir: run, dataDir: t.TempDir(), newLine: make(chan struct{}, 1), done: make(chan struct{})}
	accel := os.Getenv("HANGAR_TEST_ACCEL")
	if accel == "" {
		accel = "auto"
	}
	d.cmd = exec.Command(hangarBin, "demo", "--image", guestImage, "--port", "0", "--data-dir", d.dataDir,
		"--run-dir", run, "--socket", filepath.Join(run, "h.sock"), "--accel", accel)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // as a terminal's job: SIGINT goes to the group
	d.cmd.Stderr = &d.stderr
	out, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			d.mu.Lock()
			d.lines = append(d.lines, sc.Text())
			d.mu.Unlock()
			select {
			case d.newLine <- struct{}{}:
			default:
			}
		}
		close(d.done)
	}()
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			_ = d.cmd.Wait()
		}
		killVMsOf(run)
		os.RemoveAll(run)
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(d.dataDir, "demo.log")); err == nil {
				t.Logf("demo.log:\n%s", tail(string(b), 4000))
			}
		}
	})
	return d
}

func (d *demoRun) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.lines, "\n")
}

// waitLine waits until the demo printed a line containing s.
func (d *demoRun) waitLine(s string, timeout time.Duration) {
	d.t.Helper()
	deadline := time.After(timeout)
	for !strings.Contains(d.output(), s) {
		select {
		case <-d.newLine:
		case <-d.done:
			if strings.Contains(d.output(), s) {
				return
			}
			d.t.Fatalf("demo ended before printing %q:\n%s\nstderr:\n%s", s, d.output(), d.stderr.String())
		case <-deadline:
			d.t.Fatalf("demo did not print %q in %s:\n%s\nstderr:\n%s", s, timeout, d.output(), d.stderr.String())
		}
	}
}

func (d *demoRun) interrupt() {
	if err := syscall.Kill(-d.cmd.Process.Pid, syscall.SIGINT); err != nil {
		d.t.Fatalf("SIGINT to the demo's group: %v", err)
	}
}

// wait waits for the demo to exit and returns its exit code.
func (d *demoRun) wait(timeout time.Duration) int {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.t.Fatalf("demo still runs %s after Ctrl-C:\n%s", timeout, d.output())
	}
	err := d.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		d.t.Fatal(err)
	}
	return d.cmd.ProcessState.ExitCode()
}

// leftovers lists processes whose command line names dir: the demo's QEMU
// (its sockets and pidfile are under the run dir) or the demo itself.
func leftovers(dir string) []string {
	var out []string
	for pid, cmdline := range processes() {
		if strings.Contains(cmdline, dir) {
			out = append(out, fmt.Sprintf("%d: %.200s", pid, cmdline))
		}
	}
	return out
}

// checkStopped asserts what a user expects after Ctrl-C: exit 130, the
// stopping line, no error blaming the server, no QEMU and no server left.
func (d *demoRun) checkStopped(code int) {
	d.t.Helper()
	out, errOut := d.output(), d.stderr.String()
	if code != 130 {
		d.t.Errorf("exit code %d after Ctrl-C, want 130", code)
	}
	if !strings.Contains(out, "stopping…") {
		d.t.Errorf("no stopping… line:\n%s", out)
	}
	if strings.Contains(errOut, "error:") || strings.Contains(errOut, "hangar serve running") || strings.Contains(out, "error:") {
		d.t.Errorf("an error message after Ctrl-C:\nstdout:\n%s\nstderr:\n%s", out, errOut)
	}
	// QEMU is killed by the agent; give the kernel a moment to reap it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := append(leftovers(d.runDir), leftovers(d.dataDir)...)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("processes of the demo left after it exited:\n%s\nstdout:\n%s", strings.Join(left, "\n"), out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(d.runDir, "h.sock")); err == nil {
		d.t.Errorf("the demo's API socket is still there")
	}
}

// TestDemoInterrupt: Ctrl-C at each phase of the demo (starting serve,
// serving, creating, booting, guest up) stops and removes the VM, stops the
// server and exits 130 without an error.
func TestDemoInterrupt(t *testing.T) {
	for _, p := range []struct{ name, line string }{
		{"starting", "starting hangar serve"},
		{"served", "hangar is serving on"},
		{"creating", "creating vm demo"},
		{"booting", "waiting for the guest to boot"},
		{"up", "Press Ctrl-C to stop the demo."},
	} {
		t.Run(p.name, func(t *testing.T) {
			d := startDemo(t)
			d.waitLine(p.line, 4*time.Minute)
			d.interrupt()
			code := d.wait(3 * time.Minute)
			d.checkStopped(code)
			if p.name == "up" && !strings.Contains(d.output(), "vm demo stopped and removed") {
				t.Errorf("no word of the VM being removed:\n%s", d.output())
			}
		})
	}
}

// TestDemoInterruptTwice: a second Ctrl-C while the demo waits for the
// guest to power off says it is still cleaning up and kills the VM at once.
func TestDemoInterruptTwice(t *testing.T) {
	d := startDemo(t)
	d.waitLine("Press Ctrl-C to stop the demo.", 4*time.Minute)
	d.interrupt()
	d.waitLine("stopping vm demo", time.Minute)
	t0 := time.Now()
	d.interrupt()
	d.waitLine("still cleaning up", 30*time.Second)
	code := d.wait(time.Minute)
	t.Logf("exit %s after the second Ctrl-C", time.Since(t0).Round(time.Millisecond))
	d.checkStopped(code)
}
