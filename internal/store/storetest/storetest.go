// Package storetest is a conformance suite for store.Store implementations.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hangar/internal/store"
)

// leaseTTL is the TTL the lease tests grant. etcd rounds TTLs up to whole
// seconds and to its minimum lease TTL (1.5 × election timeout, 2 s with
// etcd's default timing), so 2 s is the shortest TTL that is honoured as is.
const leaseTTL = 2 * time.Second

// wait bounds how long the suite waits for something that should happen
// promptly (an event, a channel closing).
const wait = 5 * time.Second

// Run runs the conformance suite. newStore is called once per subtest and
// must be safe to call from parallel subtests; the suite closes each store
// it gets. Every subtest works under its own random key prefix, so stores may
// share one backend.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store, p string)
	}{
		{"GetMissing", testGetMissing},
		{"PutGet", testPutGet},
		{"PutMustNotExist", testPutMustNotExist},
		{"PutRevision", testPutRevision},
		{"Delete", testDelete},
		{"List", testList},
		{"ListMany", testListMany},
		{"TxnAllOrNothing", testTxnAllOrNothing},
		{"TxnApplies", testTxnApplies},
		{"TxnCondFencing", testTxnCondFencing},
		{"TxnCondUnchanged", testTxnCondUnchanged},
		{"WatchFromRevision", testWatchFromRevision},
		{"WatchAfterList", testWatchAfterList},
		{"WatchFromNow", testWatchFromNow},
		{"WatchCancel", testWatchCancel},
		{"LeaseRevoke", testLeaseRevoke},
		{"LeaseExpiry", testLeaseExpiry},
		{"LeaseKeepAlive", testLeaseKeepAlive},
		{"LeaseTimeToLive", testLeaseTimeToLive},
		{"KeepAliveRevoked", testKeepAliveRevoked},
		{"ConcurrentCAS", testConcurrentCAS},
		{"JSON", testJSON},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			tc.fn(t, s, prefix(t))
		})
	}
}

// prefix returns a key prefix unique to this subtest and run.
func prefix(t *testing.T) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random prefix: %v", err)
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	return "/storetest/" + name + "-" + hex.EncodeToString(b[:]) + "/"
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustPut(t *testing.T, s store.Store, key, value string, expectRev int64) int64 {
	t.Helper()
	rev, err := s.Put(ctxT(t), key, []byte(value), expectRev)
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	if rev <= 0 {
		t.Fatalf("put %q: revision %d, want > 0", key, rev)
	}
	return rev
}

func mustGet(t *testing.T, s store.Store, key string) store.KV {
	t.Helper()
	kv, err := s.Get(ctxT(t), key)
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return kv
}

func wantNotFound(t *testing.T, s store.Store, key string) {
	t.Helper()
	kv, err := s.Get(ctxT(t), key)
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get %q = %+v, %v; want ErrNotFound", key, kv, err)
	}
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v, want %v", what, err, target)
	}
}

func testGetMissing(t *testing.T, s store.Store, p string) {
	kv, err := s.Get(ctxT(t), p+"missing")
	wantErr(t, "get missing", err, store.ErrNotFound)
	if errors.Is(err, store.ErrConflict) {
		t.Fatalf("get missing: err %v is also ErrConflict", err)
	}
	if kv.Key != "" || kv.Value != nil {
		t.Fatalf("get missing returned %+v", kv)
	}
}

func testPutGet(t *testing.T, s store.Store, p string) {
	k := p + "k"
	r1 := mustPut(t, s, k, "v1", store.AnyRevision)
	kv := mustGet(t, s, k)
	if kv.Key != k || string(kv.Value) != "v1" || kv.Revision != r1 || kv.Lease != 0 {
		t.Fatalf("get = %+v, want key %q value v1 revision %d no lease", kv, k, r1)
	}
	r2 := mustPut(t, s, k, "v2", store.AnyRevision)
	if r2 <= r1 {
		t.Fatalf("second put revision %d, want > %d", r2, r1)
	}
	if kv := mustGet(t, s, k); string(kv.Value) != "v2" || kv.Revision != r2 {
		t.Fatalf("get = %+v, want value v2 revision %d", kv, r2)
	}
	// Empty values are values.
	r3 := mustPut(t, s, p+"empty", "", store.MustNotExist)
	if kv := mustGet(t, s, p+"empty"); len(kv.Value) != 0 || kv.Revision != r3 {
		t.Fatalf("get empty = %+v, want empty value revision %d", kv, r3)
	}
}

