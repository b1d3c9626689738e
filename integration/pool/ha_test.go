package pool_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/agent"
	"hangar/internal/ha"
)

// haVictim is a host of the pool other than its master (a dead master
// adds an election to the failover; TestHAMasterKilled covers that), h3
// when it can be.
func haVictim(ctx context.Context, t *testing.T, p *Pool) (victim, master string) {
	t.Helper()
	master = waitMaster(ctx, t, p, "h1", "")
	for _, h := range []string{"h3", "h2", "h1"} {
		if h != master {
			return h, master
		}
	}
	return "", master
}

// restartAfter starts host's serve again when the test ends, if it is
// not running then (a test that failed half-way leaves the shared pool
// whole for the next).
func restartAfter(t *testing.T, p *Pool, host string) {
	t.Cleanup(func() {
		if sp := p.Host(t, host).ServeProc(); sp == nil || sp.Exited() {
			p.Restart(t, host)
		}
	})
}

// bootHAGuest boots the test guest name with HA on, its disk on a shared
// pool (a copy of the guest image, so its on-disk counter goes on
// wherever it runs), placed on host by preference (it may restart
// anywhere).
func bootHAGuest(ctx context.Context, t *testing.T, p *Pool, host, name string) Guest {
	t.Helper()
	vol := sharedVolume(ctx, t, p, "ha", name+".qcow2")
	g := p.BootGuest(t, host, name, func(s *v1.VMSpec) {
		s.Disks = []v1.Disk{{Volume: vol}}
		s.Placement, s.PreferredHosts = v1.PlacementPreferred, []string{host}
		s.HA = &v1.HA{Enabled: true}
	})
	if g.Host != host {
		t.Fatalf("HA guest %s runs on %s, want %s", name, g.Host, host)
	}
	return g
}

// bareVM creates a small running VM without an OS on host (placement
// manual, not HA): a QEMU that boots nothing, cheap under TCG.
func bareVM(ctx context.Context, t *testing.T, p *Pool, host, name string) {
	t.Helper()
	c := p.API(t, host)
	spec := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: 64, Disks: []v1.Disk{{SizeMiB: 16}},
		Placement: v1.PlacementManual, PreferredHosts: []string{host}}
	t.Cleanup(func() { p.DeleteVM(t, host, name) })
	op, err := c.CreateVM(ctx, spec, true, time.Minute)
	if err == nil {
		op, err = c.Wait(ctx, op, nil)
	}
	if err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("create %s on %s: %+v (%v)", name, host, op.Error, err)
	}
}

// waitRunsElsewhere waits (asking host ask) until VM name runs on a host
// other than from and returns that host.
func waitRunsElsewhere(t *testing.T, p *Pool, ask, name, from string, d time.Duration) v1.VM {
	t.Helper()
	return p.WaitVMUntil(t, ask, name, d, "running off "+from, func(v v1.VM) bool {
		return v.Spec.Host != from && v.Status.Host == v.Spec.Host && v.Status.State == v1.StateRunning
	})
}

// hostState is host's state as ask's API lists it.
func hostState(ctx context.Context, t *testing.T, p *Pool, ask, host string) (v1.Host, error) {
	t.Helper()
	hosts, err := p.API(t, ask).Hosts(ctx)
	if err != nil {
		return v1.Host{}, err
	}
	for _, h := range hosts {
		if h.Name == host {
			return h, nil
		}
	}
	return v1.Host{}, fmt.Errorf("host %s not listed", host)
}

