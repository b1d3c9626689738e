// Package agent is the host agent: it runs the operations placed on its
// host, turns VM specs into QEMU processes, re-adopts them after a restart,
// applies restart policies and reports observed status.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "hangar/api/v1"
	"hangar/internal/capacity"
	"hangar/internal/cgroup"
	"hangar/internal/errdefs"
	"hangar/internal/ha"
	"hangar/internal/inventory"
	"hangar/internal/qemu"
	"hangar/internal/qemu/config"
	"hangar/internal/secrets"
	"hangar/internal/storage"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// Config of an agent.
type Config struct {
	Host    string
	DataDir string // serial logs under DataDir/logs/<vm>
	RunDir  string // sockets under RunDir/vms/<vm>
	Store   store.Store
	Caps    qemu.Capabilities
	Pool    *storage.Pool
	// HostPaths is the policy for host files and pool directories (import
	// directories); nil allows files from the pools only.
	HostPaths *storage.HostPaths
	Log       *slog.Logger
	// StopTimeout is how long a graceful stop waits for the guest (default 60 s).
	StopTimeout time.Duration
	// LeaseTTL of the host's liveness key (default ha.DefaultLeaseTTL, 5 s).
	LeaseTTL time.Duration
	// SelfFence lets the agent kill its HA VMs when its lease and storage
	// heartbeat may both have lapsed (fence.go); hangar serve turns it on
	// (the pool master restarts a dead host's HA VMs elsewhere). The
	// heartbeats are written either way.
	SelfFence bool
	// FaultDir, when set (serve's hidden --test-faults), is where tests
	// switch faults on: a file heartbeat-cut there makes every storage
	// heartbeat write fail, as a storage cut would. Never set otherwise.
	FaultDir string
	// RestartLimit restarts within RestartWindow, then the VM stays crashed.
	RestartLimit  int
	RestartWindow time.Duration
	// IOWorkers bounds concurrent copies, conversions and imports (default 2).
	IOWorkers int
	// Secrets opens sealed cloud-init user-data (the manager seals it).
	Secrets *secrets.Box
	// VMIDs is the range QEMU uids and file groups come from (default
	// inventory.DefaultIDRange).
	VMIDs inventory.IDRange
	// Address is where other hosts reach this host's TLS API (serve
	// --listen), published in the host facts ("" without one).
	Address string
	// Role is this host's part in the manager (v1.RoleMember, …),
	// published in the host facts.
	Role string
	// HistoryInterval between usage samples (default
	// DefaultHistoryInterval, 10 s; tests set it shorter) and
	// HistorySamples kept per VM and for the host (default 360).
	HistoryInterval time.Duration
	HistorySamples  int
}

// Agent is one host's agent.
type Agent struct {
	cfg   Config
	inv   records // every record read is checked (records.go)
	facts v1.Host
	io    *ioPool
	// cgroups holds the VMs' cgroups (limits.go); nil: unavailable here.
	cgroups *cgroup.Manager

	mu       sync.Mutex
	vms      map[string]*machine
	queued   map[string]bool      // op ids handed to workers
	handlers map[string]opHandler // by operation kind (opHandlers)
	ctx      context.Context
	workers  sync.WaitGroup
	ready    chan struct{}
	live     liveSet      // running QEMUs, for VMStats (stats.go)
	ioCounts ioCounts     // I/O errors per VM, for /metrics (ioerror.go)
	lease    atomic.Int64 // the host's lease (store.LeaseID)
	fence    *fencer      // HA: heartbeats and self-fencing (fence.go)
	// fencedVMs names the VMs self-fencing killed (name → true): their
	// exit is not restarted by policy; once the host holds a lease again
	// they start here if their owner record still names this host.
	fencedVMs sync.Map
	opDur     *prometheus.HistogramVec // durations of finished operations
	history   *history                 // sampled usage (history.go)

	// crashAt names a point of create+start at which the agent kills its
	// own process with SIGKILL (crashPoint). Test-only: the kill-9
	// integration test sets HANGAR_TEST_CRASH_AT; nothing else does.
	crashAt string
	// onPoint, when set (by tests, before Run), is called at each named
	// point of crashPoint.
	onPoint func(point string)
}