func testPutMustNotExist(t *testing.T, s store.Store, p string) {
	k := p + "k"
	r := mustPut(t, s, k, "first", store.MustNotExist)
	_, err := s.Put(ctxT(t), k, []byte("second"), store.MustNotExist)
	wantErr(t, "second create", err, store.ErrConflict)
	if kv := mustGet(t, s, k); string(kv.Value) != "first" || kv.Revision != r {
		t.Fatalf("after failed create: %+v, want first at %d", kv, r)
	}
	// After a delete the key may be created again.
	if err := s.Delete(ctxT(t), k, store.AnyRevision); err != nil {
		t.Fatalf("delete: %v", err)
	}
	mustPut(t, s, k, "again", store.MustNotExist)
}

func testPutRevision(t *testing.T, s store.Store, p string) {
	k := p + "k"
	r1 := mustPut(t, s, k, "v1", store.MustNotExist)
	r2 := mustPut(t, s, k, "v2", r1)
	_, err := s.Put(ctxT(t), k, []byte("stale"), r1)
	wantErr(t, "put with stale revision", err, store.ErrConflict)
	if kv := mustGet(t, s, k); string(kv.Value) != "v2" || kv.Revision != r2 {
		t.Fatalf("after stale put: %+v, want v2 at %d", kv, r2)
	}
	r3 := mustPut(t, s, k, "v3", r2)
	if r3 <= r2 {
		t.Fatalf("revision %d after %d", r3, r2)
	}
	_, err = s.Put(ctxT(t), p+"missing", []byte("x"), r3)
	wantErr(t, "put missing key with exact revision", err, store.ErrConflict)
	wantNotFound(t, s, p+"missing")
}

func testDelete(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	k := p + "k"
	if err := s.Delete(ctx, p+"missing", store.AnyRevision); err != nil {
		t.Fatalf("delete missing with AnyRevision: %v", err)
	}
	wantErr(t, "delete missing with exact revision", s.Delete(ctx, p+"missing", 1), store.ErrConflict)
	if err := s.Delete(ctx, p+"missing", store.MustNotExist); err != nil {
		t.Fatalf("delete missing with MustNotExist: %v", err)
	}

	r1 := mustPut(t, s, k, "v1", store.MustNotExist)
	r2 := mustPut(t, s, k, "v2", r1)
	wantErr(t, "delete with stale revision", s.Delete(ctx, k, r1), store.ErrConflict)
	wantErr(t, "delete existing with MustNotExist", s.Delete(ctx, k, store.MustNotExist), store.ErrConflict)
	if kv := mustGet(t, s, k); kv.Revision != r2 {
		t.Fatalf("after failed deletes: %+v, want revision %d", kv, r2)
	}
	if err := s.Delete(ctx, k, r2); err != nil {
		t.Fatalf("delete with current revision: %v", err)
	}
	wantNotFound(t, s, k)

	mustPut(t, s, k, "v3", store.MustNotExist)
	if err := s.Delete(ctx, k, store.AnyRevision); err != nil {
		t.Fatalf("delete with AnyRevision: %v", err)
	}
	wantNotFound(t, s, k)
}

