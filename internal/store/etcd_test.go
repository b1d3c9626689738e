package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"hangar/internal/etcdembed"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/store"
	"hangar/internal/store/storetest"
)

func startMember(t *testing.T) *etcdembed.Member { return etcdtest.Start(t) }

func TestEtcd(t *testing.T) {
	m := startMember(t)
	t.Run("SharedClient", func(t *testing.T) {
		t.Parallel()
		storetest.Run(t, func(t *testing.T) store.Store { return store.NewEtcd(m.Client()) })
	})
	t.Run("OwnClient", func(t *testing.T) {
		t.Parallel()
		storetest.Run(t, func(t *testing.T) store.Store {
			s, err := store.OpenEtcd(t.Context(), m.ClientURLs())
			if err != nil {
				t.Fatalf("open etcd: %v", err)
			}
			return s
		})
	})
}

func TestCloseOwnership(t *testing.T) {
	m := startMember(t)
	ctx := t.Context()

	shared := store.NewEtcd(m.Client())
	if err := shared.Close(); err != nil {
		t.Fatalf("close shared: %v", err)
	}
	if _, err := m.Client().Put(ctx, "k", "v"); err != nil {
		t.Fatalf("member client after closing a non-owning store: %v", err)
	}

	own, err := store.OpenEtcd(ctx, m.ClientURLs())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if _, err := own.Put(ctx, "k", []byte("v2"), store.AnyRevision); err != nil {
		t.Fatalf("put: %v", err)
	}
	if err := own.Close(); err != nil {
		t.Fatalf("close own: %v", err)
	}
	if _, err := m.Client().Get(ctx, "k"); err != nil {
		t.Fatalf("member client after closing an owning store: %v", err)
	}
}

func TestOpenEtcdErrors(t *testing.T) {
	if _, err := store.OpenEtcd(t.Context(), nil); err == nil {
		t.Fatal("open without endpoints: want error")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if s, err := store.OpenEtcd(ctx, []string{"http://127.0.0.1:1"}); err == nil {
		s.Close()
		t.Fatal("open of unreachable endpoint: want error")
	}
}

func TestErrorContext(t *testing.T) {
	m := startMember(t)
	s := store.NewEtcd(m.Client())
	ctx := t.Context()

	_, err := s.Get(ctx, "/ctx/missing")
	if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), `"/ctx/missing"`) {
		t.Fatalf("get missing: %v", err)
	}
	if _, err := s.Put(ctx, "/ctx/k", nil, store.MustNotExist); err != nil {
		t.Fatal(err)
	}
	_, err = s.Put(ctx, "/ctx/k", nil, store.MustNotExist)
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), `etcd put "/ctx/k"`) {
		t.Fatalf("conflicting put: %v", err)
	}
	if _, err := s.Put(ctx, "/ctx/k", nil, -7); err == nil || errors.Is(err, store.ErrConflict) {
		t.Fatalf("put with invalid revision: %v", err)
	}
	if _, err := s.PutWithLease(ctx, "/ctx/l", nil, 12345); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("put with unknown lease: %v", err)
	}
	if err := s.Revoke(ctx, 12345); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("revoke unknown lease: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Get(cctx, "/ctx/k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("get with cancelled ctx: %v", err)
	}
}

// TestWatchCompacted checks that a watch from a compacted revision closes,
// so callers know to List again.
func TestWatchCompacted(t *testing.T) {
	m := startMember(t)
	s := store.NewEtcd(m.Client())
	ctx := t.Context()
	r1, err := s.Put(ctx, "/c/k", []byte("1"), store.AnyRevision)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Put(ctx, "/c/k", []byte("2"), store.AnyRevision)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Client().Compact(ctx, r2, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	ch := s.Watch(ctx, "/c/", r1)
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("watch from compacted revision delivered %+v, want close", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch from compacted revision did not close")
	}
}

// TestMinLeaseTTL documents that etcd raises short TTLs to its minimum.
func TestMinLeaseTTL(t *testing.T) {
	m := startMember(t)
	s := store.NewEtcd(m.Client())
	ctx := t.Context()
	id, err := s.Grant(ctx, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := m.Client().TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("granted 300ms, etcd granted TTL %ds", resp.GrantedTTL)
	if resp.GrantedTTL != 2 {
		t.Fatalf("granted TTL %d s, want etcd's minimum 2 s", resp.GrantedTTL)
	}
}
