package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/serial"
)

// TestAgentKilledGuestSurvives: kill -9 of hangar serve leaves the guest
// running; the restarted server re-adopts it without a reboot.
func TestAgentKilledGuestSurvives(t *testing.T) {
	s := newServer(t)
	port := s.createGuest("survivor", nil)
	bootID, off := s.waitReady("survivor", 0)
	v := s.waitState("survivor", 10*time.Second, v1.StateRunning)
	pid := v.Status.PID

	s.kill9()
	if !alive(pid) {
		t.Fatal("qemu died with hangar serve")
	}
	st := mustGuestStatus(t, port)
	if st["boot_id"] != bootID {
		t.Fatalf("boot id changed while hangar serve was down: %s → %s", bootID, st["boot_id"])
	}
	s.start()
	v = s.waitState("survivor", 20*time.Second, v1.StateRunning)
	if v.Status.PID != pid {
		t.Fatalf("pid %d after re-adoption, want %d", v.Status.PID, pid)
	}
	st = mustGuestStatus(t, port)
	if st["boot_id"] != bootID {
		t.Fatalf("guest rebooted: boot id %s → %s", bootID, st["boot_id"])
	}
	if size := serial.Size(s.serialLog("survivor")); size != off {
		b, _ := os.ReadFile(s.serialLog("survivor"))
		if strings.Count(string(b), "HANGAR-GUEST-READY") > 1 {
			t.Fatal("the guest booted again after re-adoption")
		}
	}
	// The re-adopted VM is fully managed: pause and resume through QMP.
	s.action("survivor", "pause", nil)
	s.waitState("survivor", 5*time.Second, v1.StatePaused)
	s.action("survivor", "resume", nil)
	if st := mustGuestStatus(t, port); st["boot_id"] != bootID {
		t.Fatalf("boot id %s after resume, want %s", st["boot_id"], bootID)
	}
}