func testList(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	// Written out of order; "b/" must not match "bb" or "b" itself.
	keys := []string{"a/b/2", "a/bb", "a/b/10", "a/b", "a/c/1", "a/b/1", "a/b/sub/x", "a/b0"}
	revs := map[string]int64{}
	for _, k := range keys {
		revs[p+k] = mustPut(t, s, p+k, "v-"+k, store.MustNotExist)
	}
	kvs, rev, err := s.List(ctx, p+"a/b/")
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	want := []string{"a/b/1", "a/b/10", "a/b/2", "a/b/sub/x"}
	if len(kvs) != len(want) {
		t.Fatalf("list %q: got %v, want %v", p+"a/b/", kvKeys(kvs), want)
	}
	var maxRev int64
	for i, kv := range kvs {
		if kv.Key != p+want[i] || string(kv.Value) != "v-"+want[i] || kv.Revision != revs[kv.Key] {
			t.Fatalf("list[%d] = %+v, want key %q value %q revision %d", i, kv, p+want[i], "v-"+want[i], revs[p+want[i]])
		}
		maxRev = max(maxRev, kv.Revision)
	}
	if rev < maxRev {
		t.Fatalf("list revision %d < newest key revision %d", rev, maxRev)
	}

	all, _, err := s.List(ctx, p)
	if err != nil {
		t.Fatalf("list all: %v", err)
	}
	if got := kvKeys(all); len(got) != len(keys) {
		t.Fatalf("list %q: got %v, want all %d keys", p, got, len(keys))
	}
	for i := 1; i < len(all); i++ {
		if all[i-1].Key >= all[i].Key {
			t.Fatalf("list not sorted: %v", kvKeys(all))
		}
	}

	empty, rev2, err := s.List(ctx, p+"nothing/")
	if err != nil {
		t.Fatalf("list empty: %v", err)
	}
	if len(empty) != 0 || rev2 < rev {
		t.Fatalf("list empty prefix = %v at %d, want none at >= %d", kvKeys(empty), rev2, rev)
	}
}

func testListMany(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	const n, batch = 1234, 100
	for i := 0; i < n; i += batch {
		var ops []store.Op
		for j := i; j < min(i+batch, n); j++ {
			ops = append(ops, store.PutOp(fmt.Sprintf("%sk/%05d", p, j), []byte(strconv.Itoa(j)), store.MustNotExist))
		}
		if _, err := s.Txn(ctx, nil, ops...); err != nil {
			t.Fatalf("txn batch %d: %v", i/batch, err)
		}
	}
	kvs, _, err := s.List(ctx, p+"k/")
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(kvs) != n {
		t.Fatalf("list returned %d keys, want %d", len(kvs), n)
	}
	for i, kv := range kvs {
		if want := fmt.Sprintf("%sk/%05d", p, i); kv.Key != want || string(kv.Value) != strconv.Itoa(i) {
			t.Fatalf("list[%d] = %q=%q, want %q=%d", i, kv.Key, kv.Value, want, i)
		}
	}
}

func testTxnAllOrNothing(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	rb := mustPut(t, s, p+"b", "b0", store.MustNotExist)
	rc := mustPut(t, s, p+"c", "c0", store.MustNotExist)
	mustPut(t, s, p+"c", "c1", rc) // c's revision is now newer than rc

	cases := []struct {
		name string
		ops  []store.Op
	}{
		{"create existing", []store.Op{
			store.PutOp(p+"a", []byte("a1"), store.MustNotExist),
			store.PutOp(p+"b", []byte("b1"), store.MustNotExist),
		}},
		{"stale revision", []store.Op{
			store.PutOp(p+"a", []byte("a1"), store.MustNotExist),
			store.PutOp(p+"b", []byte("b1"), rb),
			store.PutOp(p+"c", []byte("c2"), rc),
		}},
		{"delete stale", []store.Op{
			store.PutOp(p+"a", []byte("a1"), store.AnyRevision),
			store.DeleteOp(p+"b", store.AnyRevision),
			store.DeleteOp(p+"c", rc),
		}},
		{"delete missing with revision", []store.Op{
			store.PutOp(p+"a", []byte("a1"), store.AnyRevision),
			store.DeleteOp(p+"missing", rb),
		}},
	}
	for _, tc := range cases {
		_, err := s.Txn(ctx, nil, tc.ops...)
		wantErr(t, "txn "+tc.name, err, store.ErrConflict)
		wantNotFound(t, s, p+"a")
		if kv := mustGet(t, s, p+"b"); string(kv.Value) != "b0" || kv.Revision != rb {
			t.Fatalf("txn %s: b = %+v, want b0 at %d", tc.name, kv, rb)
		}
		if kv := mustGet(t, s, p+"c"); string(kv.Value) != "c1" {
			t.Fatalf("txn %s: c = %+v, want c1", tc.name, kv)
		}
	}
}