// waitHostState waits until ask lists host in state.
func waitHostState(t *testing.T, p *Pool, ask, host, state string, d time.Duration) v1.Host {
	t.Helper()
	deadline := time.Now().Add(d)
	var last v1.Host
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		h, err := hostState(ctx, t, p, ask, host)
		cancel()
		last, lastErr = h, err
		if err == nil && h.State == state {
			return h
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("host %s is %q (%s) after %v, want %s (err %v)", host, last.State, last.LivenessWhy, d, state, lastErr)
	return last
}

// failovers are the failover operations of host.
func failovers(ctx context.Context, t *testing.T, p *Pool, ask, host string) []v1.Operation {
	t.Helper()
	ops, err := p.API(t, ask).Operations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []v1.Operation
	for _, o := range ops {
		if o.Kind == "failover" && o.Target == host {
			out = append(out, o)
		}
	}
	return out
}

// newFailovers are the failover operations of host created after since.
func newFailovers(ctx context.Context, t *testing.T, p *Pool, ask, host string, since time.Time) []v1.Operation {
	var out []v1.Operation
	for _, o := range failovers(ctx, t, p, ask, host) {
		if o.Created.After(since) {
			out = append(out, o)
		}
	}
	return out
}

// TestHAPowerLoss: a power loss of a host (kill -9 of everything in its
// namespace) restarts its HA VM on another host — the guest boots there
// from its shared disk, its on-disk counter going on from where it was —
// and shows its non-HA VM lost; the host is listed dead, the failover
// operation holds the plan. The time from the kill to the guest's ready
// marker elsewhere is logged. The host then comes back and runs no copy.
func TestHAPowerLoss(t *testing.T) {
	p := joinedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	victim, master := haVictim(ctx, t, p)
	g := bootHAGuest(ctx, t, p, victim, "hapl")
	bareVM(ctx, t, p, victim, "hapl-plain")
	before := p.GuestStatus(t, g)
	time.Sleep(2 * time.Second) // its disk counter moves on, synced
	t.Logf("victim %s, master %s; guest disk counter %d", victim, master, before.DiskCounter)

	kill := time.Now()
	p.PowerLoss(t, victim)
	restartAfter(t, p, victim)
	v := waitRunsElsewhere(t, p, master, "hapl", victim, 2*time.Minute)
	running := time.Since(kill)
	bootID, _ := p.WaitReady(t, v.Status.Host, "hapl", 0)
	ready := time.Since(kill)
	t.Logf("kill → running on %s: %v; → guest ready marker: %v", v.Status.Host, running.Round(time.Millisecond), ready.Round(time.Millisecond))
	if bootID == before.BootID {
		t.Fatalf("boot id %s after the failover: the guest did not boot again", bootID)
	}
	g.IP = p.GuestIP(t, "hapl")
	g.URL = StatusURL(g.IP)
	after := p.GuestStatus(t, g)
	if after.BootID != bootID || after.DiskCounter < before.DiskCounter {
		t.Fatalf("after the failover the guest reports boot %s disk counter %d; before: boot %s counter %d",
			after.BootID, after.DiskCounter, before.BootID, before.DiskCounter)
	}
	plain := p.WaitVM(t, master, "hapl-plain", "", time.Minute, v1.StateLost)
	t.Logf("non-HA vm: %s (%s)", plain.Status.State, plain.Status.Reason)
	h := waitHostState(t, p, master, victim, v1.HostDead, time.Minute)
	t.Logf("host %s: %s (%s)", victim, h.State, h.LivenessWhy)
	fos := failovers(ctx, t, p, master, victim)
	if len(fos) == 0 {
		t.Fatalf("no failover operation of %s", victim)
	}
	fo := fos[len(fos)-1]
	var plan ha.Plan
	if err := json.Unmarshal(fo.Args, &plan); err != nil || plan.Validate() != nil {
		t.Fatalf("failover plan %s: %v", fo.Args, err)
	}
	// The pool's other tests may have left VMs on the victim (a shared
	// guest, not HA: lost too).
	if len(plan.Restarts) != 1 || plan.Restarts[0].VM != "hapl" || plan.Restarts[0].State != ha.RestartDone ||
		!slices.ContainsFunc(plan.Lost, func(h ha.Held) bool { return h.VM == "hapl-plain" }) || fo.State != v1.OpSucceeded {
		t.Fatalf("failover %s %s, plan %+v", fo.ID, fo.State, plan)
	}
	t.Logf("failover %s %s: %s warnings %q", fo.ID, fo.State, fo.Args, fo.Warnings)
	if len(fo.Warnings) == 0 || !strings.HasPrefix(fo.Warnings[0], "fence agent succeeded: ") || !strings.Contains(fo.Warnings[0], " "+victim) {
		t.Fatalf("the fence agent's success is not recorded: %q", fo.Warnings)
	}
	t.Logf("op show:\n%s", p.CLI(t, master, "op", "show", fo.ID))

	p.Restart(t, victim)
	waitHostState(t, p, master, victim, v1.HostAlive, time.Minute)
	time.Sleep(3 * time.Second)
	if pid := p.QEMUOf(t, victim, "hapl"); pid != 0 {
		t.Fatalf("a copy of hapl runs on %s after its return (pid %d)", victim, pid)
	}
	if st := p.GuestStatus(t, g); st.BootID != bootID {
		t.Fatalf("guest boot id %s after %s's return, want %s", st.BootID, victim, bootID)
	}
}

// TestHAManagementPartition: a host that loses its management link while
// its storage heartbeats go on is isolated, not dead: nothing restarts
// elsewhere and its HA guest keeps serving, one boot, throughout; when the
// link returns it is alive again.
func TestHAManagementPartition(t *testing.T) {
	p := joinedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	victim, master := haVictim(ctx, t, p)
	g := bootHAGuest(ctx, t, p, victim, "hamp")
	poller := p.Poll(t, g)
	h := p.Host(t, victim)
	since := time.Now()
	if err := h.CutManagement(ctx); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			_ = h.RestoreManagement(context.Background())
		}
	}()
	iso := waitHostState(t, p, master, victim, v1.HostIsolated, time.Minute)
	t.Logf("host %s: %s (%s) %v after the cut", victim, iso.State, iso.LivenessWhy, time.Since(since).Round(time.Millisecond))
	// Well past the time a dead host's VMs restart (about 7 s): still
	// isolated, nothing started elsewhere.
	hold := time.Now().Add(20 * time.Second)
	for time.Now().Before(hold) {
		hs, err := hostState(ctx, t, p, master, victim)
		if err != nil {
			t.Fatal(err)
		}
		if hs.State != v1.HostIsolated {
			t.Fatalf("host %s is %s (%s) while it writes its storage heartbeat", victim, hs.State, hs.LivenessWhy)
		}
		for _, o := range p.Hosts {
			if o.Name != victim && p.QEMUOf(t, o.Name, "hamp") != 0 {
				t.Fatalf("a copy of hamp runs on %s while %s is only isolated", o.Name, victim)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	if fos := newFailovers(ctx, t, p, master, victim, since); len(fos) != 0 {
		t.Fatalf("failover of an isolated host: %+v", fos)
	}
	if err := h.RestoreManagement(ctx); err != nil {
		t.Fatal(err)
	}
	restored = true
	waitHostState(t, p, master, victim, v1.HostAlive, 2*time.Minute)
	r := StopPollOnce(t, poller, g, "the management partition")
	if r.Failures > 0 {
		t.Logf("%d failed reads", r.Failures)
	}
	if p.QEMUOf(t, victim, "hamp") == 0 {
		t.Fatalf("hamp's QEMU is gone from %s", victim)
	}
}

// sample is one read of a guest's identity from the client namespace.
type sample struct {
	at     time.Time
	bootID string
}

// TestHAFullIsolation: a host that loses its management link and its
// storage heartbeat (the test fault) kills its HA guest by self-fencing
// before any copy starts elsewhere: sampled every 50 ms, the old boot id
// never answers once the new one has, and the old QEMU is gone before a
// new one exists. Then the host returns (TestHAReturn's half): it starts
// no stale copy, and the guest keeps its new boot.
func TestHAFullIsolation(t *testing.T) {
	p := joinedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	victim, master := haVictim(ctx, t, p)
	g := bootHAGuest(ctx, t, p, victim, "hafi")
	h := p.Host(t, victim)

	// The guest's identity, every 50 ms, from the client namespace.
	var mu sync.Mutex
	var samples []sample
	sctx, scancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// A request starts every 50 ms without waiting for the one before (at
	// most 4 at once: a TCG guest's forking httpd answers slowly); each
	// answer is kept with the time it arrived.
	hc := p.Client.Dialer().HTTPClient(2 * time.Second)
	inFlight := make(chan struct{}, 4)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
			select {
			case inFlight <- struct{}{}:
			default:
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-inFlight }()
				rctx, rcancel := context.WithTimeout(sctx, 2*time.Second)
				mu.Lock()
				url := g.URL // the copy's address replaces it once it runs
				mu.Unlock()
				st, err := fetch(rctx, hc, url)
				rcancel()
				if err == nil {
					mu.Lock()
					samples = append(samples, sample{at: time.Now(), bootID: st.BootID})
					mu.Unlock()
				}
			}()
		}
	}()
	// Which host runs a QEMU of the guest, every 50 ms.
	var fencedAt, startedAt time.Time
	var startedOn string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for sctx.Err() == nil {
			for _, o := range p.Hosts {
				if p.QEMUOf(t, o.Name, "hafi") == 0 {
					if o.Name == victim && fencedAt.IsZero() {
						mu.Lock()
						fencedAt = time.Now()
						mu.Unlock()
					}
					continue
				}
				if o.Name != victim && startedAt.IsZero() {
					mu.Lock()
					startedAt, startedOn = time.Now(), o.Name
					mu.Unlock()
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	cut := time.Now()
	if err := h.SetFault(agent.HeartbeatCutFault, true); err != nil {
		t.Fatal(err)
	}
	if err := h.CutManagement(ctx); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			_ = h.RestoreManagement(context.Background())
			_ = h.SetFault(agent.HeartbeatCutFault, false)
		}
	}()
	v := waitRunsElsewhere(t, p, master, "hafi", victim, 2*time.Minute)
	bootID, _ := p.WaitReady(t, v.Status.Host, "hafi", 0)
	t.Logf("cut → guest ready marker on %s: %v", v.Status.Host, time.Since(cut).Round(time.Millisecond))
	ip := p.GuestIP(t, "hafi")
	mu.Lock()
	g.IP, g.URL = ip, StatusURL(ip)
	mu.Unlock()
	p.GuestStatus(t, g)
	time.Sleep(2 * time.Second)
	scancel()
	wg.Wait()

	mu.Lock()
	if fencedAt.IsZero() || startedAt.IsZero() || !fencedAt.Before(startedAt) {
		t.Fatalf("old QEMU gone from %s at %v, new one on %s at %v after the cut: not fenced first",
			victim, fencedAt.Sub(cut), startedOn, startedAt.Sub(cut))
	}
	t.Logf("self-fenced %v after the cut; copy on %s %v after the cut", fencedAt.Sub(cut).Round(time.Millisecond), startedOn, startedAt.Sub(cut).Round(time.Millisecond))
	var firstNew, lastOld time.Time
	for _, s := range samples {
		switch s.bootID {
		case g.BootID:
			lastOld = s.at
		case bootID:
			if firstNew.IsZero() {
				firstNew = s.at
			}
		}
	}
	mu.Unlock()
	if lastOld.IsZero() {
		t.Fatalf("the old boot %s never answered the sampler", g.BootID)
	}
	if firstNew.IsZero() || !lastOld.Before(firstNew) {
		t.Fatalf("old boot %s answered last at %v, new boot %s first at %v (after the cut): two at once", g.BootID, lastOld.Sub(cut), bootID, firstNew.Sub(cut))
	}
	t.Logf("%d samples: old boot last answered %v after the cut, new boot first %v", len(samples), lastOld.Sub(cut).Round(time.Millisecond), firstNew.Sub(cut).Round(time.Millisecond))

	// Return: links back; the host is alive again, runs no copy, and the
	// guest keeps the boot it has elsewhere.
	if err := h.SetFault(agent.HeartbeatCutFault, false); err != nil {
		t.Fatal(err)
	}
	if err := h.RestoreManagement(ctx); err != nil {
		t.Fatal(err)
	}
	restored = true
	waitHostState(t, p, master, victim, v1.HostAlive, 2*time.Minute)
	for range 10 {
		if pid := p.QEMUOf(t, victim, "hafi"); pid != 0 {
			t.Fatalf("a stale copy of hafi runs on %s after its return (pid %d)", victim, pid)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if st := p.GuestStatus(t, g); st.BootID != bootID {
		t.Fatalf("guest boot id %s after %s's return, want %s", st.BootID, victim, bootID)
	}
	vv, err := p.API(t, master).VM(ctx, "hafi")
	if err != nil || vv.Spec.Host == victim {
		t.Fatalf("hafi after the return: %+v %v", vv.Spec, err)
	}
}

// haBareVM creates a running HA VM without an OS on host (placement
// preferred), its disk a small qcow2 file on the shared pool "ha".
func haBareVM(ctx context.Context, t *testing.T, p *Pool, host, name string) {
	t.Helper()
	file := filepath.Join(sharedPoolDir(ctx, t, p, "ha"), name+".qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", file, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = os.Remove(file) })
	c := p.API(t, host)
	spec := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: 64, Disks: []v1.Disk{{Volume: "ha/" + name + ".qcow2"}},
		Placement: v1.PlacementPreferred, PreferredHosts: []string{host}, HA: &v1.HA{Enabled: true}}
	t.Cleanup(func() { p.DeleteVM(t, host, name) })
	op, err := c.CreateVM(ctx, spec, true, time.Minute)
	if err == nil {
		op, err = c.Wait(ctx, op, nil)
	}
	if err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("create %s on %s: %+v (%v)", name, host, op.Error, err)
	}
	if v, err := c.VM(ctx, name); err != nil || v.Spec.Host != host {
		t.Fatalf("%s on %q (%v), want %s", name, v.Spec.Host, err, host)
	}
}

