package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"hangar/internal/ha"
	"hangar/internal/heartbeat"
	"hangar/internal/qemu"
	"hangar/internal/storage"
	"hangar/internal/store"
)

// fencer is the agent's half of HA's liveness (docs/architecture.md "High
// availability"): it writes this host's storage heartbeat into every
// shared pool, learns from etcd until when its lease surely holds, and
// kills the HA VMs it runs once both could have lapsed (ha.FenceAt), so
// that the pool master, which restarts them elsewhere only later, never
// has two copies running. It keeps its own monotonic clock and the last
// VM and pool lists etcd gave it: a host cut off from etcd still fences.
type fencer struct {
	cfg   ha.Config
	ttl   time.Duration
	now   func() time.Time
	probe func(ctx context.Context) (time.Duration, error) // the lease's time to live
	// ha lists this host's VMs with HA enabled and the shared pools'
	// roots; nil error only when etcd answered.
	state func(ctx context.Context) (haVMs map[string]bool, pools []string, err error)
	live  func() map[string]*qemu.Instance
	kill  func(name string, inst *qemu.Instance) // nil: fencing is off (Config.SelfFence)
	log   interface{ Error(string, ...any) }

	mu        sync.Mutex
	leaseAt   time.Time // as if the lease was last renewed then: it holds until leaseAt + ttl
	beatAt    time.Time // the start of the last heartbeat write that succeeded
	haVMs     map[string]bool
	pools     []string
	writers   map[string]*heartbeat.Writer
	fenced    map[*qemu.Instance]bool
	listed    time.Time // when the lists were last read
	openPool  func(root string) (*heartbeat.Writer, error)
	writeBeat func(w *heartbeat.Writer, ctx context.Context) error // nil: w.Beat
}

// HeartbeatCutFault is the file in Config.FaultDir that makes every
// storage heartbeat write fail (tests only: serve --test-faults).
const HeartbeatCutFault = "heartbeat-cut"

// stateEvery is how often the fencer reads the HA VMs and shared pools.
const stateEvery = 5 * time.Second

// granted notes a lease just granted (at sent): it holds a full TTL.
func (f *fencer) granted(sent time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if sent.After(f.leaseAt) {
		f.leaseAt = sent
	}
}

// tick asks etcd about the lease, refreshes the lists when they are due
// (tickLease, tickLists), then writes the heartbeats (tickBeat).
func (f *fencer) tick(ctx context.Context) {
	f.tickLease(ctx)
	f.tickLists(ctx)
	f.tickBeat(ctx)
}

// tickLease asks etcd about the lease (a probe answered "d left", sent at
// t, means the lease holds until at least t + d), bounded by the
// heartbeat interval.
func (f *fencer) tickLease(ctx context.Context) {
	sent := f.now()
	c, cancel := context.WithTimeout(ctx, ha.HeartbeatInterval)
	left, err := f.probe(c)
	cancel()
	if err == nil {
		f.granted(sent.Add(left - f.ttl))
	}
}

// noteHA adds a VM just started or adopted with HA on to the HA VMs
// before the next list.
func (f *fencer) noteHA(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vms := make(map[string]bool, len(f.haVMs)+1) // the lists are replaced whole, never changed
	for n, on := range f.haVMs {
		vms[n] = on
	}
	vms[name] = true
	f.haVMs = vms
}

// tickLists reads the HA VMs and shared pools when the last lists are
// stateEvery old. The lists change seldom; reading them (every spec,
// every pool) each second on every host would be the pool's heaviest
// load. The read has stateEvery to answer, on its own timer (run): a
// bound of the probes' second made a loaded pool keep a list from before
// the VM started, and the host did not fence it.
func (f *fencer) tickLists(ctx context.Context) {
	sent := f.now()
	f.mu.Lock()
	listed := f.listed
	f.mu.Unlock()
	if !listed.IsZero() && sent.Sub(listed) < stateEvery {
		return
	}
	c, cancel := context.WithTimeout(ctx, stateEvery)
	vms, pools, err := f.state(c)
	cancel()
	if err != nil {
		f.log.Error("fencing: reading this host's HA VMs and shared pools", "err", err, "last", listed)
		return
	}
	f.mu.Lock()
	f.haVMs, f.pools = vms, pools
	f.listed = sent
	f.mu.Unlock()
}