func testTxnApplies(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	rb := mustPut(t, s, p+"b", "b0", store.MustNotExist)
	rc := mustPut(t, s, p+"c", "c0", store.MustNotExist)
	lease, err := s.Grant(ctx, 30*time.Second)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	leaseOp := store.PutOp(p+"l", []byte("leased"), store.MustNotExist)
	leaseOp.Lease = lease
	rev, err := s.Txn(ctx, nil,
		store.PutOp(p+"a", []byte("a1"), store.MustNotExist),
		store.PutOp(p+"b", []byte("b1"), rb),
		store.DeleteOp(p+"c", rc),
		store.PutOp(p+"d", []byte("d1"), store.AnyRevision),
		leaseOp,
	)
	if err != nil {
		t.Fatalf("txn: %v", err)
	}
	for k, v := range map[string]string{"a": "a1", "b": "b1", "d": "d1", "l": "leased"} {
		if kv := mustGet(t, s, p+k); string(kv.Value) != v || kv.Revision != rev {
			t.Fatalf("%s = %+v, want %s at txn revision %d", k, kv, v, rev)
		}
	}
	wantNotFound(t, s, p+"c")
	if kv := mustGet(t, s, p+"l"); kv.Lease != lease {
		t.Fatalf("leased key lease = %d, want %d", kv.Lease, lease)
	}
	if kv := mustGet(t, s, p+"a"); kv.Lease != 0 {
		t.Fatalf("unleased key lease = %d, want 0", kv.Lease)
	}
	if err := s.Revoke(ctx, lease); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	wantNotFound(t, s, p+"l")
}

func testTxnCondFencing(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	fence := p + "leader"
	term1 := mustPut(t, s, fence, "node1", store.MustNotExist)

	// Writes fenced on the current leadership revision apply.
	rev, err := s.Txn(ctx, []store.Cond{{Key: fence, ExpectRev: term1}},
		store.PutOp(p+"data", []byte("from node1"), store.AnyRevision))
	if err != nil {
		t.Fatalf("fenced txn: %v", err)
	}
	if kv := mustGet(t, s, p+"data"); kv.Revision != rev {
		t.Fatalf("data revision %d, want %d", kv.Revision, rev)
	}
	// The fence key itself is unchanged by a Cond.
	if kv := mustGet(t, s, fence); kv.Revision != term1 {
		t.Fatalf("fence revision %d, want %d", kv.Revision, term1)
	}

	// Leadership moves on; the old leader's fenced writes fail.
	term2 := mustPut(t, s, fence, "node2", term1)
	_, err = s.Txn(ctx, []store.Cond{{Key: fence, ExpectRev: term1}},
		store.PutOp(p+"data", []byte("late write from node1"), store.AnyRevision),
		store.PutOp(p+"other", []byte("x"), store.MustNotExist))
	wantErr(t, "txn fenced on old revision", err, store.ErrConflict)
	if kv := mustGet(t, s, p+"data"); string(kv.Value) != "from node1" {
		t.Fatalf("data = %q after fenced-out write", kv.Value)
	}
	wantNotFound(t, s, p+"other")

	// Cond MustNotExist and several conds.
	_, err = s.Txn(ctx, []store.Cond{{Key: fence, ExpectRev: term2}, {Key: fence, ExpectRev: store.MustNotExist}},
		store.PutOp(p+"other", []byte("x"), store.AnyRevision))
	wantErr(t, "txn with MustNotExist cond on existing key", err, store.ErrConflict)
	wantNotFound(t, s, p+"other")
	if _, err := s.Txn(ctx, []store.Cond{{Key: fence, ExpectRev: term2}, {Key: p + "nobody", ExpectRev: store.MustNotExist}},
		store.PutOp(p+"other", []byte("x"), store.MustNotExist)); err != nil {
		t.Fatalf("txn with passing conds: %v", err)
	}

	// Conds without ops: a pure check.
	if _, err := s.Txn(ctx, []store.Cond{{Key: fence, ExpectRev: term2}}); err != nil {
		t.Fatalf("txn with passing cond and no ops: %v", err)
	}
	_, err = s.Txn(ctx, []store.Cond{{Key: fence, ExpectRev: term1}})
	wantErr(t, "txn with failing cond and no ops", err, store.ErrConflict)
}

