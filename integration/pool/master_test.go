package pool_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// TestMasterFailover: kill -9 the pool master's hangar serve (its guests
// keep running); another host is elected within seconds and places a
// create that was submitted while there was no master — exactly once, on
// a live host. The killed host comes back and is a candidate again.
func TestMasterFailover(t *testing.T) {
	p := sharedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	info, err := p.API(t, "h1").PoolInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := info.Master
	if old == "" {
		t.Fatalf("no pool master: %+v", info)
	}
	ask := "h1"
	if old == "h1" {
		ask = "h2"
	}
	c := p.API(t, ask)
	sp := p.Host(t, old).ServeProc()
	if err := sp.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-sp.Done()
	killed := time.Now()
	t.Cleanup(func() { p.Restart(t, old) })

	// Submitted while the master is dead: it waits for the next one.
	spec := v1.VMSpec{Name: "failover", CPUs: 1, MemoryMiB: 64, Disks: []v1.Disk{{SizeMiB: 16}}}
	op, err := c.CreateVM(ctx, spec, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.DeleteVM(t, ask, "failover") })
	var elected time.Duration
	for {
		info, err := c.PoolInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Master != "" && info.Master != old {
			elected = time.Since(killed)
			t.Logf("%s elected pool master %v after %s was killed", info.Master, elected.Round(time.Millisecond), old)
			break
		}
		if time.Since(killed) > 2*time.Minute {
			t.Fatalf("no new master 2 minutes after %s was killed (master %q)", old, info.Master)
		}
		time.Sleep(100 * time.Millisecond)
	}
	done, err := c.Wait(ctx, op, nil)
	if err != nil || done.State != v1.OpSucceeded {
		t.Fatalf("create across the failover: %+v (%v)", done, err)
	}
	v, err := c.VM(ctx, "failover")
	if err != nil {
		t.Fatal(err)
	}
	if v.Spec.Host == "" || v.Spec.Host == old || v.Status.State != v1.StateStopped {
		t.Fatalf("vm after failover: host %q state %q (the dead master was %s)", v.Spec.Host, v.Status.State, old)
	}
	vms, err := c.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, x := range vms {
		if x.Spec.Name == "failover" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d vms named failover", n)
	}
	ops, err := c.Operations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	creates := 0
	for _, o := range ops {
		if o.Kind == "create" && o.Target == "failover" {
			creates++
		}
	}
	if creates != 1 {
		t.Fatalf("%d create operations for one request", creates)
	}
}
