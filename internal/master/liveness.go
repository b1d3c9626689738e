package master

import (
	"context"
	"errors"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	v1 "hangar/api/v1"
	"hangar/internal/ha"
	"hangar/internal/heartbeat"
	"hangar/internal/inventory"
	"hangar/internal/storage"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// How often the master looks at the hosts' leases and storage heartbeats.
const (
	livenessEvery  = 250 * time.Millisecond
	heartbeatEvery = 500 * time.Millisecond
)

// liveness is the master's view of every host's liveness (ha.Facts), on
// its own clock, for one term: the lease seen held or gone, the last
// renewal etcd tells of, the storage heartbeats seen changing.
type liveness struct {
	mu     sync.Mutex
	facts  map[string]*ha.Facts
	judged map[string]ha.Judgement
	tried  map[string]time.Time // host → when its failover was last asked for
	asked  map[string]time.Time // host → when its lease's time to live was last asked
}

// askTTLEvery spaces the time-to-live questions about one host's lease
// (one etcd request each): the renewal they tell of only keeps the margin
// when the expiry is seen late.
const askTTLEvery = time.Second

// failoverEvery is how often a failover is asked for again while a host
// stays dead (each run does only what is still to do).
const failoverEvery = 5 * time.Second

// watchLiveness judges every host each livenessEvery and acts on a change:
// records the judgement (/hangar/liveness/<host>) and, for a dead host,
// runs its failover.
func (l *leader) watchLiveness(ctx context.Context) {
	lv := &liveness{facts: map[string]*ha.Facts{}, judged: map[string]ha.Judgement{}, tried: map[string]time.Time{}, asked: map[string]time.Time{}}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.readHeartbeats(ctx, lv)
	}()
	tick := time.NewTicker(livenessEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := l.judgeHosts(ctx, lv); err != nil && ctx.Err() == nil {
			l.log.Warn("judge hosts", "err", err)
		}
	}
}

// judgeHosts reads the leases once and judges each known host.
func (l *leader) judgeHosts(ctx context.Context, lv *liveness) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	hosts, err := inv.HostInfos(ctx)
	if err != nil {
		return err
	}
	kvs, _, err := l.cfg.Store.List(ctx, inventory.Hosts)
	if err != nil {
		return err
	}
	leases := map[string]store.LeaseID{}
	for _, kv := range kvs {
		leases[inventory.NameFromKey(kv.Key)] = kv.Lease
	}
	recorded, err := inv.HostLivenesses(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, h := range hosts {
		if vm.ValidateName("host", h.Name) != nil {
			continue
		}
		lv.mu.Lock()
		f := lv.facts[h.Name]
		if f == nil {
			f = &ha.Facts{}
			lv.facts[h.Name] = f
		}
		lv.mu.Unlock()
		if id, held := leases[h.Name]; held {
			lv.mu.Lock()
			f.LeaseExpiredAt = time.Time{}
			ask := now.Sub(lv.asked[h.Name]) >= askTTLEvery || f.LastRenewal.IsZero()
			if ask {
				lv.asked[h.Name] = now
			}
			lv.mu.Unlock()
			if ask {
				l.leaseHeld(ctx, lv, h.Name, id, now)
			}
		} else {
			lv.mu.Lock()
			if f.LeaseExpiredAt.IsZero() {
				f.LeaseExpiredAt = now
			}
			lv.mu.Unlock()
		}
		lv.mu.Lock()
		j := ha.Judge(now, *f, l.cfg.HA)
		prev := lv.judged[h.Name]
		lv.judged[h.Name] = j
		lv.mu.Unlock()
		if j.State != prev.State {
			l.log.Info("host liveness", "host", h.Name, "state", j.State, "why", j.Why)
		}
		if err := l.recordLiveness(ctx, h.Name, j, recorded); err != nil && ctx.Err() == nil {
			l.log.Warn("record host liveness", "host", h.Name, "err", err)
		}
		if j.State == ha.Dead && (prev.State != ha.Dead || now.Sub(lv.tried[h.Name]) >= failoverEvery) {
			lv.tried[h.Name] = now
			l.background(ctx, "failover/"+h.Name, func(ctx context.Context) error { return l.failover(ctx, h.Name, j.Why) })
		}
	}
	return nil
}