// testTxnCondUnchanged: a plan read at revision R commits only while no key
// under the prefix it read was written after R.
func testTxnCondUnchanged(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	pre := p + "alloc/h1/"
	// An empty prefix is unchanged at any revision.
	r0 := mustPut(t, s, p+"elsewhere", "x", store.MustNotExist)
	if _, err := s.Txn(ctx, []store.Cond{store.Unchanged(pre, r0)}, store.PutOp(pre+"a", []byte("1"), store.MustNotExist)); err != nil {
		t.Fatalf("txn on an empty prefix: %v", err)
	}
	read := mustGet(t, s, pre+"a").Revision
	// A write outside the prefix does not matter.
	mustPut(t, s, p+"elsewhere", "y", store.AnyRevision)
	if _, err := s.Txn(ctx, []store.Cond{store.Unchanged(pre, read)}, store.PutOp(pre+"b", []byte("1"), store.MustNotExist)); err != nil {
		t.Fatalf("txn with an unchanged prefix: %v", err)
	}
	// A write under the prefix after the plan's revision fails it.
	_, err := s.Txn(ctx, []store.Cond{store.Unchanged(pre, read)}, store.PutOp(pre+"c", []byte("1"), store.MustNotExist))
	wantErr(t, "txn on a prefix written after the plan", err, store.ErrConflict)
	wantNotFound(t, s, pre+"c")
	// A key that merely shares the prefix's first bytes is under it too
	// (prefixes end in "/" for that reason): "alloc/h1/" does not cover
	// "alloc/h10/".
	latest := mustGet(t, s, pre+"b").Revision
	mustPut(t, s, p+"alloc/h10/x", "1", store.MustNotExist)
	if _, err := s.Txn(ctx, []store.Cond{store.Unchanged(pre, latest)}); err != nil {
		t.Fatalf("a sibling prefix changed the condition: %v", err)
	}
}

// nextEvent receives one event or fails.
func nextEvent(t *testing.T, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed early")
		}
		return ev
	case <-time.After(wait):
		t.Fatal("no watch event")
	}
	panic("unreachable")
}

// wantClosed waits for ch to close, discarding events.
func wantClosed[T any](t *testing.T, what string, ch <-chan T) {
	t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("%s: channel not closed after %v", what, wait)
		}
	}
}

// wantNoEvent checks that nothing arrives for a short while.
func wantNoEvent(t *testing.T, ch <-chan store.Event) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("unexpected event %+v", ev)
		}
		t.Fatal("watch channel closed early")
	case <-time.After(200 * time.Millisecond):
	}
}

func checkEvent(t *testing.T, ev store.Event, typ store.EventType, key, value string, rev int64) {
	t.Helper()
	if ev.Type != typ || ev.KV.Key != key || string(ev.KV.Value) != value || (rev > 0 && ev.KV.Revision != rev) {
		t.Fatalf("event = {%v %q=%q @%d}, want {%v %q=%q @%d}", ev.Type, ev.KV.Key, ev.KV.Value, ev.KV.Revision, typ, key, value, rev)
	}
}