// New returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 60 * time.Second
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = ha.DefaultLeaseTTL
	}
	if cfg.RestartLimit == 0 {
		cfg.RestartLimit = 5
	}
	if cfg.RestartWindow == 0 {
		cfg.RestartWindow = 10 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.IOWorkers == 0 {
		cfg.IOWorkers = 2
	}
	if cfg.HistoryInterval <= 0 {
		cfg.HistoryInterval = DefaultHistoryInterval
	}
	if cfg.HistorySamples <= 0 {
		cfg.HistorySamples = DefaultHistorySamples
	}
	facts, err := HostFacts(cfg.Host, cfg.Caps)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, facts: facts, io: newIOPool(cfg.IOWorkers),
		vms: map[string]*machine{}, queued: map[string]bool{}, handlers: opHandlers(), ready: make(chan struct{}), opDur: newOpHistogram(),
		history: newHistory(cfg.HistoryInterval, cfg.HistorySamples),
		crashAt: os.Getenv("HANGAR_TEST_CRASH_AT")}
	a.inv = records{Inventory: inventory.Inventory{S: cfg.Store}, a: a}
	a.cgroups = a.newCgroups()
	a.fence = a.newFencer(func() store.LeaseID { return store.LeaseID(a.lease.Load()) })
	return a, nil
}

// crashPoint kills this process with SIGKILL, as a crash would, when the
// kill-9 test asked for a crash at point (HANGAR_TEST_CRASH_AT=point).
func (a *Agent) crashPoint(point string) {
	if a.onPoint != nil {
		a.onPoint(point)
	}
	if a.crashAt != "" && a.crashAt == point {
		a.cfg.Log.Warn("HANGAR_TEST_CRASH_AT: killing hangar serve", "point", point)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL cannot be caught: nothing runs after it
	}
}

// Facts returns this host's facts.
func (a *Agent) Facts() v1.Host { return a.facts }

// Ready is closed once the agent has registered, re-adopted its VMs and
// picked up its interrupted operations.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Run registers the host, recovers its VMs and operations, and serves
// until ctx ends. QEMU processes keep running after Run returns.
func (a *Agent) Run(ctx context.Context) error {
	a.ctx = ctx
	log := a.cfg.Log
	if a.cfg.Caps.Accel == "kvm" {
		// The named CPU models this host runs: the pool's CPU model is the
		// newest one every host runs (qemu.PoolCPUModel).
		models, err := qemu.UsableCPUModels(ctx, a.cfg.Caps.Binary, "kvm")
		if err != nil {
			log.Warn("probe usable cpu models", "err", err)
		}
		a.facts.UsableCPUModels = models
	}
	if err := a.publishFacts(ctx); err != nil {
		return err
	}
	lost, err := a.holdLease(ctx)
	if err != nil {
		return err
	}
	go a.fence.run(ctx)
	specs, _, _, err := a.inv.Specs(ctx)
	if err != nil {
		return fmt.Errorf("agent start: %w", err)
	}
	// Before anything is adopted or started: a QEMU left here of a VM
	// another host owns now (restarted elsewhere while this host was cut
	// off) is killed (stale.go).
	for _, name := range a.localRunDirs() {
		a.enqueue(name, task{stale: true})
	}
	for _, s := range specs {
		if s.Host == a.cfg.Host {
			a.enqueue(s.Name, task{recover: true})
		}
	}
	go a.watchOwners(ctx)
	rev, err := a.queueOps(ctx)
	if err != nil {
		return fmt.Errorf("agent start: %w", err)
	}
	for _, name := range a.journaledVMs() {
		a.enqueue(name, task{migration: true}) // an incoming migration this host took part in
	}
	go a.watchMigrations(ctx)
	go a.sampleHistory(ctx)
	close(a.ready)
	log.Info("agent ready", "host", a.cfg.Host, "accel", a.cfg.Caps.Accel, "qemu", a.cfg.Caps.Version)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		wctx, cancel := context.WithCancel(ctx)
		// Only this host's tasks: each names an operation for this agent
		// (the pool master or the API writes it with the operation).
		events := a.cfg.Store.Watch(wctx, inventory.TaskPrefix(a.cfg.Host), rev+1)
	watch:
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					break watch
				}
				rev = ev.KV.Revision
				if ev.Type == store.EventPut {
					a.queueTask(ctx, ev.KV)
				}
			case <-tick.C:
				if err := a.publishFacts(ctx); err != nil && ctx.Err() == nil {
					log.Warn("publish host facts", "err", err)
				}
				if err := a.queueSourceLeftovers(ctx); err != nil && ctx.Err() == nil {
					log.Warn("list leftover files", "err", err)
				}

			case <-prune.C:
				if err := a.pruneOps(ctx); err != nil && ctx.Err() == nil {
					log.Warn("prune operations", "err", err)
				}
			case <-lost:
				log.Warn("host lease lost, registering again", "host", a.cfg.Host)
				if lost, err = a.holdLease(ctx); err != nil && ctx.Err() == nil {
					log.Error("register host", "err", err)
					lost = retryAfter(time.Second)
				} else if err == nil {
					a.fencedVMs.Range(func(k, _ any) bool {
						a.enqueue(k.(string), task{restart: true}) // refused if another host owns it now
						return true
					})
					for name := range a.live.all() {
						a.enqueue(name, task{report: true}) // the master may have marked it lost meanwhile
					}
				}
			case <-ctx.Done():
				cancel()
				a.workers.Wait()
				return nil
			}
		}
		cancel()
		if ctx.Err() != nil {
			a.workers.Wait()
			return nil
		}
		// The watch ended (compaction or a lost connection): catch up.
		if rev, err = a.queueOps(ctx); err != nil {
			log.Warn("relist operations", "err", err)
			time.Sleep(time.Second)
		}
	}
}

