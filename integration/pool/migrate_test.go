package pool_test

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// TestLiveMigrationShared: a guest whose disk is on a shared pool serves
// HTTP on its own bridged IP while it is live-migrated (TLS) from h1 to
// h2 and back; a client in the client namespace reads it every 20 ms. The
// guest's boot id never changes, its counter never goes backwards, its
// QEMU runs on exactly one host afterwards, and the longest gap the client
// saw is logged (TestLiveMigrationLocal does the same for a disk on a
// local pool).
func TestLiveMigrationShared(t *testing.T) {
	p := sharedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	vol := sharedVolume(ctx, t, p, "mig", "mg.qcow2")
	g := p.BootGuest(t, "h1", "mg", func(s *v1.VMSpec) { s.Disks = []v1.Disk{{Volume: vol}} })
	poll := p.Poll(t, g)
	time.Sleep(time.Second)
	for _, to := range []string{"h2", "h1"} {
		start := time.Now()
		out := p.CLI(t, "h1", "vm", "migrate", "mg", "--to", to)
		t.Logf("migrate to %s took %v: %s", to, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
		v := p.WaitVM(t, "h1", "mg", to, 2*time.Minute, v1.StateRunning)
		if v.Spec.Host != to {
			t.Fatalf("after migrating to %s the vm is on %s", to, v.Spec.Host)
		}
		from := "h1"
		if to == "h1" {
			from = "h2"
		}
		if pid := p.QEMUOf(t, to, "mg"); pid == 0 {
			t.Fatalf("no QEMU of mg on %s", to)
		}
		deadline := time.Now().Add(time.Minute)
		for p.QEMUOf(t, from, "mg") != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the source QEMU of mg is still on %s", from)
			}
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(time.Second)
	}
	StopPollOnce(t, poll, g, "the migrations")
}