func testWatchFromRevision(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	w := p + "w/"
	mustPut(t, s, w+"before", "x", store.AnyRevision)
	ra := mustPut(t, s, w+"a", "a1", store.AnyRevision)
	rb := mustPut(t, s, w+"b", "b1", store.AnyRevision)
	mustPut(t, s, p+"outside", "x", store.AnyRevision)
	mustPut(t, s, p+"w", "x", store.AnyRevision) // the prefix minus its slash is outside too
	ra2 := mustPut(t, s, w+"a", "a2", ra)
	if err := s.Delete(ctx, w+"a", ra2); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, rdel, err := s.List(ctx, w)
	if err != nil {
		t.Fatalf("list: %v", err)
	}

	ch := s.Watch(ctx, w, ra)
	checkEvent(t, nextEvent(t, ch), store.EventPut, w+"a", "a1", ra)
	checkEvent(t, nextEvent(t, ch), store.EventPut, w+"b", "b1", rb)
	checkEvent(t, nextEvent(t, ch), store.EventPut, w+"a", "a2", ra2)
	del := nextEvent(t, ch)
	checkEvent(t, del, store.EventDelete, w+"a", "", 0)
	if del.KV.Revision <= ra2 || del.KV.Revision > rdel {
		t.Fatalf("delete event revision %d, want in (%d, %d]", del.KV.Revision, ra2, rdel)
	}

	// Live events follow the historical ones.
	rc := mustPut(t, s, w+"c", "c1", store.AnyRevision)
	checkEvent(t, nextEvent(t, ch), store.EventPut, w+"c", "c1", rc)

	// A transaction's events arrive in op order.
	rt, err := s.Txn(ctx, nil,
		store.PutOp(w+"t2", []byte("2"), store.AnyRevision),
		store.PutOp(w+"t1", []byte("1"), store.AnyRevision),
		store.DeleteOp(w+"c", rc))
	if err != nil {
		t.Fatalf("txn: %v", err)
	}
	checkEvent(t, nextEvent(t, ch), store.EventPut, w+"t2", "2", rt)
	checkEvent(t, nextEvent(t, ch), store.EventPut, w+"t1", "1", rt)
	checkEvent(t, nextEvent(t, ch), store.EventDelete, w+"c", "", rt)
	wantNoEvent(t, ch)
}

func testWatchAfterList(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	mustPut(t, s, p+"k1", "1", store.AnyRevision)
	mustPut(t, s, p+"k2", "2", store.AnyRevision)
	kvs, rev, err := s.List(ctx, p)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(kvs) != 2 {
		t.Fatalf("list = %v", kvKeys(kvs))
	}
	// Changes between List and Watch must not be lost.
	r3 := mustPut(t, s, p+"k3", "3", store.AnyRevision)
	if err := s.Delete(ctx, p+"k1", store.AnyRevision); err != nil {
		t.Fatalf("delete: %v", err)
	}
	ch := s.Watch(ctx, p, rev+1)
	r4 := mustPut(t, s, p+"k4", "4", store.AnyRevision)
	checkEvent(t, nextEvent(t, ch), store.EventPut, p+"k3", "3", r3)
	checkEvent(t, nextEvent(t, ch), store.EventDelete, p+"k1", "", 0)
	checkEvent(t, nextEvent(t, ch), store.EventPut, p+"k4", "4", r4)
	wantNoEvent(t, ch)
}

func testWatchFromNow(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	mustPut(t, s, p+"old", "x", store.AnyRevision)
	ch := s.Watch(ctx, p, 0)
	// The watch may start a little after Watch returns; keep writing until
	// the first event arrives. It must not be the write from before.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(wait)
	for i := 0; ; i++ {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed early")
			}
			if ev.Type != store.EventPut || !strings.HasPrefix(ev.KV.Key, p+"new") {
				t.Fatalf("first event from now = %+v, want a put of %snew*", ev, p)
			}
			return
		case <-tick.C:
			mustPut(t, s, fmt.Sprintf("%snew%d", p, i), "y", store.AnyRevision)
		case <-deadline:
			t.Fatal("no event from a watch from now")
		}
	}
}

func testWatchCancel(t *testing.T, s store.Store, p string) {
	ctx, cancel := context.WithCancel(ctxT(t))
	ch := s.Watch(ctx, p, 0)
	cancel()
	wantClosed(t, "idle watch after cancel", ch)

	// A watch with undelivered events also closes.
	r := mustPut(t, s, p+"a", "1", store.AnyRevision)
	for i := range 5 {
		mustPut(t, s, p+"a", strconv.Itoa(i), store.AnyRevision)
	}
	ctx, cancel = context.WithCancel(ctxT(t))
	ch = s.Watch(ctx, p, r)
	checkEvent(t, nextEvent(t, ch), store.EventPut, p+"a", "1", r)
	cancel()
	wantClosed(t, "busy watch after cancel", ch)
}

