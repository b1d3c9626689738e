package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// realQEMU is an empty, paused QEMU started for one test.
type realQEMU struct {
	c       *Client
	bin     string
	exited  chan struct{} // closed when the process is gone
	waitErr error         // valid once exited is closed
}

// startQEMU runs QEMU with its monitor on a socket and connects to it. The
// process is killed (by its pid) when the test ends.
func startQEMU(t *testing.T) *realQEMU {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed: real-QEMU QMP test NOT RUN (apt-get install qemu-system-x86): ", err)
	}
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, bin, "-machine", "none", "-nodefaults", "-display", "none",
		"-no-user-config", "-S", "-qmp", "unix:"+sock+",server=on,wait=off")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	q := &realQEMU{bin: bin, exited: make(chan struct{})}
	go func() {
		q.waitErr = cmd.Wait()
		close(q.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-q.exited:
		default:
			cmd.Process.Kill() // this QEMU only, by its pid
			<-q.exited
		}
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("qemu stderr:\n%s", stderr.String())
		}
	})

	for {
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		q.c, err = Dial(dctx, sock)
		dcancel()
		if err == nil {
			break
		}
		select {
		case <-q.exited:
			t.Fatalf("qemu exited before its monitor answered: %v\n%s", q.waitErr, stderr.String())
		case <-ctx.Done():
			t.Fatalf("connect to qemu monitor: %v (last error %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Cleanup(func() { q.c.Close() })
	return q
}

func TestRealQEMU(t *testing.T) {
	q := startQEMU(t)
	c := q.c
	ctx := testCtx(t)

	out, err := exec.CommandContext(ctx, q.bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	v := c.Version()
	t.Logf("qemu %s (%s)", v, v.Package)
	if v.Major < 2 || !strings.Contains(string(out), "version "+v.String()) {
		t.Errorf("greeting version %+v does not match %q", v, out)
	}

	st, err := c.QueryStatus(ctx)
	if err != nil || st.Running || (st.Status != "prelaunch" && st.Status != "paused") {
		t.Errorf("QueryStatus = %+v, %v; want prelaunch/paused, not running", st, err)
	}

	var qe *Error
	err = c.Execute(ctx, "no-such-command", nil, nil)
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("unknown command: err = %v, want CommandNotFound", err)
	}
	err = c.Execute(ctx, "query-status", map[string]int{"bogus": 1}, nil)
	if !errors.As(err, &qe) || qe.Class != "GenericError" {
		t.Errorf("bad argument: err = %v, want GenericError", err)
	}

	// getfd needs a descriptor over SCM_RIGHTS; without one QEMU refuses.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := c.Execute(ctx, "getfd", map[string]string{"fdname": "nofd"}, nil); !errors.As(err, &qe) {
		t.Errorf("getfd without fd: err = %v, want a QEMU error", err)
	}
	if err := c.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": "pipe"}, w, nil); err != nil {
		t.Errorf("getfd with fd: %v", err)
	}
	if err := c.Execute(ctx, "closefd", map[string]string{"fdname": "pipe"}, nil); err != nil {
		t.Errorf("closefd of the passed fd: %v", err)
	}

	jobs, err := c.QueryJobs(ctx)
	if err != nil || len(jobs) != 0 {
		t.Errorf("QueryJobs = %+v, %v; want none", jobs, err)
	}
	if err := c.JobCancel(ctx, "nope"); !errors.As(err, &qe) {
		t.Errorf("JobCancel of a missing job: err = %v", err)
	}

	events, cancel := c.Subscribe()
	defer cancel()
	if err := c.Quit(ctx); err != nil {
		t.Fatalf("quit: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after quit")
	}
	var shutdown *Event
	for ev := range events {
		if ev.Name == "SHUTDOWN" {
			shutdown = &ev
		}
	}
	if shutdown != nil {
		var d struct {
			Guest  bool
			Reason string
		}
		json.Unmarshal(shutdown.Data, &d)
		t.Logf("SHUTDOWN %+v at %s", d, shutdown.Timestamp.Format(time.RFC3339Nano))
		if d.Guest || d.Reason != "host-qmp-quit" {
			t.Errorf("SHUTDOWN data = %s", shutdown.Data)
		}
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("after quit: err = %v, want ErrClosed", err)
	}
	select {
	case <-q.exited:
		if q.waitErr != nil {
			t.Errorf("qemu exit: %v", q.waitErr)
		}
	case <-time.After(10 * time.Second):
		t.Error("qemu still running after quit")
	}
}

func TestRealQEMUPauseResume(t *testing.T) {
	c := startQEMU(t).c
	ctx := testCtx(t)
	events, cancel := c.Subscribe()
	defer cancel()

	next := func(name string) {
		t.Helper()
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("connection ended waiting for %s", name)
				}
				if ev.Name == name {
					if ev.Timestamp.IsZero() || time.Since(ev.Timestamp) > time.Minute {
						t.Errorf("%s timestamp %v", name, ev.Timestamp)
					}
					return
				}
			case <-ctx.Done():
				t.Fatalf("no %s event", name)
			}
		}
	}
	check := func(want string, running bool) {
		t.Helper()
		st, err := c.QueryStatus(ctx)
		if err != nil || st.Status != want || st.Running != running {
			t.Errorf("QueryStatus = %+v, %v; want %s", st, err, want)
		}
	}
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	next("RESUME")
	check("running", true)
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	next("STOP")
	check("paused", false)
	if err := c.Execute(ctx, "nonexistent", nil, nil); err == nil {
		t.Error("unknown command accepted")
	}
}