func retryAfter(d time.Duration) <-chan struct{} {
	c := make(chan struct{})
	time.AfterFunc(d, func() { close(c) })
	return c
}

// holdLease writes the host's liveness key with a lease and keeps it alive.
func (a *Agent) holdLease(ctx context.Context) (<-chan struct{}, error) {
	sent := time.Now()
	id, err := a.cfg.Store.Grant(ctx, a.cfg.LeaseTTL)
	if err != nil {
		return nil, fmt.Errorf("register host %s: %w", a.cfg.Host, err)
	}
	a.lease.Store(int64(id))
	a.fence.granted(sent)
	if _, err := a.cfg.Store.PutWithLease(ctx, inventory.HostKey(a.cfg.Host), []byte(time.Now().UTC().Format(time.RFC3339)), id); err != nil {
		return nil, fmt.Errorf("register host %s: %w", a.cfg.Host, err)
	}
	lost, err := a.cfg.Store.KeepAlive(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("register host %s: %w", a.cfg.Host, err)
	}
	return lost, nil
}

func (a *Agent) publishFacts(ctx context.Context) error {
	h := a.facts
	specs, _, _, err := a.inv.Specs(ctx)
	if err != nil {
		return err
	}
	for _, s := range specs {
		if s.Host == a.cfg.Host {
			h.VMs++
		}
	}
	allocs, err := a.inv.AllocsByHost(ctx)
	if err != nil {
		return err
	}
	booked := capacity.Allocated(specs, allocs)[a.cfg.Host]
	h.AllocatedCPUs, h.AllocatedMemoryMiB = booked.CPUs, booked.MemoryMiB
	if pools, rev, err := a.allPoolsAt(ctx); err == nil {
		h.Storage, h.StorageRevision = storageUsage(pools), rev
	}
	h.Alive = true
	h.Address, h.Role = a.cfg.Address, a.cfg.Role
	h.UpdatedAt = time.Now().UTC()
	if _, err := a.cfg.Store.Put(ctx, inventory.HostInfoKey(a.cfg.Host), inventory.Marshal(h), store.AnyRevision); err != nil {
		return fmt.Errorf("publish host %s: %w", a.cfg.Host, err)
	}
	return nil
}

// OpRetention is how long finished operations are kept.
const OpRetention = 24 * time.Hour

// pruneOps deletes this host's operations that finished more than
// OpRetention ago.
func (a *Agent) pruneOps(ctx context.Context) error {
	ops, revs, _, err := a.inv.Ops(ctx)
	if err != nil {
		return err
	}
	cut := time.Now().Add(-OpRetention)
	for i, op := range ops {
		if vm.ValidateOpID("id", op.ID) != nil {
			continue // refused when it was queued; not ours to clean up
		}
		if op.Host == a.cfg.Host && op.Done() && op.Updated.Before(cut) {
			if _, err := a.cfg.Store.Txn(ctx, nil, store.DeleteOp(inventory.OpKey(op.ID), revs[i]),
				store.DeleteOp(inventory.TaskKey(a.cfg.Host, op.ID), store.AnyRevision)); err != nil && !errors.Is(err, store.ErrConflict) {
				return err
			}
		}
	}
	return nil
}

// queueOps hands every unfinished operation of this host to its VM's worker.
func (a *Agent) queueOps(ctx context.Context) (int64, error) {
	kvs, rev, err := a.cfg.Store.List(ctx, inventory.Ops)
	if err != nil {
		return 0, err
	}
	for _, kv := range kvs {
		a.queueOp(kv)
	}
	return rev, nil
}

