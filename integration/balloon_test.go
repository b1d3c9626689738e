package integration

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// guestMemTotal is the guest's own MemTotal in KiB (its /proc/meminfo,
// read on its serial console).
func (s *server) guestMemTotal(name, tag string) int64 {
	s.t.Helper()
	m := s.consoleExpect(name, fmt.Sprintf("echo %s $(grep MemTotal /proc/meminfo) $(ls -d /sys/bus/virtio/drivers/virtio_balloon 2>/dev/null | wc -l) END", tag),
		regexp.MustCompile(tag+` MemTotal: +(\d+) kB (\d) END`))
	if m[2] != "1" {
		s.t.Fatalf("the test guest has no virtio_balloon driver (rebuild it: guest/build.sh loads the module)")
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// TestBalloon: a guest started with a balloon target at its full memory
// follows a live target down to half of it, by its own MemTotal and by
// query-balloon (the usage endpoint), and back up; the same QEMU.
func TestBalloon(t *testing.T) {
	s := newServer(t)
	const name, mem, low = "balloon", 256, 128
	s.createGuest(name, func(sp *v1.VMSpec) { sp.MemoryMiB = mem; sp.Resources = &v1.Resources{BalloonMiB: mem} })
	v := s.waitState(name, time.Minute, v1.StateRunning)
	s.waitReady(name, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	balloon := func(want int) int64 {
		t.Helper()
		var got int64
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			u, err := s.c.VMUsage(ctx, name)
			if err != nil {
				t.Fatalf("usage: %v", err)
			}
			if got = u.BalloonBytes; got>>20 == int64(want) {
				return got
			}
		}
		t.Fatalf("query-balloon's actual %d bytes, want %d MiB", got, want)
		return 0
	}
	full := balloon(mem)
	m0 := s.guestMemTotal(name, "m0")
	t.Logf("full: balloon %d bytes, guest MemTotal %d KiB", full, m0)

	target := low
	if _, err := s.c.PatchVM(ctx, name, v1.VMPatch{Resources: &v1.ResourcesPatch{BalloonMiB: &target}}); err != nil {
		t.Fatalf("live balloon target %d MiB: %v", low, err)
	}
	balloon(low)
	var m1 int64
	for deadline := time.Now().Add(time.Minute); ; {
		if m1 = s.guestMemTotal(name, fmt.Sprintf("m1x%d", time.Now().UnixNano())); m0-m1 >= (mem-low-8)<<10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("target %d MiB: guest MemTotal %d KiB (%d MiB less)", low, m1, (m0-m1)>>10)
	if d := (m0 - m1) >> 10; d < mem-low-8 || d > mem-low+8 {
		t.Errorf("guest MemTotal fell by %d MiB at a target of %d of %d MiB, want about %d", d, low, mem, mem-low)
	}

	zero := 0 // all its memory back
	if _, err := s.c.PatchVM(ctx, name, v1.VMPatch{Resources: &v1.ResourcesPatch{BalloonMiB: &zero}}); err != nil {
		t.Fatalf("lift the balloon target: %v", err)
	}
	balloon(mem)
	var m2 int64
	for deadline := time.Now().Add(time.Minute); ; {
		if m2 = s.guestMemTotal(name, fmt.Sprintf("m2x%d", time.Now().UnixNano())); m0-m2 < 8<<10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("lifted: guest MemTotal %d KiB", m2)
	if d := (m0 - m2) >> 10; d > 8 || d < -8 {
		t.Errorf("guest MemTotal %d KiB after the balloon was lifted, want about %d", m2, m0)
	}
	if v2 := s.waitState(name, 10*time.Second, v1.StateRunning); v2.Status.PID != v.Status.PID {
		t.Fatalf("pid %d after live balloon changes, want %d", v2.Status.PID, v.Status.PID)
	}

	// A target above the guest's memory is refused naming the field.
	target = mem + 1
	_, err := s.c.PatchVM(ctx, name, v1.VMPatch{Resources: &v1.ResourcesPatch{BalloonMiB: &target}})
	var e *v1.Error
	if !errors.As(err, &e) || e.Field != "resources.balloonMiB" {
		t.Errorf("balloon target %d of %d MiB: %v, want a refusal on resources.balloonMiB", target, mem, err)
	}
}