// tickBeat writes the heartbeat into every shared pool of the last list.
// It runs on its own timer (run): probes of an etcd that does not answer
// must not space the heartbeats out, or a host cut off from management
// only would miss its heartbeat deadline and fence.
func (f *fencer) tickBeat(ctx context.Context) {
	f.mu.Lock()
	pools := f.pools
	f.mu.Unlock()
	for _, root := range pools {
		w := f.writers[root]
		if w == nil {
			var err error
			if w, err = f.openPool(root); err != nil {
				continue
			}
			if f.writers == nil {
				f.writers = map[string]*heartbeat.Writer{}
			}
			f.writers[root] = w
		}
		start := f.now()
		c, cancel := context.WithTimeout(ctx, ha.HeartbeatInterval)
		beat := f.writeBeat
		if beat == nil {
			beat = (*heartbeat.Writer).Beat
		}
		err := beat(w, c)
		cancel()
		if err == nil {
			f.mu.Lock()
			if start.After(f.beatAt) {
				f.beatAt = start
			}
			f.mu.Unlock()
		}
	}
}

// check kills the running HA VMs once the fence deadline passed. It
// returns the deadline (zero: nothing to fence).
func (f *fencer) check() time.Time {
	f.mu.Lock()
	armed := !f.leaseAt.IsZero()
	at := ha.FenceAt(f.leaseAt, f.beatAt, f.ttl, f.cfg)
	haVMs := f.haVMs
	f.mu.Unlock()
	if !armed || f.kill == nil {
		return time.Time{}
	}
	var deadline time.Time
	for name, inst := range f.live() {
		if !haVMs[name] || f.fenced[inst] {
			continue
		}
		deadline = at
		if f.now().Before(at) {
			continue
		}
		f.log.Error("fencing: lease and storage heartbeat may have lapsed, killing an HA VM before it can run elsewhere",
			"vm", name, "pid", inst.PID, "deadline", at)
		if f.fenced == nil {
			f.fenced = map[*qemu.Instance]bool{}
		}
		f.fenced[inst] = true
		f.kill(name, inst)
	}
	return deadline
}

// run ticks every heartbeat interval and checks often enough to kill
// within a tenth of the fence lead of the deadline.
func (f *fencer) run(ctx context.Context) {
	f.tickLease(ctx)
	f.tickLists(ctx) // the first lists, before the first heartbeat
	go every(ctx, ha.HeartbeatInterval, f.tickLease)
	go every(ctx, ha.HeartbeatInterval, f.tickLists)
	go func() {
		f.tickBeat(ctx)
		every(ctx, ha.HeartbeatInterval, f.tickBeat)
	}()
	every(ctx, ha.DefaultFenceLead/10, func(context.Context) { f.check() })
}

// every calls fn each d until ctx ends. Each of the fencer's loops runs on
// its own timer so that a slow one (an etcd read waiting for its timeout)
// delays none of the others.
func every(ctx context.Context, d time.Duration, fn func(context.Context)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn(ctx)
		}
	}
}

// newFencer wires a fencer to the agent.
func (a *Agent) newFencer(lease func() store.LeaseID) *fencer {
	f := &fencer{
		ttl: a.cfg.LeaseTTL,
		now: time.Now,
		probe: func(ctx context.Context) (time.Duration, error) {
			return a.cfg.Store.TimeToLive(ctx, lease())
		},
		state: func(ctx context.Context) (map[string]bool, []string, error) {
			specs, _, _, err := a.inv.Specs(ctx)
			if err != nil {
				return nil, nil, err
			}
			vms := map[string]bool{}
			for _, s := range specs {
				if s.Host == a.cfg.Host && s.HA != nil && s.HA.Enabled {
					vms[s.Name] = true
				}
			}
			pools, err := a.allPools(ctx)
			if err != nil {
				return nil, nil, err
			}
			var roots []string
			for _, p := range pools {
				if p.Type == storage.TypeShared {
					roots = append(roots, p.Path)
				}
			}
			return vms, roots, nil
		},
		live: a.live.all,
		kill: func(name string, inst *qemu.Instance) {
			a.fencedVMs.Store(name, true) // its exit is no crash: no restart by policy
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := inst.Kill(ctx); err != nil {
				a.cfg.Log.Error("fencing: kill", "vm", name, "err", err)
			}
		},
		log:      a.cfg.Log,
		openPool: func(root string) (*heartbeat.Writer, error) { return heartbeat.Open(root, a.cfg.Host) },
	}
	if !a.cfg.SelfFence {
		f.kill = nil
	}
	if a.cfg.FaultDir != "" {
		cut := filepath.Join(a.cfg.FaultDir, HeartbeatCutFault)
		f.writeBeat = func(w *heartbeat.Writer, ctx context.Context) error {
			if _, err := os.Stat(cut); err == nil {
				return errors.New("test fault: storage heartbeat cut (" + cut + ")")
			}
			return w.Beat(ctx)
		}
	}
	return f
}
