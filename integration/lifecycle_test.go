package integration

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// TestLifecycle: create → start → ready marker → HTTP from the guest →
// pause/resume (its counter stops, then goes on) → reboot → stop → delete.
func TestLifecycle(t *testing.T) {
	s := newServer(t)
	port := s.createGuest("life", nil)
	bootID, off := s.waitReady("life", 0)

	st := mustGuestStatus(t, port)
	if st["hostname"] != "life" || st["boot_id"] != bootID {
		t.Fatalf("guest says hostname=%q boot_id=%q; serial said %q", st["hostname"], st["boot_id"], bootID)
	}
	v := s.waitState("life", 10*time.Second, v1.StateRunning)
	if v.Status.PID == 0 || !alive(v.Status.PID) || v.Status.Accelerator == "" {
		t.Fatalf("status %+v", v.Status)
	}

	// Pause: the guest stops answering and its counter stops.
	before := counter(t, mustGuestStatus(t, port), "counter")
	s.action("life", "pause", nil)
	s.waitState("life", 5*time.Second, v1.StatePaused)
	if _, err := guestStatus(t, port, 1500*time.Millisecond); err == nil {
		t.Fatal("a paused guest answered HTTP")
	}
	time.Sleep(1500 * time.Millisecond)
	s.action("life", "resume", nil)
	s.waitState("life", 5*time.Second, v1.StateRunning)
	afterResume := counter(t, mustGuestStatus(t, port), "counter")
	// About 3 s passed, 30 ticks of 100 ms had the guest kept running.
	if afterResume-before >= 15 {
		t.Fatalf("counter went from %d to %d across a 3 s pause: the guest did not stop", before, afterResume)
	}
	time.Sleep(time.Second)
	later := counter(t, mustGuestStatus(t, port), "counter")
	if later <= afterResume {
		t.Fatalf("counter %d then %d after resume: the guest does not go on", afterResume, later)
	}

	// Reboot: a new boot of the same VM.
	s.action("life", "reboot", nil)
	newBoot, _ := s.waitReady("life", off)
	if newBoot == bootID {
		t.Fatalf("boot id %s unchanged after reboot", newBoot)
	}

	// Graceful stop: the guest powers off by itself on the ACPI button.
	v = s.waitState("life", 5*time.Second, v1.StateRunning)
	pid := v.Status.PID
	s.action("life", "stop", v1.StopArgs{TimeoutSeconds: 60})
	v = s.waitState("life", 5*time.Second, v1.StateStopped)
	if alive(pid) {
		t.Fatalf("qemu pid %d still alive after stop", pid)
	}
	disk := v.Status.Disks[0].Path
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("disk of stopped vm: %v", err)
	}
	log, err := s.c.ConsoleLog(context.Background(), "life")
	if err != nil || !strings.Contains(string(log), "HANGAR-GUEST-READY") {
		t.Fatalf("console log (%v) lacks the ready marker", err)
	}

	op, err := s.c.DeleteVM(context.Background(), "life", false, time.Minute)
	if err == nil {
		_, err = s.c.Wait(context.Background(), op, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.VM(context.Background(), "life"); !isCode(err, v1.CodeNotFound) {
		t.Fatalf("vm after delete: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(disk)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm's disk directory left after delete: %v", err)
	}
	if _, err := os.Stat(guestImage); err != nil {
		t.Fatalf("delete removed the base image: %v", err)
	}
}

// TestConsole attaches to the serial console and talks to the guest's shell.
func TestConsole(t *testing.T) {
	s := newServer(t)
	s.createGuest("cons", nil)
	s.waitReady("cons", 0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := s.c.Console(ctx, "cons")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	shellAnswers(t, conn, "console")
	// A second client is refused while the first is attached? QEMU serves
	// one client; the API answers either way without hanging.
}

// shellAnswers types "echo WORD-$((6*7))" on a guest's console until its
// shell prints WORD-42 (it may still be starting).
func shellAnswers(t *testing.T, conn net.Conn, word string) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	want := word + "-42"
	got := make(chan string, 1)
	go func() {
		var sb strings.Builder
		buf := make([]byte, 1024)
		for {
			n, err := conn.Read(buf)
			sb.Write(buf[:n])
			if strings.Contains(sb.String(), want) || err != nil {
				got <- sb.String()
				return
			}
		}
	}()
	deadline := time.After(50 * time.Second)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	send := func() { _, _ = io.WriteString(conn, "\necho "+word+"-$((6*7))\n") }
	send()
	for {
		select {
		case out := <-got:
			if !strings.Contains(out, want) {
				t.Fatalf("the guest's shell did not answer on the console; read %q", tail(out, 500))
			}
			return
		case <-tick.C:
			send()
		case <-deadline:
			t.Fatal("no answer from the console")
		}
	}
}

func isCode(err error, code string) bool {
	var e *v1.Error
	return errors.As(err, &e) && e.Code == code
}

// TestStopForcesAfterTimeout: a guest that ignores the ACPI power button is
// quit after the stop timeout.
func TestStopForcesAfterTimeout(t *testing.T) {
	s := newServer(t)
	port := s.createGuest("stubborn", nil)
	s.waitReady("stubborn", 0)
	// Stop the guest's ACPI daemon so that the power button does nothing,
	// and wait until the guest confirms it is gone (the computed marker
	// cannot match the echo of the typed command).
	s.consoleExpect("stubborn", "killall acpid; sleep 0.2; pidof acpid || echo NO$((1+1))ACPID", regexp.MustCompile(`NO2ACPID`))
	mustGuestStatus(t, port)
	v := s.waitState("stubborn", 5*time.Second, v1.StateRunning)
	start := time.Now()
	s.action("stubborn", "stop", v1.StopArgs{TimeoutSeconds: 3})
	took := time.Since(start)
	s.waitState("stubborn", 5*time.Second, v1.StateStopped)
	if took < 3*time.Second {
		t.Fatalf("stop took %s: the guest powered off by itself, the timeout path was not exercised", took)
	}
	if alive(v.Status.PID) {
		t.Fatalf("qemu %d alive after forced stop", v.Status.PID)
	}
	// Force stop of a running VM is immediate.
	s.action("stubborn", "start", nil)
	s.waitState("stubborn", 10*time.Second, v1.StateRunning)
	start = time.Now()
	s.action("stubborn", "stop", v1.StopArgs{Force: true})
	s.waitState("stubborn", 5*time.Second, v1.StateStopped)
	if time.Since(start) > 10*time.Second {
		t.Fatalf("force stop took %s", time.Since(start))
	}
}
