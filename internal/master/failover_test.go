package master

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	v1 "hangar/api/v1"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/ha"
	"hangar/internal/inventory"
	"hangar/internal/qemu"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// putVM records a VM placed on host as the master and its agent leave it:
// spec, owner (epoch), booking and status (running when power is).
func putVM(t *testing.T, s store.Store, name, host string, memMiB int, power string, h *v1.HA, epoch int64) {
	t.Helper()
	spec := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: memMiB, Power: power, CPUModel: qemu.TCGCPUModel, Host: host, HA: h}
	vm.Defaults(&spec, "tcg")
	if err := vm.Validate(spec, 0); err != nil {
		t.Fatal(err)
	}
	state := v1.StateStopped
	if power == v1.PowerRunning {
		state = v1.StateRunning
	}
	if _, err := s.Txn(t.Context(), nil,
		store.PutOp(inventory.VMKey(name), inventory.Marshal(spec), store.AnyRevision),
		store.PutOp(inventory.OwnerKey(name), inventory.Marshal(inventory.Owner{Host: host, Epoch: epoch}), store.AnyRevision),
		store.PutOp(inventory.AllocKey(host, name), inventory.Marshal(allocOf(spec)), store.AnyRevision),
		store.PutOp(inventory.StatusKey(name), inventory.Marshal(v1.VMStatus{State: state, Host: host, PID: 4242}), store.AnyRevision),
	); err != nil {
		t.Fatal(err)
	}
}