// leaseHeld notes a host's lease seen held at now: no expiry, and the
// latest renewal etcd tells of (sent − (granted − left), left rounded up
// to the next second: etcd reports whole seconds, and a renewal taken as
// later than it was only makes the master wait longer).
func (l *leader) leaseHeld(ctx context.Context, lv *liveness, host string, id store.LeaseID, now time.Time) {
	tctx, cancel := context.WithTimeout(ctx, time.Second)
	resp, err := l.cfg.Client.TimeToLive(tctx, clientv3.LeaseID(id))
	cancel()
	lv.mu.Lock()
	defer lv.mu.Unlock()
	f := lv.facts[host]
	if err == nil && resp.TTL < 0 {
		// Expired between the list and the question (its key goes with
		// it): no renewal to note, and no expiry seen yet either.
		return
	}
	f.LeaseExpiredAt = time.Time{}
	if err != nil || resp.GrantedTTL <= 0 {
		// Unknown: taken as renewed now (later than it was: safe).
		f.LastRenewal = now
		if f.LeaseTTL == 0 {
			f.LeaseTTL = ha.DefaultLeaseTTL
		}
		return
	}
	granted := time.Duration(resp.GrantedTTL) * time.Second
	left := time.Duration(resp.TTL+1) * time.Second
	if left > granted {
		left = granted
	}
	if r := now.Add(left - granted); r.After(f.LastRenewal) {
		f.LastRenewal = r
	}
	f.LeaseTTL = granted
}

// recordLiveness writes the judgement of a host without a lease (and
// removes it when the lease is held again), fenced, when it changed.
func (l *leader) recordLiveness(ctx context.Context, host string, j ha.Judgement, recorded map[string]inventory.HostLiveness) error {
	old, had := recorded[host]
	if j.State == ha.Alive {
		if !had {
			return nil
		}
		_, err := l.Commit(ctx, nil, store.DeleteOp(inventory.LivenessKey(host), store.AnyRevision))
		return err
	}
	state := map[ha.State]string{ha.Suspect: v1.HostSuspect, ha.Isolated: v1.HostIsolated, ha.Dead: v1.HostDead}[j.State]
	if had && old.State == state {
		return nil
	}
	rec := inventory.HostLiveness{State: state, Why: j.Why, Since: time.Now().UTC()}
	_, err := l.Commit(ctx, nil, store.PutOp(inventory.LivenessKey(host), inventory.Marshal(rec), store.AnyRevision))
	return err
}

// readHeartbeats reads every host's storage heartbeat on every shared pool
// each heartbeatEvery, in one goroutine of its own: a read that hangs on
// a storage that stopped answering holds up no judgement (the heartbeats
// only stop moving, as they should).
func (l *leader) readHeartbeats(ctx context.Context, lv *liveness) {
	tick := time.NewTicker(heartbeatEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pools, _, err := store.ListJSON[v1.StoragePool](ctx, l.cfg.Store, inventory.Pools)
		if err != nil {
			continue
		}
		lv.mu.Lock()
		var hosts []string
		for h := range lv.facts {
			hosts = append(hosts, h)
		}
		lv.mu.Unlock()
		for _, p := range pools {
			if p.Value.Type != storage.TypeShared || p.Key != inventory.PoolKey(p.Value.Name) {
				continue
			}
			for _, h := range hosts {
				rec, err := heartbeat.Read(p.Value.Path, h)
				if err != nil {
					if !errors.Is(err, heartbeat.ErrInvalid) {
						continue // none there (yet): this host does not use the pool
					}
					l.log.Warn("bad storage heartbeat", "host", h, "pool", p.Value.Name, "err", err)
					continue
				}
				at := time.Now()
				lv.mu.Lock()
				f := lv.facts[h]
				i := 0
				for i < len(f.Heartbeats) && f.Heartbeats[i].Pool != p.Value.Name {
					i++
				}
				if i == len(f.Heartbeats) {
					f.Heartbeats = append(f.Heartbeats, ha.Heartbeat{Pool: p.Value.Name})
				}
				f.Heartbeats[i] = f.Heartbeats[i].Observe(rec.Counter, at)
				lv.mu.Unlock()
			}
		}
	}
}
