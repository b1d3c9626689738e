// Package master is the elected pool master: one host of the pool,
// chosen through an etcd election, places new VMs, books their capacity,
// records which host owns each VM, and finishes the operations whose last
// step is a record only the master may write (removing a VM's spec).
//
// Every write it makes is one transaction conditioned on its leadership
// (the election key's revision): a master that lost its lease — and so its
// leadership — fails its late writes instead of racing its successor.
package master

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"hangar/internal/ha"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

// Config of a host's master candidate.
type Config struct {
	Client *clientv3.Client
	Store  store.Store
	Host   string
	Log    *slog.Logger
	// SessionTTL is the leadership lease: a master that stops renewing it
	// (a dead process, a partitioned host) is deposed this long after.
	// Default 5 s.
	SessionTTL time.Duration
	// Resync is how often the master re-reads every operation and VM, as
	// a safety net behind its watch (default 5 s).
	Resync time.Duration
	// HA holds the liveness timings (ha.Judge; zero: the defaults).
	HA ha.Config
	// FenceAgent is a command run with a dead host's name as its last
	// argument before that host's HA VMs restart elsewhere; "" for none.
	// A failure refuses the restarts.
	FenceAgent string
	// FenceTimeout bounds the fence agent (default DefaultFenceTimeout).
	FenceTimeout time.Duration
}

// Master campaigns for the pool's leadership and, while it holds it,
// leads.
type Master struct {
	cfg Config

	mu      sync.Mutex
	leading bool
	terms   int
}

// New returns a candidate; Run campaigns.
func New(cfg Config) *Master {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 5 * time.Second
	}
	if cfg.Resync == 0 {
		cfg.Resync = 5 * time.Second
	}
	cfg.Log = cfg.Log.With("component", "master")
	return &Master{cfg: cfg}
}

// Leading reports whether this host is the master now.
func (m *Master) Leading() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leading
}

// LeaderOf returns the name of the pool's master read through a store
// ("" while there is none): the election key with the lowest revision (its
// keys are written once, so that is their creation).
func LeaderOf(ctx context.Context, s store.Store) (string, error) {
	kvs, _, err := s.List(ctx, inventory.Election+"/")
	if err != nil {
		return "", fmt.Errorf("pool master: %w", err)
	}
	name, low := "", int64(0)
	for _, kv := range kvs {
		if low == 0 || kv.Revision < low {
			name, low = string(kv.Value), kv.Revision
		}
	}
	return name, nil
}

// Run campaigns until ctx ends; each time it wins it leads until its
// session ends, then campaigns again.
func (m *Master) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		if err := m.term(ctx); err != nil && ctx.Err() == nil {
			m.cfg.Log.Warn("master term ended", "err", err)
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
		}
	}
	return nil
}

// term is one campaign and, when won, one term of leadership.
func (m *Master) term(ctx context.Context) error {
	ttl := int(m.cfg.SessionTTL / time.Second)
	if ttl < 1 {
		ttl = 1
	}
	sess, err := concurrency.NewSession(m.cfg.Client, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("master session: %w", err)
	}
	defer sess.Close() // revokes the lease: a successor is elected at once
	el := concurrency.NewElection(sess, inventory.Election)
	if err := el.Campaign(ctx, m.cfg.Host); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	// A session whose lease expired while it waited (a frozen process)
	// wins an election its key is gone from: campaign again.
	if _, err := m.cfg.Store.Get(ctx, el.Key()); err != nil || sess.Ctx().Err() != nil {
		return fmt.Errorf("campaign won with an expired session (election key %s: %v)", el.Key(), err)
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done(): // the lease expired: someone else may lead now
			cancel()
		case <-lctx.Done():
		}
	}()
	m.mu.Lock()
	m.leading = true
	m.terms++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.leading = false
		m.mu.Unlock()
	}()
	l := &leader{cfg: m.cfg, fence: store.Cond{Key: el.Key(), ExpectRev: el.Rev()}, log: m.cfg.Log, failedOver: map[string]time.Time{}}
	m.cfg.Log.Info("elected pool master", "host", m.cfg.Host, "key", el.Key(), "rev", el.Rev())
	err = l.lead(lctx)
	if ctx.Err() == nil && sess.Ctx().Err() == nil {
		// Leading failed for another reason: step down so another host can.
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = el.Resign(rctx)
		rcancel()
	}
	return err
}

// leader is one term of leadership.
type leader struct {
	cfg   Config
	fence store.Cond
	log   *slog.Logger

	mu         sync.Mutex
	driving    map[string]bool      // VMs whose migration a goroutine drives
	failedOver map[string]time.Time // host → when its last failover failed
	wg         sync.WaitGroup       // those goroutines
}

// Commit writes ops in one transaction conditioned on this term's
// leadership and on conds.
func (l *leader) Commit(ctx context.Context, conds []store.Cond, ops ...store.Op) (int64, error) {
	rev, err := l.cfg.Store.Txn(ctx, append([]store.Cond{l.fence}, conds...), ops...)
	if err != nil {
		return 0, fmt.Errorf("master commit: %w", err)
	}
	return rev, nil
}

// stillLeading reports whether the fence still holds (a pure check).
func (l *leader) stillLeading(ctx context.Context) bool {
	_, err := l.cfg.Store.Txn(ctx, []store.Cond{l.fence})
	return err == nil
}

// lead watches operations and reconciles until ctx ends or leadership is
// lost.
func (l *leader) lead(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer l.wg.Wait()
	defer cancel() // ends the migrations this term drives
	rev, err := l.reconcile(ctx)
	if err != nil {
		return err
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.watchLiveness(ctx)
	}()
	tick := time.NewTicker(l.cfg.Resync)
	defer tick.Stop()
	for {
		wctx, cancel := context.WithCancel(ctx)
		events := l.cfg.Store.Watch(wctx, inventory.Ops, rev+1)
	watch:
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					break watch
				}
				rev = ev.KV.Revision
				if ev.Type == store.EventPut {
					l.opChanged(ctx, ev.KV)
				}
			case <-tick.C:
				if !l.stillLeading(ctx) {
					cancel()
					return errors.New("leadership lost")
				}
				if _, err := l.reconcile(ctx); err != nil && ctx.Err() == nil {
					l.log.Warn("reconcile", "err", err)
				}
			case <-ctx.Done():
				cancel()
				return nil
			}
		}
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if rev, err = l.reconcile(ctx); err != nil {
			return err
		}
	}
}

// reconcile handles every open operation and records owners and bookings
// of VMs that have none (VMs placed before there was a master, clones
// that land beside their source). It returns the revision it read at.
func (l *leader) reconcile(ctx context.Context) (int64, error) {
	kvs, rev, err := l.cfg.Store.List(ctx, inventory.Ops)
	if err != nil {
		return 0, fmt.Errorf("list operations: %w", err)
	}
	for _, kv := range kvs {
		l.opChanged(ctx, kv)
	}
	if err := l.adoptPlaced(ctx); err != nil {
		return 0, err
	}
	if err := l.resumeMigrations(ctx); err != nil {
		return 0, err
	}
	if err := l.unpark(ctx); err != nil {
		return 0, err
	}
	return rev, nil
}