// TestHAMasterKilledDuringFailover: the pool master is killed (SIGKILL of
// its serve) while it fails a dead host over — its fence agent, slowed by
// the test, still running, the plan recorded — and started again (with
// the dead host, its etcd member is needed for a quorum); the next term
// resumes the recorded plan: every HA VM restarts exactly once, on a
// live host, and the failover succeeds.
func TestHAMasterKilledDuringFailover(t *testing.T) {
	p := joinedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	victim, master := haVictim(ctx, t, p)
	var third string
	for _, h := range p.Hosts {
		if h.Name != victim && h.Name != master {
			third = h.Name
		}
	}
	vms := []string{"hamk1", "hamk2"}
	for _, n := range vms {
		haBareVM(ctx, t, p, victim, n)
	}
	slow := filepath.Join(p.Lab.Dir, "fence-slow")
	if err := os.WriteFile(slow, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(slow)
	since := time.Now()
	p.PowerLoss(t, victim)
	restartAfter(t, p, victim)

	// The failover runs its (slow) fence agent: kill the master now.
	deadline := time.Now().Add(2 * time.Minute)
	var fo v1.Operation
	for {
		fos := newFailovers(ctx, t, p, third, victim, since)
		if len(fos) == 1 && fos[0].State == v1.OpRunning && strings.Contains(fos[0].Progress.Phase, "fence agent") {
			fo = fos[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failover of %s running its fence agent: %+v", victim, fos)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sp := p.Host(t, master).ServeProc()
	if err := sp.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-sp.Done()
	restartAfter(t, p, master)
	t.Logf("master %s killed during failover %s (%s)", master, fo.ID, fo.Progress.Phase)
	if err := os.Remove(slow); err != nil {
		t.Fatal(err)
	}
	p.Restart(t, master)

	for _, n := range vms {
		v := waitRunsElsewhere(t, p, third, n, victim, 3*time.Minute)
		t.Logf("%s runs on %s", n, v.Spec.Host)
	}
	deadline = time.Now().Add(time.Minute)
	for {
		got, err := p.API(t, third).Operation(ctx, fo.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got.State == v1.OpSucceeded {
			t.Logf("failover %s: %q", got.ID, got.Warnings)
			break
		}
		if got.Done() || time.Now().After(deadline) {
			t.Fatalf("failover %s: %s %+v", got.ID, got.State, got.Error)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if fos := newFailovers(ctx, t, p, third, victim, since); len(fos) != 1 {
		t.Fatalf("%d failovers of %s, want the one resumed", len(fos), victim)
	}
	ops, err := p.API(t, third).Operations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range vms {
		starts := 0
		for _, o := range ops {
			if o.Kind == "start" && o.Target == n && o.Created.After(since) {
				starts++
			}
		}
		if restarts := countLogLines(t, p, "failover: vm restarts on another host", "vm="+n+" "); starts != 1 || restarts != 1 {
			t.Fatalf("%s: %d start operations, %d restarts logged; want exactly one", n, starts, restarts)
		}
	}
}

// TestHAFrozenAgent: a host whose serve is frozen (SIGSTOP: no lease
// renewal, no heartbeat, no self-fencing) while its QEMUs run on is
// judged dead. Its HA VM whose disk a running QEMU still locks is not
// restarted (the master's image-lock condition); its HA VM without disks
// is (nothing locks it). When the serve thaws, its agent finds the owner
// record of the moved VM naming another host and kills its own stale copy
// (or its fencer, past its deadline, kills both first) — and runs the one
// it still owns.
func TestHAFrozenAgent(t *testing.T) {
	p := joinedPool(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	victim, master := haVictim(ctx, t, p)
	haBareVM(ctx, t, p, victim, "hafz-disk")
	c := p.API(t, victim)
	spec := v1.VMSpec{Name: "hafz-nodisk", CPUs: 1, MemoryMiB: 64,
		Placement: v1.PlacementPreferred, PreferredHosts: []string{victim}, HA: &v1.HA{Enabled: true}}
	t.Cleanup(func() { p.DeleteVM(t, victim, "hafz-nodisk") })
	op, err := c.CreateVM(ctx, spec, true, time.Minute)
	if err == nil {
		op, err = c.Wait(ctx, op, nil)
	}
	if err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("create hafz-nodisk: %+v (%v)", op.Error, err)
	}
	stale := p.QEMUOf(t, victim, "hafz-nodisk")
	if stale == 0 {
		t.Fatalf("no QEMU of hafz-nodisk on %s", victim)
	}
	since := time.Now()
	sp := p.Host(t, victim).ServeProc()
	if err := sp.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			_ = sp.Signal(syscall.SIGCONT)
		}
	}()
	v := waitRunsElsewhere(t, p, master, "hafz-nodisk", victim, 2*time.Minute)
	t.Logf("hafz-nodisk restarted on %s %v after the freeze", v.Spec.Host, time.Since(since).Round(time.Millisecond))
	// The locked one's restart fails once its lock wait is over.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		fos := newFailovers(ctx, t, p, master, victim, since)
		if len(fos) > 0 && fos[0].Done() {
			if fos[0].State != v1.OpSucceeded || !strings.Contains(strings.Join(fos[0].Warnings, "\n"), "hafz-disk: not restarted: image lock") {
				t.Fatalf("failover %s: %s %+v, warnings %q", fos[0].ID, fos[0].State, fos[0].Error, fos[0].Warnings)
			}
			t.Logf("failover: %q", fos[0].Warnings)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("failover of %s not done: %+v", victim, fos)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if vd, err := p.API(t, master).VM(ctx, "hafz-disk"); err != nil || vd.Spec.Host != victim {
		t.Fatalf("hafz-disk moved while its QEMU holds its disk: %+v (%v)", vd.Spec, err)
	}
	for _, o := range p.Hosts {
		if o.Name != victim && p.QEMUOf(t, o.Name, "hafz-disk") != 0 {
			t.Fatalf("a copy of hafz-disk runs on %s", o.Name)
		}
	}

	if err := sp.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	thawed = true
	deadline = time.Now().Add(time.Minute)
	for p.QEMUOf(t, victim, "hafz-nodisk") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the stale copy of hafz-nodisk (pid %d) still runs on %s a minute after the thaw", stale, victim)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("stale copy killed on %s", victim)
	waitHostState(t, p, master, victim, v1.HostAlive, 2*time.Minute)
	// Its status may still say running from before the freeze while the
	// fencer has just killed it: wait for a QEMU of it on its host, then
	// for the status (CI: a one-shot look found none between the two).
	deadline = time.Now().Add(2 * time.Minute)
	for p.QEMUOf(t, victim, "hafz-disk") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("hafz-disk, still %s's, has no QEMU there two minutes after the thaw", victim)
		}
		time.Sleep(200 * time.Millisecond)
	}
	p.WaitVM(t, master, "hafz-disk", victim, time.Minute, v1.StateRunning)
	// Thawed past its fence deadline, the agent's fencer may kill its HA
	// VMs before the stale-copy check does: either way once, and the one
	// it still owns starts again when its lease is back.
	stales := countLogLines(t, p, "killing a stale copy", "vm=hafz-nodisk")
	fenced := countLogLines(t, p, "fencing: lease and storage heartbeat may have lapsed", "vm=hafz-nodisk")
	if stales+fenced != 1 {
		t.Fatalf("hafz-nodisk's stale copy killed %d times by the stale check and %d by the fencer, want once", stales, fenced)
	}
}
