package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/logutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// listPageSize is how many keys List reads per range request. All pages are
// read at the revision of the first, so the result is one consistent view.
const listPageSize = 500

// openDialTimeout bounds OpenEtcd connecting to the cluster.
const openDialTimeout = 5 * time.Second

// Etcd is the etcd implementation of Store. It is safe for concurrent use.
type Etcd struct {
	c    *clientv3.Client
	owns bool

	// keepAlives holds the running KeepAlive loops per lease, so Revoke can
	// end them at once; clientv3 would only notice at the next renewal.
	mu         sync.Mutex
	keepAlives map[LeaseID]map[*context.CancelFunc]struct{}
}

var _ Store = (*Etcd)(nil)

// NewEtcd returns a Store using c. The Store does not own c: Close leaves it
// open.
func NewEtcd(c *clientv3.Client) *Etcd {
	return &Etcd{c: c}
}

// OpenEtcd connects to the etcd cluster at endpoints and returns a Store that
// owns the connection: Close closes it.
func OpenEtcd(ctx context.Context, endpoints []string) (*Etcd, error) {
	return OpenEtcdTLS(ctx, endpoints, nil)
}

// autoSyncInterval: a store opened on several endpoints refreshes them
// from the cluster's member list this often, so members that joined later
// are used too.
const autoSyncInterval = 30 * time.Second

// OpenEtcdTLS is OpenEtcd with a TLS configuration for https endpoints
// (nil: none); the endpoints are refreshed from the member list.
func OpenEtcdTLS(ctx context.Context, endpoints []string, tc *tls.Config) (*Etcd, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("etcd open: no endpoints")
	}
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: openDialTimeout,
		Context:     context.WithoutCancel(ctx),
		TLS:         tc,
	}
	if tc != nil {
		cfg.AutoSyncInterval = autoSyncInterval
	}
	// clientv3 logs retries at warn level as JSON on stderr; keep errors only
	// unless etcd's own ETCD_CLIENT_DEBUG asks for more.
	if os.Getenv("ETCD_CLIENT_DEBUG") == "" {
		lg, err := logutil.CreateDefaultZapLogger(zap.ErrorLevel)
		if err != nil {
			return nil, fmt.Errorf("etcd open: logger: %w", err)
		}
		cfg.Logger = lg
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd open %v: %w", endpoints, err)
	}
	// clientv3.New only waits for a connection; check the cluster answers.
	if _, err := c.Get(ctx, "\x00", clientv3.WithCountOnly()); err != nil {
		c.Close()
		return nil, fmt.Errorf("etcd open %v: %w", endpoints, err)
	}
	return &Etcd{c: c, owns: true}, nil
}

// Client returns the underlying client.
func (s *Etcd) Client() *clientv3.Client { return s.c }