func runMaster(t *testing.T, c *clientv3.Client, s store.Store, cfg Config) {
	cfg.Client, cfg.Store, cfg.Log = c, s, testLog(t)
	if cfg.Host == "" {
		cfg.Host = "m1"
	}
	cfg.SessionTTL, cfg.Resync = 2*time.Second, time.Second
	m := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// opsOf lists the operations of kind on target.
func opsOf(t *testing.T, s store.Store, kind, target string) []v1.Operation {
	t.Helper()
	items, _, err := store.ListJSON[v1.Operation](t.Context(), s, inventory.Ops)
	if err != nil {
		t.Fatal(err)
	}
	var out []v1.Operation
	for _, it := range items {
		if it.Value.Kind == kind && it.Value.Target == target {
			out = append(out, it.Value)
		}
	}
	return out
}

// waitFailover waits for the failover of host to end and returns it with
// its plan.
func waitFailover(t *testing.T, s store.Store, host string) (v1.Operation, ha.Plan) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		for _, o := range opsOf(t, s, "failover", host) {
			if o.Done() {
				l := &leader{cfg: Config{Store: s}}
				_, _, plan, err := l.failoverPlan(t.Context(), o.ID)
				if err != nil {
					t.Fatalf("failover %s: %v", o.ID, err)
				}
				return o, plan
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failover of %s ended: %+v", host, opsOf(t, s, "failover", host))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func names(hs []ha.Held) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.VM)
	}
	return out
}

// A host that dies (its lease revoked, no storage heartbeat) is judged
// dead and failed over: the fence agent runs first and its success is
// recorded; HA VMs restart on the live host in priority order, each once
// (owner epoch + 1, spec host, booking, a start for the new host's agent,
// the restart time counted); one no host can take is parked and shown
// lost; a non-HA VM is lost; a stopped one is left alone. The judgement is
// recorded for the host list.
func TestFailoverRestartsHAVMsOnce(t *testing.T) {
	c := etcdtest.Start(t).Client()
	s := store.NewEtcd(c)
	addHost(t, s, "h1", 4, 2048)
	lease := addHostLease(t, s, "hd", 4, 8192, 3*time.Second)
	fakeAgent(t, s, "h1")
	putVM(t, s, "low", "hd", 256, v1.PowerRunning, &v1.HA{Enabled: true}, 1)
	putVM(t, s, "high", "hd", 256, v1.PowerRunning, &v1.HA{Enabled: true, Priority: 10}, 1)
	putVM(t, s, "huge", "hd", 4096, v1.PowerRunning, &v1.HA{Enabled: true}, 1)
	putVM(t, s, "plain", "hd", 256, v1.PowerRunning, nil, 1)
	putVM(t, s, "idle", "hd", 256, v1.PowerStopped, &v1.HA{Enabled: true}, 1)
	runMaster(t, c, s, Config{FenceAgent: "true --host"})
	time.Sleep(time.Second) // the master sees hd alive (its renewal) first
	killed := time.Now()
	if err := s.Revoke(t.Context(), lease); err != nil {
		t.Fatal(err)
	}
	op, plan := waitFailover(t, s, "hd")
	t.Logf("failover %v after the lease ended: %s, warnings %q", time.Since(killed).Round(time.Millisecond), op.State, op.Warnings)
	if op.State != v1.OpSucceeded {
		t.Fatalf("failover: %+v", op)
	}
	if len(op.Warnings) == 0 || !strings.HasPrefix(op.Warnings[0], fenceRecord+"true --host hd") {
		t.Fatalf("fence agent not recorded: %q", op.Warnings)
	}
	var restarted []string
	for _, r := range plan.Restarts {
		restarted = append(restarted, r.VM)
		if r.State != ha.RestartDone || r.Host != "h1" || r.Attempt != 1 {
			t.Fatalf("restart %+v", r)
		}
	}
	if !slices.Equal(restarted, []string{"high", "low"}) || !slices.Equal(names(plan.Parked), []string{"huge"}) ||
		!slices.Equal(names(plan.Lost), []string{"plain"}) || !slices.Equal(plan.Stopped, []string{"idle"}) {
		t.Fatalf("plan: %+v", plan)
	}
	inv := inventory.Inventory{S: s}
	for _, n := range restarted {
		waitStatus(t, s, n, v1.StateRunning)
		sp, _, err := inv.Spec(t.Context(), n)
		if err != nil || sp.Host != "h1" || sp.Power != v1.PowerRunning {
			t.Fatalf("%s: %+v (%v)", n, sp, err)
		}
		if o, _, err := inv.OwnerOf(t.Context(), n); err != nil || o.Host != "h1" || o.Epoch != 2 {
			t.Fatalf("owner of %s: %+v (%v)", n, o, err)
		}
		if starts := opsOf(t, s, "start", n); len(starts) != 1 || starts[0].Host != "h1" {
			t.Fatalf("starts of %s: %+v", n, starts)
		}
		waitGone(t, s, inventory.AllocKey("hd", n))
		if _, err := s.Get(t.Context(), inventory.AllocKey("h1", n)); err != nil {
			t.Fatalf("no booking of %s on h1: %v", n, err)
		}
		var hr inventory.HARestarts
		if _, err := store.GetJSON(t.Context(), s, inventory.HARestartsKey(n), &hr); err != nil || len(hr.Times) != 1 {
			t.Fatalf("restarts of %s: %+v (%v)", n, hr, err)
		}
	}
	for _, n := range []string{"plain", "huge"} {
		st, err := inv.Status(t.Context(), n)
		if err != nil || st.State != v1.StateLost || !strings.Contains(st.Reason, "host hd is dead") {
			t.Fatalf("status of %s: %+v (%v)", n, st, err)
		}
	}
	if sp, _, err := inv.Spec(t.Context(), "huge"); err != nil || !sp.Parked || sp.Host != "hd" {
		t.Fatalf("huge: %+v (%v)", sp, err)
	}
	if st, _ := inv.Status(t.Context(), "idle"); st.State != v1.StateStopped {
		t.Fatalf("idle: %+v", st)
	}
	lv, err := inv.HostLivenesses(t.Context())
	if err != nil || lv["hd"].State != v1.HostDead {
		t.Fatalf("liveness of hd: %+v (%v)", lv, err)
	}
	// Still dead a while later: no second failover, no second start.
	time.Sleep(3 * time.Second)
	if fos := opsOf(t, s, "failover", "hd"); len(fos) != 1 {
		t.Fatalf("%d failovers of hd", len(fos))
	}
	if starts := opsOf(t, s, "start", "low"); len(starts) != 1 {
		t.Fatalf("%d starts of low", len(starts))
	}
}

// A master killed mid-failover leaves the plan recorded with one restart
// done (its records moved in the same transaction) and one pending; the
// next master resumes it: the pending one restarts, the done one is not
// started again.
func TestFailoverResumesRecordedPlan(t *testing.T) {
	c := etcdtest.Start(t).Client()
	s := store.NewEtcd(c)
	addHost(t, s, "h1", 4, 4096)
	addDownHost(t, s, "hd", 4, 4096)
	fakeAgent(t, s, "h1")
	putVM(t, s, "first", "h1", 256, v1.PowerRunning, &v1.HA{Enabled: true, Priority: 5}, 2) // moved by the first master
	putVM(t, s, "second", "hd", 256, v1.PowerRunning, &v1.HA{Enabled: true}, 1)
	plan := ha.Plan{Version: ha.PlanVersion, Host: "hd", Made: time.Now().UTC(),
		Restarts: []ha.Restart{
			{VM: "first", Host: "h1", Priority: 5, Attempt: 1, State: ha.RestartDone},
			{VM: "second", Host: "h1", Attempt: 1, State: ha.RestartPending}},
		Parked: []ha.Held{}, Skipped: []ha.Held{}, Lost: []ha.Held{}, Stopped: []string{}}
	id := submitOp(t, s, "failover", "hd", plan)
	runMaster(t, c, s, Config{})
	op := waitDoneOp(t, s, id)
	if op.State != v1.OpSucceeded {
		t.Fatalf("resumed failover: %+v", op)
	}
	waitStatus(t, s, "second", v1.StateRunning)
	inv := inventory.Inventory{S: s}
	if o, _, err := inv.OwnerOf(t.Context(), "second"); err != nil || o.Host != "h1" || o.Epoch != 2 {
		t.Fatalf("owner of second: %+v (%v)", o, err)
	}
	if o, _, err := inv.OwnerOf(t.Context(), "first"); err != nil || o.Epoch != 2 {
		t.Fatalf("owner of first moved again: %+v (%v)", o, err)
	}
	if starts := opsOf(t, s, "start", "first"); len(starts) != 0 {
		t.Fatalf("first started again: %+v", starts)
	}
	if fos := opsOf(t, s, "failover", "hd"); len(fos) != 1 {
		t.Fatalf("%d failovers of hd", len(fos))
	}
}

// A recorded plan older than the bookings is checked again at each
// restart: a VM whose planned host has filled up meanwhile restarts on
// another, and one no host takes now is parked, not booked past capacity.
func TestFailoverRechecksRecordedPlan(t *testing.T) {
	c := etcdtest.Start(t).Client()
	s := store.NewEtcd(c)
	addHost(t, s, "h1", 4, 1024)
	addHost(t, s, "h2", 4, 2048)
	addDownHost(t, s, "hd", 4, 8192)
	fakeAgent(t, s, "h1")
	fakeAgent(t, s, "h2")
	putVM(t, s, "filler", "h1", 1024, v1.PowerRunning, nil, 1) // placed after the plan was made
	putVM(t, s, "mover", "hd", 512, v1.PowerRunning, &v1.HA{Enabled: true}, 1)
	putVM(t, s, "stuck", "hd", 4096, v1.PowerRunning, &v1.HA{Enabled: true}, 1)
	plan := ha.Plan{Version: ha.PlanVersion, Host: "hd", Made: time.Now().UTC(),
		Restarts: []ha.Restart{
			{VM: "mover", Host: "h1", Attempt: 1, State: ha.RestartPending},
			{VM: "stuck", Host: "h1", Attempt: 1, State: ha.RestartPending}},
		Parked: []ha.Held{}, Skipped: []ha.Held{}, Lost: []ha.Held{}, Stopped: []string{}}
	id := submitOp(t, s, "failover", "hd", plan)
	runMaster(t, c, s, Config{})
	waitDoneOp(t, s, id)
	waitStatus(t, s, "mover", v1.StateRunning)
	inv := inventory.Inventory{S: s}
	if sp, _, err := inv.Spec(t.Context(), "mover"); err != nil || sp.Host != "h2" {
		t.Fatalf("mover: %+v (%v), want it on h2", sp, err)
	}
	if _, err := s.Get(t.Context(), inventory.AllocKey("h1", "mover")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("mover booked on the full h1: %v", err)
	}
	l := &leader{cfg: Config{Store: s}}
	_, _, got, err := l.failoverPlan(t.Context(), id)
	if err != nil || got.Restarts[0].Host != "h2" || got.Restarts[0].State != ha.RestartDone || got.Restarts[1].State != ha.RestartFailed {
		t.Fatalf("recorded plan: %+v (%v)", got, err)
	}
	sp, _, err := inv.Spec(t.Context(), "stuck")
	if err != nil || !sp.Parked || sp.Host != "hd" || sp.Power != v1.PowerStopped {
		t.Fatalf("stuck: %+v (%v), want parked", sp, err)
	}
	if starts := opsOf(t, s, "start", "stuck"); len(starts) != 0 {
		t.Fatalf("stuck started: %+v", starts)
	}
}

// A recorded plan that fails its checks is not acted on: the failover
// fails with the reason and no VM moves. A fence agent that fails refuses
// the restarts.
func TestFailoverRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, fence string
		plan        any
		want        string
	}{
		{"bad plan", "", map[string]any{"version": 9, "host": "hd"}, "version 9"},
		{"fence agent fails", "false", nil, "fence agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t).Client()
			s := store.NewEtcd(c)
			addHost(t, s, "h1", 4, 4096)
			addDownHost(t, s, "hd", 4, 4096)
			putVM(t, s, "web", "hd", 256, v1.PowerRunning, &v1.HA{Enabled: true}, 1)
			var id string
			if tc.plan != nil {
				id = submitOp(t, s, "failover", "hd", tc.plan)
			}
			runMaster(t, c, s, Config{FenceAgent: tc.fence})
			var op v1.Operation
			if id != "" {
				op = waitDoneOp(t, s, id)
			} else {
				op, _ = waitFailover(t, s, "hd")
			}
			if op.State != v1.OpFailed || op.Error == nil || !strings.Contains(op.Error.Message, tc.want) {
				t.Fatalf("failover: %s %+v", op.State, op.Error)
			}
			inv := inventory.Inventory{S: s}
			if sp, _, err := inv.Spec(t.Context(), "web"); err != nil || sp.Host != "hd" {
				t.Fatalf("web moved: %+v (%v)", sp, err)
			}
			if o, _, err := inv.OwnerOf(t.Context(), "web"); err != nil || o.Epoch != 1 {
				t.Fatalf("owner of web: %+v (%v)", o, err)
			}
		})
	}
}