func testLeaseRevoke(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	id, err := s.Grant(ctx, 30*time.Second)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	if id == 0 {
		t.Fatal("grant returned lease 0")
	}
	rev, err := s.PutWithLease(ctx, p+"eph", []byte("here"), id)
	if err != nil {
		t.Fatalf("put with lease: %v", err)
	}
	if kv := mustGet(t, s, p+"eph"); string(kv.Value) != "here" || kv.Lease != id || kv.Revision != rev {
		t.Fatalf("get = %+v, want value here lease %d revision %d", kv, id, rev)
	}
	mustPut(t, s, p+"durable", "x", store.AnyRevision)

	ch := s.Watch(ctx, p, rev+1)
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	wantNotFound(t, s, p+"eph")
	mustGet(t, s, p+"durable")
	nextEvent(t, ch) // the put of durable
	checkEvent(t, nextEvent(t, ch), store.EventDelete, p+"eph", "", 0)

	// A revoked lease cannot take keys.
	if _, err := s.PutWithLease(ctx, p+"eph2", []byte("x"), id); err == nil {
		t.Fatal("put with revoked lease: want error")
	}
	wantNotFound(t, s, p+"eph2")
}

// waitGone polls until key is gone and returns how long that took.
func waitGone(t *testing.T, s store.Store, key string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		_, err := s.Get(ctxT(t), key)
		if errors.Is(err, store.ErrNotFound) {
			return time.Since(start)
		}
		if err != nil {
			t.Fatalf("get %q: %v", key, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%q still present after %v", key, limit)
	return 0
}

func testLeaseExpiry(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	id, err := s.Grant(ctx, leaseTTL)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	if _, err := s.PutWithLease(ctx, p+"eph", []byte("x"), id); err != nil {
		t.Fatalf("put with lease: %v", err)
	}
	mustGet(t, s, p+"eph")
	took := waitGone(t, s, p+"eph", 5*leaseTTL)
	t.Logf("key with %v lease gone after %v", leaseTTL, took)
	if took < leaseTTL/2 {
		t.Fatalf("key gone after %v, before the lease TTL %v", took, leaseTTL)
	}
}

func testLeaseKeepAlive(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	id, err := s.Grant(ctx, leaseTTL)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	if _, err := s.PutWithLease(ctx, p+"eph", []byte("x"), id); err != nil {
		t.Fatalf("put with lease: %v", err)
	}
	kaCtx, stop := context.WithCancel(ctx)
	defer stop()
	ka, err := s.KeepAlive(kaCtx, id)
	if err != nil {
		t.Fatalf("keepalive: %v", err)
	}
	time.Sleep(2*leaseTTL + leaseTTL/2)
	if kv := mustGet(t, s, p+"eph"); kv.Lease != id {
		t.Fatalf("kept-alive key lease %d, want %d", kv.Lease, id)
	}
	select {
	case <-ka:
		t.Fatal("keepalive channel closed while the lease is alive")
	default:
	}

	stop()
	wantClosed(t, "keepalive after cancel", ka)
	took := waitGone(t, s, p+"eph", 5*leaseTTL)
	t.Logf("key gone %v after keepalive stopped", took)
}

// testLeaseTimeToLive: a lease's remaining time is within its TTL and
// whole seconds; a revoked lease has none (ErrNotFound).
func testLeaseTimeToLive(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	id, err := s.Grant(ctx, 5*time.Second)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	left, err := s.TimeToLive(ctx, id)
	if err != nil || left <= 0 || left > 5*time.Second || left%time.Second != 0 {
		t.Fatalf("time to live of a 5 s lease: %v %v", left, err)
	}
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if left, err := s.TimeToLive(ctx, id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("time to live of a revoked lease: %v %v, want ErrNotFound", left, err)
	}
}

func testKeepAliveRevoked(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	// A short TTL, so an implementation that only notices the revoke at the
	// next renewal still closes within the wait.
	id, err := s.Grant(ctx, leaseTTL)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	ka, err := s.KeepAlive(ctx, id)
	if err != nil {
		t.Fatalf("keepalive: %v", err)
	}
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	wantClosed(t, "keepalive after revoke", ka)

	// Keeping a dead lease alive fails at once or closes promptly.
	ka, err = s.KeepAlive(ctx, id)
	if err == nil {
		wantClosed(t, "keepalive of revoked lease", ka)
	}
}

func testConcurrentCAS(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	const n = 20
	key := p + "counter"
	mustPut(t, s, key, "0", store.MustNotExist)

	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		conflicts int
	)
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			for attempt := 0; attempt < 1000; attempt++ {
				kv, err := s.Get(ctx, key)
				if err != nil {
					errs <- err
					return
				}
				v, err := strconv.Atoi(string(kv.Value))
				if err != nil {
					errs <- err
					return
				}
				_, err = s.Put(ctx, key, []byte(strconv.Itoa(v+1)), kv.Revision)
				if err == nil {
					return
				}
				if !errors.Is(err, store.ErrConflict) {
					errs <- err
					return
				}
				mu.Lock()
				conflicts++
				mu.Unlock()
			}
			errs <- errors.New("too many conflicts")
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("increment: %v", err)
	}
	if kv := mustGet(t, s, key); string(kv.Value) != strconv.Itoa(n) {
		t.Fatalf("counter = %s, want %d", kv.Value, n)
	}
	t.Logf("%d increments, %d conflicts retried", n, conflicts)
}