// queueTask queues the operation a task of this host names.
func (a *Agent) queueTask(ctx context.Context, task store.KV) {
	// The operation is read by the id the task names and checked by
	// queueOp like any other (a bad one is refused and marked failed).
	id := string(task.Value)
	if task.Key != inventory.TaskKey(a.cfg.Host, id) {
		a.cfg.Log.Warn("ignoring a task record that does not name its own operation", "key", task.Key)
		return
	}
	kv, err := a.cfg.Store.Get(ctx, inventory.OpKey(id))
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
			a.cfg.Log.Warn("read the operation of a task", "op", id, "err", err)
		}
		return
	}
	a.queueOp(kv)
}

func (a *Agent) queueOp(kv store.KV) {
	var op v1.Operation
	if err := json.Unmarshal(kv.Value, &op); err != nil {
		a.cfg.Log.Warn("bad operation record", "key", kv.Key, "err", err)
		return
	}
	if op.Host != a.cfg.Host || op.Done() {
		return
	}
	if err := checkOp(kv.Key, op); err != nil {
		a.refuseOp(a.ctx, kv.Key, op, kv.Revision, err)
		return
	}
	a.mu.Lock()
	if a.queued[op.ID] {
		a.mu.Unlock()
		return
	}
	a.queued[op.ID] = true
	a.mu.Unlock()
	a.enqueue(op.Target, task{op: op.ID})
}

// refuseOp records that an operation of this host failed its checks: the
// record is marked failed (if it did not change meanwhile) and nothing
// else is touched.
func (a *Agent) refuseOp(ctx context.Context, key string, op v1.Operation, rev int64, err error) {
	a.cfg.Log.Warn("refusing operation", "key", key, "kind", op.Kind, "target", op.Target, "err", err)
	op.State, op.Updated = v1.OpFailed, time.Now().UTC()
	op.Error = &v1.Error{Code: v1.CodeInvalidArgument, Message: "refused by the agent: " + err.Error()}
	if _, err := a.cfg.Store.Put(ctx, key, inventory.Marshal(op), rev); err != nil && ctx.Err() == nil {
		a.cfg.Log.Warn("record refused operation", "key", key, "err", err)
	}
}

func (a *Agent) opFinished(id string) {
	a.mu.Lock()
	delete(a.queued, id)
	a.mu.Unlock()
}

// enqueue hands a task to the VM's worker, starting the worker if needed.
func (a *Agent) enqueue(name string, t task) {
	if vm.ValidateName("name", name) != nil && vm.ValidateVolumeRef("name", name) != nil {
		a.cfg.Log.Error("refusing work for an invalid vm or volume name", "name", name)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ctx.Err() != nil {
		return
	}
	m, ok := a.vms[name]
	if !ok {
		m = &machine{a: a, name: name, wake: make(chan struct{}, 1), log: a.cfg.Log.With("vm", name)}
		a.vms[name] = m
		a.workers.Add(1)
		go m.loop()
	}
	m.queue = append(m.queue, t)
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// retire ends a deleted VM's worker unless new work arrived for it.
func (a *Agent) retire(m *machine) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(m.queue) > 0 {
		return false
	}
	if a.vms[m.name] == m {
		delete(a.vms, m.name)
	}
	return true
}

// runDir is a VM's directory of sockets and pidfile; an invalid name (one
// that could leave RunDir/vms) is refused.
func (a *Agent) runDir(name string) (string, error) {
	if err := vm.ValidateName("name", name); err != nil {
		return "", fmt.Errorf("run dir: %w", err)
	}
	return filepath.Join(a.cfg.RunDir, "vms", name), nil
}

// logDir is a VM's directory of logs; an invalid name is refused.
func (a *Agent) logDir(name string) (string, error) {
	if err := vm.ValidateName("name", name); err != nil {
		return "", fmt.Errorf("log dir: %w", err)
	}
	return filepath.Join(a.cfg.DataDir, "logs", name), nil
}

// SerialLogPath is where a VM's serial console is logged ("" for an
// invalid name).
func (a *Agent) SerialLogPath(name string) string {
	dir, err := a.logDir(name)
	if err != nil {
		return ""
	}
	return filepath.Join(dir, config.SerialLog)
}

// OpenConsole connects to a running VM's serial console. QEMU serves one
// client at a time.
func (a *Agent) OpenConsole(ctx context.Context, name string) (net.Conn, error) {
	dir, err := a.runDir(name)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(dir, config.ConsoleSocket))
	if err != nil {
		return nil, errdefs.Precondition("vm %q has no console: is it running?", name)
	}
	return c, nil
}

// ensureDir creates a 0700 directory.
func ensureDir(p string) error {
	if err := os.MkdirAll(p, 0o700); err != nil {
		return err
	}
	return os.Chmod(p, 0o700)
}