// TestCrashRestartPolicy: a QEMU killed outside Hangar shows crashed and is
// restarted by policy on-failure; with policy never it stays crashed.
func TestCrashRestartPolicy(t *testing.T) {
	s := newServer(t)
	s.createGuest("phoenix", nil)
	s.createGuest("dodo", func(sp *v1.VMSpec) { sp.RestartPolicy = v1.RestartNever })
	boot1, off := s.waitReady("phoenix", 0)
	s.waitReady("dodo", 0)

	for _, name := range []string{"phoenix", "dodo"} {
		v := s.waitState(name, 10*time.Second, v1.StateRunning)
		if err := syscall.Kill(v.Status.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	v := s.waitState("dodo", 10*time.Second, v1.StateCrashed)
	if !strings.Contains(v.Status.Reason, "died") {
		t.Errorf("crash reason %q", v.Status.Reason)
	}
	boot2, _ := s.waitReady("phoenix", off)
	if boot2 == boot1 {
		t.Fatalf("boot id %s did not change: not a new boot", boot2)
	}
	v = s.waitState("phoenix", 10*time.Second, v1.StateRunning)
	if v.Status.Restarts != 1 {
		t.Fatalf("restarts = %d, want 1", v.Status.Restarts)
	}
	time.Sleep(2 * time.Second)
	if v := s.waitState("dodo", time.Second, v1.StateCrashed); v.Status.PID != 0 {
		t.Fatalf("policy never: vm restarted (pid %d)", v.Status.PID)
	}
	// A crashed VM starts again on request.
	s.action("dodo", "start", nil)
	s.waitReady("dodo", 0)
}

// TestGuestPowerOffIsNotACrash: a guest that powers itself off is stopped,
// not crashed, and policy on-failure leaves it off.
func TestGuestPowerOffIsNotACrash(t *testing.T) {
	s := newServer(t)
	s.createGuest("quitter", nil)
	s.waitReady("quitter", 0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := s.c.Console(ctx, "quitter")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		_, _ = conn.Write([]byte("\npoweroff -f\n"))
		v, err := s.c.VM(ctx, "quitter")
		if err == nil && v.Status.State == v1.StateStopped {
			if !strings.Contains(v.Status.Reason, "guest") {
				t.Fatalf("reason %q", v.Status.Reason)
			}
			time.Sleep(3 * time.Second)
			if v, _ := s.c.VM(ctx, "quitter"); v.Status.State != v1.StateStopped {
				t.Fatalf("state %s after guest poweroff with policy on-failure", v.Status.State)
			}
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatal("guest did not power off from its console")
}

// TestInterruptedOperationsResume: hangar serve is killed right after
// accepting creates; at restart every operation is carried out exactly once
// — each guest boots, and runs in exactly one QEMU.
func TestInterruptedOperationsResume(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	names := []string{"inter1", "inter2", "inter3"}
	var ops []v1.Operation
	for _, n := range names {
		spec := v1.VMSpec{Name: n, MemoryMiB: 128, Disks: []v1.Disk{{Image: guestImage}}}
		op, err := s.c.CreateVM(ctx, spec, true, 0)
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, op)
	}
	s.kill9()
	s.start()
	for i, n := range names {
		op, err := s.c.Wait(ctx, ops[i], nil)
		if err != nil {
			t.Fatalf("operation %s on %s after restart: %v", op.ID, n, err)
		}
		s.waitReady(n, 0)
		v := s.waitState(n, 20*time.Second, v1.StateRunning)
		if got := qemuCount(t, n); got != 1 {
			t.Fatalf("vm %s runs in %d QEMU processes", n, got)
		}
		if !alive(v.Status.PID) {
			t.Fatalf("vm %s: pid %d not alive", n, v.Status.PID)
		}
		t.Logf("%s: op %s attempts=%d", n, op.ID, op.Attempts)
	}
}

// qemuCount counts live QEMU processes of a VM name.
func qemuCount(t *testing.T, name string) int {
	t.Helper()
	n := 0
	for _, cmdline := range processes() {
		if strings.Contains(cmdline, "qemu-system") && strings.Contains(cmdline, "guest="+name+",") {
			n++
		}
	}
	return n
}

// TestKill9DuringCreateStart kills hangar serve with SIGKILL at each named
// point of a create+start (the agent kills itself there when
// HANGAR_TEST_CRASH_AT names the point: a test-only switch), starts it
// again, and checks that the operation succeeded exactly once, the VM runs
// in exactly one QEMU, the guest booted once and answers, and the status
// names that QEMU: pid, start time and accelerator (issue 7.8: they were
// lost when a resumed create overwrote what re-adoption had recorded).
func TestKill9DuringCreateStart(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	hosts, err := s.c.Hosts(ctx)
	if err != nil || len(hosts) != 1 {
		t.Fatalf("hosts: %v %v", hosts, err)
	}
	accel := hosts[0].Accelerator
	points := []string{
		"op-claimed",     // the operation is running, nothing made yet
		"disks-created",  // the disk exists, no status yet
		"status-stopped", // status written, QEMU not started
		"qemu-exec",      // QEMU runs paused (-S), before cont
		"qemu-cont",      // the guest runs, status still "starting"
		"status-running", // status written, operation not finished
	}
	parent := s.t
	defer func() { s.t = parent }()
	for i, point := range points {
		t.Run(point, func(t *testing.T) {
			name := fmt.Sprintf("crash%d", i)
			s.t = t
			s.stop()
			os.Setenv("HANGAR_TEST_CRASH_AT", point) // only this serve process sees it
			s.start()
			os.Unsetenv("HANGAR_TEST_CRASH_AT")
			logOff := fileSize(s.log)
			port := freePort(t)
			spec := v1.VMSpec{Name: name, MemoryMiB: 128, Disks: []v1.Disk{{Image: guestImage}},
				NICs: []v1.NIC{{Mode: v1.NICUser, Forwards: []v1.Forward{{HostPort: port, GuestPort: 80}}}}}
			op, err := s.c.CreateVM(ctx, spec, true, 0)
			if err != nil {
				t.Fatal(err)
			}
			s.waitExit(2 * time.Minute)
			if b, _ := os.ReadFile(s.log); !strings.Contains(string(b[logOff:]), "point="+point) {
				t.Fatalf("hangar serve did not stop at %s:\n%s", point, tail(string(b[logOff:]), 3000))
			}
			crashed := time.Now()
			s.start()
			wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			defer cancel()
			op, err = s.c.Wait(wctx, op, nil)
			if err != nil {
				t.Fatalf("create after the crash at %s: %v", point, err)
			}
			if op.Attempts != 1 {
				t.Errorf("attempts = %d, want 1 (claimed once before the crash, resumed once)", op.Attempts)
			}
			bootID, _ := s.waitReady(name, 0)
			v := s.waitState(name, 30*time.Second, v1.StateRunning)
			if n := qemuCount(t, name); n != 1 {
				t.Fatalf("vm %s runs in %d QEMU processes", name, n)
			}
			pid := qemuPID(t, s.runDir, name)
			if v.Status.PID != pid {
				t.Errorf("status.pid = %d, the QEMU is pid %d", v.Status.PID, pid)
			}
			if v.Status.Accelerator != accel {
				t.Errorf("status.accelerator = %q, want %q", v.Status.Accelerator, accel)
			}
			if sa := v.Status.StartedAt; sa == nil || sa.Before(op.Created.Add(-2*time.Second)) || sa.After(time.Now()) {
				t.Errorf("status.startedAt = %v, want between the create (%s) and now", sa, op.Created)
			} else if point != "op-claimed" && point != "disks-created" && point != "status-stopped" && sa.After(crashed) {
				t.Errorf("status.startedAt = %s is after the crash (%s): not the adopted QEMU's start", sa, crashed)
			}
			if st := mustGuestStatus(t, port); st["boot_id"] != bootID {
				t.Fatalf("guest answers boot id %s, its console said %s", st["boot_id"], bootID)
			}
			if b, _ := os.ReadFile(s.serialLog(name)); strings.Count(string(b), "HANGAR-GUEST-READY") != 1 {
				t.Fatalf("the guest booted %d times", strings.Count(string(b), "HANGAR-GUEST-READY"))
			}
			dop, err := s.c.DeleteVM(ctx, name, true, time.Minute)
			if err == nil {
				_, err = s.c.Wait(ctx, dop, nil)
			}
			if err != nil {
				t.Fatalf("delete %s: %v", name, err)
			}
		})
	}
}

// waitExit waits for hangar serve to end by itself.
func (s *server) waitExit(d time.Duration) {
	s.t.Helper()
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
		s.cmd = nil
	case <-time.After(d):
		_ = s.cmd.Process.Kill()
		<-done
		s.cmd = nil
		s.t.Fatalf("hangar serve did not exit within %s", d)
	}
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// qemuPID reads a VM's QEMU pid from its pidfile.
func qemuPID(t *testing.T, runDir, name string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(runDir, "vms", name, "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}
