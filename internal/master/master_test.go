package master

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"

	v1 "hangar/api/v1"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/inventory"
	"hangar/internal/qemu"
	"hangar/internal/store"
	"hangar/internal/vm"
)

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// addHost registers a live host as its agent would: facts, and a liveness
// key under a lease kept alive for the test.
func addHost(t *testing.T, s *store.Etcd, name string, cpus, memMiB int) {
	addHostLease(t, s, name, cpus, memMiB, 30*time.Second)
}

// addDownHost registers a host known to the pool (its facts) that holds
// no liveness key: down.
func addDownHost(t *testing.T, s *store.Etcd, name string, cpus, memMiB int) {
	t.Helper()
	if _, err := s.Put(t.Context(), inventory.HostInfoKey(name), inventory.Marshal(v1.Host{Name: name, CPUs: cpus, MemoryMiB: memMiB}), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
}

// addHostLease is addHost with a lease of ttl, returned (kept alive until
// the test revokes it: the host's power loss).
func addHostLease(t *testing.T, s *store.Etcd, name string, cpus, memMiB int, ttl time.Duration) store.LeaseID {
	t.Helper()
	ctx := t.Context()
	if _, err := s.Put(ctx, inventory.HostInfoKey(name), inventory.Marshal(v1.Host{Name: name, CPUs: cpus, MemoryMiB: memMiB, Alive: true}), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	id, err := s.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutWithLease(ctx, inventory.HostKey(name), []byte("alive"), id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KeepAlive(ctx, id); err != nil {
		t.Fatal(err)
	}
	return id
}

// submitCreate records a new VM and its create operation as the API does
// (edit changes the spec first).
func submitCreate(ctx context.Context, s store.Store, name string, memMiB int, edit ...func(*v1.VMSpec)) (string, error) {
	// The API gives a VM that names no model the pool's (max cannot migrate).
	spec := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: memMiB, Power: v1.PowerStopped, CPUModel: qemu.TCGCPUModel}
	for _, e := range edit {
		e(&spec)
	}
	vm.Defaults(&spec, "tcg")
	if err := vm.Validate(spec, 0); err != nil {
		return "", err
	}
	now := time.Now().UTC()
	op := v1.Operation{ID: uuid.Must(uuid.NewV7()).String(), Kind: "create", Target: name, State: v1.OpPending,
		Created: now, Updated: now, Args: inventory.Marshal(v1.CreateArgs{})}
	_, err := s.Txn(ctx, nil, append(inventory.NewOpWrites(op), store.PutOp(inventory.VMKey(name), inventory.Marshal(spec), store.MustNotExist))...)
	return op.ID, err
}

func startMaster(t *testing.T, c *clientv3.Client, s store.Store, host string) (*Master, context.CancelFunc, <-chan struct{}) {
	m := New(Config{Client: c, Store: s, Host: host, Log: testLog(t), SessionTTL: 2 * time.Second, Resync: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return m, cancel, done
}

func waitOp(t *testing.T, s store.Store, id string, within time.Duration) v1.Operation {
	t.Helper()
	inv := inventory.Inventory{S: s}
	deadline := time.Now().Add(within)
	for {
		op, _, err := inv.Op(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if op.Done() || op.Host != "" {
			return op
		}
		if time.Now().After(deadline) {
			t.Fatalf("operation %s (%s %s) still %s without a host", id, op.Kind, op.Target, op.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Fifty creates submitted at once to a pool with room for exactly twelve
// VMs, with two master candidates: twelve are placed, no host is booked
// past its memory, every other create fails as unavailable and leaves no
// VM record behind.
func TestConcurrentCreatesNeverOvercommit(t *testing.T) {
	c := etcdtest.Start(t).Client()
	s := store.NewEtcd(c)
	addHost(t, s, "h1", 4, 2048) // 8 × 256 MiB
	addHost(t, s, "h2", 4, 1024) // 4 × 256 MiB
	startMaster(t, c, s, "h1")
	startMaster(t, c, s, "h2")

	const n = 50
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := submitCreate(t.Context(), s, fmt.Sprintf("vm%02d", i), 256)
			ids[i] = id
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	placed := map[string]int{}
	failed := 0
	for i, id := range ids {
		op := waitOp(t, s, id, 60*time.Second)
		name := fmt.Sprintf("vm%02d", i)
		switch {
		case op.Host != "":
			placed[op.Host]++
			spec, _, err := inventory.Inventory{S: s}.Spec(t.Context(), name)
			if err != nil || spec.Host != op.Host {
				t.Fatalf("%s: operation placed on %q, spec on %q (%v)", name, op.Host, spec.Host, err)
			}
			o, _, err := inventory.Inventory{S: s}.OwnerOf(t.Context(), name)
			if err != nil || o.Host != op.Host || o.Epoch != 1 {
				t.Fatalf("%s: owner %+v (%v), want host %s epoch 1", name, o, err, op.Host)
			}
			if _, err := s.Get(t.Context(), inventory.TaskKey(op.Host, id)); err != nil {
				t.Fatalf("%s: no task for %s: %v", name, op.Host, err)
			}
		case op.State == v1.OpFailed:
			failed++
			if op.Error == nil || op.Error.Code != v1.CodeFailedPrecondition || op.Error.Field != "memoryMiB" {
				t.Fatalf("%s: failed with %+v, want failed_precondition on memoryMiB (short of memory)", name, op.Error)
			}
			if _, err := s.Get(t.Context(), inventory.VMKey(name)); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("%s: record of an unplaced vm left behind (%v)", name, err)
			}
		default:
			t.Fatalf("%s: operation %s %+v", name, op.State, op)
		}
	}
	if placed["h1"] != 8 || placed["h2"] != 4 || failed != n-12 {
		t.Fatalf("placed %v, failed %d; want h1:8 h2:4, %d failed", placed, failed, n-12)
	}
	allocs, _, err := store.ListJSON[inventory.Alloc](t.Context(), s, inventory.Allocs)
	if err != nil {
		t.Fatal(err)
	}
	booked := map[string]int{}
	for _, a := range allocs {
		h, _, _ := allocKeyParts(a.Key)
		booked[h] += a.Value.MemoryMiB
	}
	if booked["h1"] != 2048 || booked["h2"] != 1024 {
		t.Fatalf("booked %v MiB, want h1:2048 h2:1024", booked)
	}
}

// A master whose lease ended is deposed: another candidate is elected and
// takes over the open work, and the old term's writes fail.
func TestDeposedMasterWritesFail(t *testing.T) {
	member := etcdtest.Start(t)
	s := store.NewEtcd(member.Client())
	addHost(t, s, "h1", 4, 4096)

	// Candidate a has its own client: closing it is a dead process.
	ca, err := clientv3.New(clientv3.Config{Endpoints: member.Client().Endpoints(), DialTimeout: 5 * time.Second,
		TLS: nil})
	if err != nil {
		t.Skipf("second client: %v", err)
	}
	sa := store.NewEtcd(ca)
	ma, _, _ := startMaster(t, ca, sa, "a")
	waitLeading(t, ma)
	mb, _, _ := startMaster(t, member.Client(), s, "b")

	// a's term, as its leader struct holds it.
	leaderName, err := LeaderOf(t.Context(), s)
	if err != nil || leaderName != "a" {
		t.Fatalf("leader %q (%v), want a", leaderName, err)
	}
	resp, err := member.Client().Get(t.Context(), inventory.Election+"/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
	if err != nil {
		t.Fatal(err)
	}
	old := &leader{cfg: Config{Store: s}, fence: store.Cond{Key: string(resp.Kvs[0].Key), ExpectRev: resp.Kvs[0].CreateRevision}, log: testLog(t)}
	if _, err := old.Commit(t.Context(), nil, store.PutOp("/hangar/test/probe", []byte("1"), store.AnyRevision)); err != nil {
		t.Fatalf("commit while leading: %v", err)
	}

	_ = ca.Close() // a dies; its lease runs out
	start := time.Now()
	waitLeading(t, mb)
	t.Logf("b elected %v after a died", time.Since(start).Round(time.Millisecond))
	if _, err := old.Commit(t.Context(), nil, store.PutOp("/hangar/test/probe", []byte("late"), store.AnyRevision)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("late commit of the deposed master: %v, want a conflict", err)
	}
	// The new master places what was submitted while it took over.
	id, err := submitCreate(t.Context(), s, "after", 256)
	if err != nil {
		t.Fatal(err)
	}
	if op := waitOp(t, s, id, 30*time.Second); op.Host != "h1" {
		t.Fatalf("after takeover: %+v", op)
	}
}

func waitLeading(t *testing.T, m *Master) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !m.Leading() {
		if time.Now().After(deadline) {
			t.Fatalf("%s not elected", m.cfg.Host)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// submitOp records an operation on a placed VM as the API does (a kind
// the master drives gets no host and no task).
func submitOp(t *testing.T, s store.Store, kind, target string, args any) string {
	t.Helper()
	now := time.Now().UTC()
	op := v1.Operation{ID: uuid.Must(uuid.NewV7()).String(), Kind: kind, Target: target, State: v1.OpPending,
		Created: now, Updated: now, Args: inventory.Marshal(args)}
	if _, err := s.Txn(t.Context(), nil, inventory.NewOpWrites(op)...); err != nil {
		t.Fatal(err)
	}
	return op.ID
}

// A migrate operation becomes a migration record that the master drives:
// one to a host that is down is refused by the blocker check and leaves no
// record and no booking on the target; one to a live host books the target
// and waits, across a change of master, for the target's agent.
func TestMigrationStartAndResume(t *testing.T) {
	c := etcdtest.Start(t).Client()
	s := store.NewEtcd(c)
	addHost(t, s, "h1", 4, 2048)
	addHost(t, s, "h2", 4, 2048)
	addDownHost(t, s, "h3", 4, 2048)
	_, stop1, done1 := startMaster(t, c, s, "m1")
	id, err := submitCreate(t.Context(), s, "web", 256)
	if err != nil {
		t.Fatal(err)
	}
	placed := waitOp(t, s, id, 30*time.Second)
	src := placed.Host
	if src == "" {
		t.Fatalf("create not placed: %+v", placed)
	}
	// Its agent reports it running (only a running VM migrates live).
	if _, err := s.Put(t.Context(), inventory.StatusKey("web"), inventory.Marshal(v1.VMStatus{State: v1.StateRunning, Host: src}), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	dst := "h1"
	if src == "h1" {
		dst = "h2"
	}
	inv := inventory.Inventory{S: s}
	waitDone := func(id string) v1.Operation {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			op, _, err := inv.Op(t.Context(), id)
			if err != nil {
				t.Fatal(err)
			}
			if op.Done() {
				return op
			}
			if time.Now().After(deadline) {
				t.Fatalf("operation %s still %s (%s)", id, op.State, op.Progress.Phase)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	down := submitOp(t, s, "migrate", "web", v1.MigrateArgs{To: "h3"})
	op := waitDone(down)
	if op.State != v1.OpFailed || op.Error == nil || !strings.Contains(op.Error.Message, "h3") {
		t.Fatalf("migration to a down host: %+v", op)
	}
	waitGone(t, s, inventory.MigrationKey("web"))
	waitGone(t, s, inventory.AllocKey("h3", "web"))

	live := submitOp(t, s, "migrate", "web", v1.MigrateArgs{To: dst})
	waitPhase(t, s, "web", "pending")
	// The source agent's report: no disk on a local pool.
	if _, err := s.Put(t.Context(), inventory.MigrationPartKey("web", "disks"), []byte(`{"updated":"2026-01-01T00:00:00Z"}`), store.MustNotExist); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, s, "web", "checked")
	if _, err := s.Get(t.Context(), inventory.AllocKey(dst, "web")); err != nil {
		t.Fatalf("target not booked: %v", err)
	}
	// The master dies; the next one picks the migration up from its record.
	stop1()
	<-done1
	startMaster(t, c, s, "m2")
	time.Sleep(3 * time.Second)
	op, _, err = inv.Op(t.Context(), live)
	if err != nil || op.State != v1.OpRunning {
		t.Fatalf("migration after a change of master: %+v (%v)", op, err)
	}
	waitPhase(t, s, "web", "checked")
	if o, _, err := inv.OwnerOf(t.Context(), "web"); err != nil || o.Host != src || o.Epoch != 1 {
		t.Fatalf("owner before any switch-over: %+v (%v)", o, err)
	}
}

func waitGone(t *testing.T, s store.Store, key string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := s.Get(t.Context(), key); errors.Is(err, store.ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still there", key)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitPhase(t *testing.T, s store.Store, name, phase string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var rec struct {
			Phase string `json:"phase"`
		}
		if _, err := store.GetJSON(t.Context(), s, inventory.MigrationKey(name), &rec); err == nil && rec.Phase == phase {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration of %s not in phase %s (%+v)", name, phase, rec)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeAgent finishes the operations tasked to host as its agent would,
// with the status they leave (only stop and start are expected here).
func fakeAgent(t *testing.T, s store.Store, host string) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		inv := inventory.Inventory{S: s}
		for ctx.Err() == nil {
			kvs, _, err := s.List(ctx, inventory.TaskPrefix(host))
			if err == nil {
				for _, kv := range kvs {
					op, rev, err := inv.Op(ctx, string(kv.Value))
					if err != nil || op.Done() || (op.Kind != "stop" && op.Kind != "start") {
						continue
					}
					state := v1.StateStopped
					if op.Kind == "start" {
						state = v1.StateRunning
					}
					_, _ = s.Put(ctx, inventory.StatusKey(op.Target), inventory.Marshal(v1.VMStatus{State: state, Host: host}), store.AnyRevision)
					op.State = v1.OpSucceeded
					_, _ = inv.PutOp(ctx, op, rev)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
}

// Evacuating a host with shutdown parks its running VM (a clean stop on
// its host); a parked VM whose disks need no host (here: none) starts at
// once on another host, its owner's epoch moved on and its booking moved
// with it. Taking the host out of maintenance starts a VM parked there.
func TestEvacuateParksAndUnparks(t *testing.T) {
	c := etcdtest.Start(t).Client()
	s := store.NewEtcd(c)
	addHost(t, s, "h1", 4, 2048)
	fakeAgent(t, s, "h1")
	startMaster(t, c, s, "m1")
	inv := inventory.Inventory{S: s}
	id, err := submitCreate(t.Context(), s, "web", 256)
	if err != nil {
		t.Fatal(err)
	}
	if op := waitOp(t, s, id, 30*time.Second); op.Host != "h1" {
		t.Fatalf("create: %+v", op)
	}
	if _, err := s.Put(t.Context(), inventory.StatusKey("web"), inventory.Marshal(v1.VMStatus{State: v1.StateRunning, Host: "h1"}), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	ev := submitOp(t, s, "evacuate", "h1", v1.EvacuateArgs{Shutdown: true})
	op := waitDoneOp(t, s, ev)
	if op.State != v1.OpSucceeded || len(op.Warnings) != 1 || !strings.Contains(op.Warnings[0], "parked") {
		t.Fatalf("evacuation: %+v", op)
	}
	if _, err := s.Get(t.Context(), inventory.MaintenanceKey("h1")); err != nil {
		t.Fatalf("h1 not in maintenance: %v", err)
	}
	spec, _, err := inv.Spec(t.Context(), "web")
	if err != nil || !spec.Parked || spec.Power != v1.PowerStopped || spec.Host != "h1" {
		t.Fatalf("after evacuation: %+v (%v)", spec, err)
	}

	// Out of maintenance: the VM starts on its host again.
	if err := s.Delete(t.Context(), inventory.MaintenanceKey("h1"), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	waitSpec(t, s, "web", func(sp v1.VMSpec) bool { return !sp.Parked && sp.Power == v1.PowerRunning && sp.Host == "h1" })

	// Evacuated again with a second host in the pool: parked, then started
	// on h2 at once (nothing of it stays on h1).
	addHost(t, s, "h2", 4, 2048)
	fakeAgent(t, s, "h2")
	waitStatus(t, s, "web", v1.StateRunning)
	ev = submitOp(t, s, "evacuate", "h1", v1.EvacuateArgs{Shutdown: true})
	if op := waitDoneOp(t, s, ev); op.State != v1.OpSucceeded {
		t.Fatalf("second evacuation: %+v", op)
	}
	waitSpec(t, s, "web", func(sp v1.VMSpec) bool { return !sp.Parked && sp.Host == "h2" })
	if o, _, err := inv.OwnerOf(t.Context(), "web"); err != nil || o.Host != "h2" || o.Epoch != 2 {
		t.Fatalf("owner after the move: %+v (%v)", o, err)
	}
	waitGone(t, s, inventory.AllocKey("h1", "web"))
	if _, err := s.Get(t.Context(), inventory.AllocKey("h2", "web")); err != nil {
		t.Fatalf("no booking on h2: %v", err)
	}
	waitStatus(t, s, "web", v1.StateRunning)
}

func waitDoneOp(t *testing.T, s store.Store, id string) v1.Operation {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		op, _, err := inventory.Inventory{S: s}.Op(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if op.Done() {
			return op
		}
		if time.Now().After(deadline) {
			t.Fatalf("operation %s still %s (%s)", id, op.State, op.Progress.Phase)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitSpec(t *testing.T, s store.Store, name string, ok func(v1.VMSpec) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		sp, _, err := inventory.Inventory{S: s}.Spec(t.Context(), name)
		if err == nil && ok(sp) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("spec of %s: %+v (%v)", name, sp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitStatus(t *testing.T, s store.Store, name, state string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := inventory.Inventory{S: s}.Status(t.Context(), name)
		if err == nil && st.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("status of %s: %+v (%v), want %s", name, st, err, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A create placed on a host that dies before its agent claims it is taken
// back and placed on a live host: its booking, owner record and task move.
func TestCreateOnDeadHostPlacedAgain(t *testing.T) {
	c := etcdtest.Start(t).Client()
	s := store.NewEtcd(c)
	addHost(t, s, "h1", 4, 1024)
	// hd: the roomiest host, so the first placement goes there; its lease
	// is the test's to end.
	addDownHost(t, s, "hd", 8, 8192)
	lease, err := s.Grant(t.Context(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutWithLease(t.Context(), inventory.HostKey("hd"), []byte("alive"), lease); err != nil {
		t.Fatal(err)
	}
	startMaster(t, c, s, "m1")
	id, err := submitCreate(t.Context(), s, "web", 256)
	if err != nil {
		t.Fatal(err)
	}
	if op := waitOp(t, s, id, 30*time.Second); op.Host != "hd" {
		t.Fatalf("first placement: %+v", op)
	}
	if err := s.Revoke(t.Context(), lease); err != nil { // hd dies
		t.Fatal(err)
	}
	inv := inventory.Inventory{S: s}
	deadline := time.Now().Add(30 * time.Second)
	for {
		op, _, err := inv.Op(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if op.Host == "h1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("create still on %q (%s)", op.Host, op.Progress.Phase)
		}
		time.Sleep(20 * time.Millisecond)
	}
	spec, _, err := inv.Spec(t.Context(), "web")
	if err != nil || spec.Host != "h1" {
		t.Fatalf("spec on %q (%v)", spec.Host, err)
	}
	if o, _, err := inv.OwnerOf(t.Context(), "web"); err != nil || o.Host != "h1" {
		t.Fatalf("owner %+v (%v)", o, err)
	}
	waitGone(t, s, inventory.AllocKey("hd", "web"))
	waitGone(t, s, inventory.TaskKey("hd", id))
	if _, err := s.Get(t.Context(), inventory.TaskKey("h1", id)); err != nil {
		t.Fatalf("no task on h1: %v", err)
	}
}
