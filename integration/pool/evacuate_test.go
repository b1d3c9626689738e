package pool_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// TestEvacuateParks: evacuating a host whose running VM no other host may
// take (its anti-affinity group already has a VM on each of them) shuts
// the VM down cleanly and parks it; when room comes back (the group's VM
// on h1 is deleted) it starts by itself on h1 — its disk is on a shared
// pool — and the guest boots there. The host stays in maintenance until
// taken out of it.
func TestEvacuateParks(t *testing.T) {
	p := sharedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	g := parkOnEvacuation(ctx, t, p, "evac", "parked")
	t.Cleanup(func() { _, _ = p.CLIErr(t, "h1", "host", "maintenance", "h3", "--off") })

	// Room comes back on h1: the parked VM starts there by itself.
	p.DeleteVM(t, "h1", "evac-h1")
	v := p.WaitVM(t, "h1", "parked", "h1", 3*time.Minute, v1.StateRunning)
	if v.Spec.Parked {
		t.Fatalf("still parked while running on %s", v.Spec.Host)
	}
	bootID, _ := p.WaitReady(t, "h1", "parked", 0)
	if bootID == "" || bootID == g.BootID {
		t.Fatalf("boot id %q on h1 after a cold start (it was %q on h3)", bootID, g.BootID)
	}
	if pid := p.QEMUOf(t, "h3", "parked"); pid != 0 {
		t.Fatalf("a QEMU of the parked VM is left on h3 (pid %d)", pid)
	}
}

// parkOnEvacuation boots guest name on h3 with its disk on a shared pool
// and in anti-affinity group group, whose other members (stopped, booked)
// are on h1 and h2; evacuating h3 then finds no host for it: it is shut
// down cleanly and parked, h3 is in maintenance. It returns the guest as
// it ran on h3.
func parkOnEvacuation(ctx context.Context, t *testing.T, p *Pool, group, name string) Guest {
	t.Helper()
	c := p.API(t, "h1")
	// The VM's disk is on a shared pool (one directory every host sees).
	vol := sharedVolume(ctx, t, p, group, name+".qcow2")

	// One stopped member of the group on h1 and on h2 (bookings count,
	// running or not), the running one on h3.
	for _, h := range []string{"h1", "h2"} {
		member := group + "-" + h
		spec := v1.VMSpec{Name: member, CPUs: 1, MemoryMiB: 64, Disks: []v1.Disk{{SizeMiB: 16}}, AntiAffinityGroup: group,
			Placement: v1.PlacementManual, PreferredHosts: []string{h}}
		t.Cleanup(func() { p.DeleteVM(t, "h1", member) })
		op, err := c.CreateVM(ctx, spec, false, time.Minute)
		if err == nil {
			op, err = c.Wait(ctx, op, nil)
		}
		if err != nil || op.State != v1.OpSucceeded {
			t.Fatalf("create %s: %+v (%v)", member, op.Error, err)
		}
	}
	g := p.BootGuest(t, "h3", name, func(s *v1.VMSpec) {
		s.Disks = []v1.Disk{{Volume: vol}}
		s.AntiAffinityGroup = group
		s.Placement, s.PreferredHosts = "", nil // may run anywhere
	})
	if g.Host != "h3" {
		t.Fatalf("guest on %s", g.Host)
	}

	op, err := c.Evacuate(ctx, "h3", v1.EvacuateArgs{}, 0)
	if err == nil {
		op, err = c.Wait(ctx, op, nil)
	}
	if err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("evacuate h3: %+v (%v)", op.Error, err)
	}
	if len(op.Warnings) != 1 || !strings.Contains(op.Warnings[0], "parked") {
		t.Fatalf("evacuation warnings %q, want the VM parked", op.Warnings)
	}
	v, err := c.VM(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Spec.Parked || v.Status.State != v1.StateStopped || v.Spec.Host != "h3" {
		t.Fatalf("after evacuation: parked %v state %s host %s", v.Spec.Parked, v.Status.State, v.Spec.Host)
	}
	if pid := p.QEMUOf(t, "h3", name); pid != 0 {
		t.Fatalf("the parked VM's QEMU still runs on h3 (pid %d)", pid)
	}
	if out := p.CLI(t, "h1", "host", "list", "-o", "json"); !strings.Contains(out, `"maintenance": true`) {
		t.Fatalf("h3 not in maintenance:\n%s", out)
	}
	return g
}

// sharedVolume makes a shared storage pool named pool (a directory of the
// lab every host sees, kept as long as the lab: pools are not removed)
// holding a copy of the test guest's image as file, and returns the
// volume's name for a spec ("pool/file").
func sharedVolume(ctx context.Context, t testing.TB, p *Pool, pool, file string) string {
	t.Helper()
	dir := sharedPoolDir(ctx, t, p, pool)
	copyFile(t, guestImage, filepath.Join(dir, file))
	t.Cleanup(func() { _ = os.Remove(filepath.Join(dir, file)) })
	return pool + "/" + file
}

// sharedPoolDir makes the shared storage pool named pool (a directory of
// the lab every host sees, kept as long as the lab) if it is not there
// yet, and returns its directory.
func sharedPoolDir(ctx context.Context, t testing.TB, p *Pool, pool string) string {
	t.Helper()
	dir := filepath.Join(p.Lab.Dir, "shared-"+pool)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := p.API(t, "h1").AddPool(ctx, v1.StoragePool{Name: pool, Type: "shared", Path: dir}); err != nil {
		// Made by an earlier test (or run of the test) in this process.
		pools, lerr := p.API(t, "h1").Pools(ctx)
		if lerr != nil || !slices.ContainsFunc(pools, func(sp v1.StoragePool) bool { return sp.Name == pool && sp.Path == dir }) {
			t.Fatal(err)
		}
	}
	return dir
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestEvacuateMigrates: evacuating a host live-migrates its running VM
// (disk on a shared pool) to another host: the guest keeps its boot id and
// nothing of it runs on the evacuated host, which is in maintenance until
// taken out of it.
func TestEvacuateMigrates(t *testing.T) {
	p := sharedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	c := p.API(t, "h1")
	vol := sharedVolume(ctx, t, p, "evm", "ev.qcow2")
	g := p.BootGuest(t, "h2", "ev", func(s *v1.VMSpec) {
		s.Disks = []v1.Disk{{Volume: vol}} // placed on h2 (manual); evacuation may move it anywhere
	})
	if g.Host != "h2" {
		t.Fatalf("guest on %s", g.Host)
	}
	t.Cleanup(func() { _, _ = p.CLIErr(t, "h1", "host", "maintenance", "h2", "--off") })
	out := p.CLI(t, "h1", "host", "evacuate", "h2")
	t.Logf("evacuate: %s", strings.TrimSpace(out))
	v, err := c.VM(ctx, "ev")
	if err != nil {
		t.Fatal(err)
	}
	if v.Spec.Host == "h2" || v.Status.State != v1.StateRunning || v.Spec.Parked {
		t.Fatalf("after evacuating h2: host %s state %s parked %v", v.Spec.Host, v.Status.State, v.Spec.Parked)
	}
	p.WaitQEMUGone(t, "h2", "ev", 2*time.Minute)
	if st := p.GuestStatus(t, g); st.BootID != g.BootID {
		t.Fatalf("boot id %s after the evacuation, was %s", st.BootID, g.BootID)
	}
	if out := p.CLI(t, "h1", "host", "list", "-o", "json"); !strings.Contains(out, `"maintenance": true`) {
		t.Fatalf("h2 not in maintenance:\n%s", out)
	}
}