func (s *Etcd) Get(ctx context.Context, key string) (KV, error) {
	resp, err := s.c.Get(ctx, key)
	if err != nil {
		return KV{}, fmt.Errorf("etcd get %q: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return KV{}, fmt.Errorf("etcd get %q: %w", key, ErrNotFound)
	}
	return toKV(resp.Kvs[0]), nil
}

func (s *Etcd) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	start := prefix
	if start == "" {
		start = "\x00" // etcd's "from the first key"
	}
	end := clientv3.GetPrefixRangeEnd(prefix)
	var (
		kvs []KV
		rev int64
	)
	for {
		opts := []clientv3.OpOption{
			clientv3.WithRange(end),
			clientv3.WithLimit(listPageSize),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend),
		}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.c.Get(ctx, start, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("etcd list %q: %w", prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
			kvs = make([]KV, 0, resp.Count)
		}
		for _, kv := range resp.Kvs {
			kvs = append(kvs, toKV(kv))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return kvs, rev, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

func (s *Etcd) Put(ctx context.Context, key string, value []byte, expectRev int64) (int64, error) {
	if expectRev == AnyRevision {
		resp, err := s.c.Put(ctx, key, string(value))
		if err != nil {
			return 0, fmt.Errorf("etcd put %q: %w", key, err)
		}
		return resp.Header.Revision, nil
	}
	cmp, err := revCompare(key, expectRev)
	if err != nil {
		return 0, fmt.Errorf("etcd put %q: %w", key, err)
	}
	resp, err := s.c.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, string(value))).Commit()
	if err != nil {
		return 0, fmt.Errorf("etcd put %q: %w", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("etcd put %q at revision %d: %w", key, expectRev, ErrConflict)
	}
	return resp.Header.Revision, nil
}

func (s *Etcd) Delete(ctx context.Context, key string, expectRev int64) error {
	if expectRev == AnyRevision {
		if _, err := s.c.Delete(ctx, key); err != nil {
			return fmt.Errorf("etcd delete %q: %w", key, err)
		}
		return nil
	}
	cmp, err := revCompare(key, expectRev)
	if err != nil {
		return fmt.Errorf("etcd delete %q: %w", key, err)
	}
	resp, err := s.c.Txn(ctx).If(cmp).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("etcd delete %q: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("etcd delete %q at revision %d: %w", key, expectRev, ErrConflict)
	}
	return nil
}

func (s *Etcd) Txn(ctx context.Context, conds []Cond, ops ...Op) (int64, error) {
	cmps := make([]clientv3.Cmp, 0, len(conds)+len(ops))
	for _, c := range conds {
		if c.ExpectRev == AnyRevision {
			continue
		}
		if c.Prefix {
			if c.ExpectRev <= 0 {
				return 0, fmt.Errorf("etcd txn: prefix cond %q: invalid revision %d", c.Key, c.ExpectRev)
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(c.Key).WithPrefix(), "<", c.ExpectRev+1))
			continue
		}
		cmp, err := revCompare(c.Key, c.ExpectRev)
		if err != nil {
			return 0, fmt.Errorf("etcd txn: cond %q: %w", c.Key, err)
		}
		cmps = append(cmps, cmp)
	}
	eops := make([]clientv3.Op, 0, len(ops))
	for _, op := range ops {
		if op.ExpectRev != AnyRevision {
			cmp, err := revCompare(op.Key, op.ExpectRev)
			if err != nil {
				return 0, fmt.Errorf("etcd txn: op %q: %w", op.Key, err)
			}
			cmps = append(cmps, cmp)
		}
		switch {
		case op.Delete:
			eops = append(eops, clientv3.OpDelete(op.Key))
		case op.Lease != 0:
			eops = append(eops, clientv3.OpPut(op.Key, string(op.Value), clientv3.WithLease(clientv3.LeaseID(op.Lease))))
		default:
			eops = append(eops, clientv3.OpPut(op.Key, string(op.Value)))
		}
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(eops...).Commit()
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			err = fmt.Errorf("%w: lease: %w", ErrNotFound, err)
		}
		return 0, fmt.Errorf("etcd txn (%d conds, %d ops): %w", len(conds), len(ops), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("etcd txn (%d conds, %d ops): %w", len(conds), len(ops), ErrConflict)
	}
	return resp.Header.Revision, nil
}

func (s *Etcd) Watch(ctx context.Context, prefix string, fromRev int64) <-chan Event {
	out := make(chan Event)
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if fromRev > 0 {
		opts = append(opts, clientv3.WithRev(fromRev))
	}
	wch := s.c.Watch(ctx, prefix, opts...)
	go func() {
		defer close(out)
		defer func() {
			// Stop the etcd watch and let the client close its channel.
			cancel()
			for range wch {
			}
		}()
		for resp := range wch {
			if resp.Err() != nil || resp.Canceled {
				return
			}
			for _, ev := range resp.Events {
				e := Event{Type: EventPut, KV: toKV(ev.Kv)}
				if ev.Type == mvccpb.DELETE {
					e = Event{Type: EventDelete, KV: KV{Key: string(ev.Kv.Key), Revision: ev.Kv.ModRevision}}
				}
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

func (s *Etcd) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	secs := int64(math.Ceil(ttl.Seconds()))
	if secs < 1 {
		secs = 1
	}
	resp, err := s.c.Grant(ctx, secs)
	if err != nil {
		return 0, fmt.Errorf("etcd grant lease ttl %v: %w", ttl, err)
	}
	return LeaseID(resp.ID), nil
}

func (s *Etcd) KeepAlive(ctx context.Context, id LeaseID) (<-chan struct{}, error) {
	ctx, cancel := context.WithCancel(ctx)
	kch, err := s.c.KeepAlive(ctx, clientv3.LeaseID(id))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("etcd keepalive lease %x: %w", id, err)
	}
	key := &cancel
	s.mu.Lock()
	if s.keepAlives == nil {
		s.keepAlives = map[LeaseID]map[*context.CancelFunc]struct{}{}
	}
	if s.keepAlives[id] == nil {
		s.keepAlives[id] = map[*context.CancelFunc]struct{}{}
	}
	s.keepAlives[id][key] = struct{}{}
	s.mu.Unlock()

	out := make(chan struct{})
	go func() {
		defer close(out)
		defer func() {
			s.mu.Lock()
			delete(s.keepAlives[id], key)
			if len(s.keepAlives[id]) == 0 {
				delete(s.keepAlives, id)
			}
			s.mu.Unlock()
			cancel()
		}()
		// clientv3 closes kch when the lease is gone or ctx ends.
		for range kch {
		}
	}()
	return out, nil
}

func (s *Etcd) TimeToLive(ctx context.Context, id LeaseID) (time.Duration, error) {
	resp, err := s.c.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return 0, fmt.Errorf("etcd lease %x time to live: %w", id, err)
	}
	if resp.TTL <= 0 {
		return 0, fmt.Errorf("etcd lease %x: expired: %w", id, ErrNotFound)
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

func (s *Etcd) Revoke(ctx context.Context, id LeaseID) error {
	_, err := s.c.Revoke(ctx, clientv3.LeaseID(id))
	if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.stopKeepAlives(id)
	}
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return fmt.Errorf("etcd revoke lease %x: %w", id, err)
	}
	return nil
}

// stopKeepAlives ends this store's KeepAlive loops for a lease that is gone.
func (s *Etcd) stopKeepAlives(id LeaseID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for cancel := range s.keepAlives[id] {
		(*cancel)()
	}
}

func (s *Etcd) PutWithLease(ctx context.Context, key string, value []byte, id LeaseID) (int64, error) {
	resp, err := s.c.Put(ctx, key, string(value), clientv3.WithLease(clientv3.LeaseID(id)))
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			err = fmt.Errorf("%w: lease %x: %w", ErrNotFound, id, err)
		}
		return 0, fmt.Errorf("etcd put %q: %w", key, err)
	}
	return resp.Header.Revision, nil
}

// Close closes the client if the Store owns it.
func (s *Etcd) Close() error {
	if !s.owns {
		return nil
	}
	if err := s.c.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcd close: %w", err)
	}
	return nil
}

// revCompare is the etcd comparison for a revision condition on key.
func revCompare(key string, expectRev int64) (clientv3.Cmp, error) {
	switch {
	case expectRev == MustNotExist:
		return clientv3.Compare(clientv3.CreateRevision(key), "=", 0), nil
	case expectRev > 0:
		return clientv3.Compare(clientv3.ModRevision(key), "=", expectRev), nil
	default:
		return clientv3.Cmp{}, fmt.Errorf("invalid expected revision %d", expectRev)
	}
}

func toKV(kv *mvccpb.KeyValue) KV {
	return KV{
		Key:      string(kv.Key),
		Value:    kv.Value,
		Revision: kv.ModRevision,
		Lease:    LeaseID(kv.Lease),
	}
}