type record struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func testJSON(t *testing.T, s store.Store, p string) {
	ctx := ctxT(t)
	var r record
	_, err := store.GetJSON(ctx, s, p+"r/missing", &r)
	wantErr(t, "get json missing", err, store.ErrNotFound)

	rev, err := store.PutJSON(ctx, s, p+"r/b", record{Name: "b", Count: 1}, store.MustNotExist)
	if err != nil {
		t.Fatalf("put json: %v", err)
	}
	_, err = store.PutJSON(ctx, s, p+"r/b", record{Name: "b", Count: 9}, store.MustNotExist)
	wantErr(t, "put json create twice", err, store.ErrConflict)
	got, err := store.GetJSON(ctx, s, p+"r/b", &r)
	if err != nil || got != rev || r != (record{Name: "b", Count: 1}) {
		t.Fatalf("get json = %+v at %d, %v; want {b 1} at %d", r, got, err, rev)
	}
	rev2, err := store.PutJSON(ctx, s, p+"r/b", record{Name: "b", Count: 2}, rev)
	if err != nil {
		t.Fatalf("put json with revision: %v", err)
	}
	_, err = store.PutJSON(ctx, s, p+"r/b", record{Name: "b", Count: 3}, rev)
	wantErr(t, "put json stale", err, store.ErrConflict)
	reva, err := store.PutJSON(ctx, s, p+"r/a", record{Name: "a"}, store.AnyRevision)
	if err != nil {
		t.Fatalf("put json: %v", err)
	}

	items, listRev, err := store.ListJSON[record](ctx, s, p+"r/")
	if err != nil {
		t.Fatalf("list json: %v", err)
	}
	want := []store.Item[record]{
		{Key: p + "r/a", Value: record{Name: "a"}, Rev: reva},
		{Key: p + "r/b", Value: record{Name: "b", Count: 2}, Rev: rev2},
	}
	if len(items) != len(want) || items[0] != want[0] || items[1] != want[1] || listRev < reva {
		t.Fatalf("list json = %+v at %d, want %+v at >= %d", items, listRev, want, reva)
	}

	// Undecodable values are errors, not "not found".
	mustPut(t, s, p+"r/bad", "{not json", store.AnyRevision)
	_, err = store.GetJSON(ctx, s, p+"r/bad", &r)
	if err == nil || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get json of bad value: err = %v, want decode error", err)
	}
	if _, _, err := store.ListJSON[record](ctx, s, p+"r/"); err == nil {
		t.Fatal("list json with a bad value: want error")
	}
}

func kvKeys(kvs []store.KV) []string {
	keys := make([]string, len(kvs))
	for i, kv := range kvs {
		keys[i] = kv.Key
	}
	return keys
}
