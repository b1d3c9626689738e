// Package store is Hangar's state store: a small key/value interface with
// revisions, transactions, watches and leases, implemented on etcd.
//
// Keys are plain strings under a per-cluster prefix chosen by the caller
// (e.g. "/hangar/vms/web1/spec"). Values are opaque bytes; callers use the
// JSON helpers GetJSON/PutJSON for typed records.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors callers test with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a revision condition failed (key exists when it must not,
	// or was modified since the expected revision).
	ErrConflict = errors.New("revision conflict")
)

// Revision conditions for Put/Delete and transaction ops.
const (
	// AnyRevision: no condition.
	AnyRevision int64 = -1
	// MustNotExist: the key must not exist.
	MustNotExist int64 = 0
)

// KV is one stored key.
type KV struct {
	Key      string
	Value    []byte
	Revision int64 // the key's modification revision
	Lease    LeaseID
}

// EventType says what happened to a key.
type EventType int

const (
	EventPut EventType = iota + 1
	EventDelete
)

// Event is one change seen by a watch.
type Event struct {
	Type EventType
	KV   KV // for EventDelete, Value is empty and Revision is the deletion revision
}

// LeaseID identifies a lease; 0 is "no lease".
type LeaseID int64

// Op is one write in a transaction. Build with PutOp / DeleteOp.
// ExpectRev is AnyRevision, MustNotExist, or a modification revision the key
// must have for the whole transaction to apply.
type Op struct {
	Key       string
	Value     []byte
	Delete    bool
	ExpectRev int64
	Lease     LeaseID
}

// Cond is an extra condition on a transaction without a write (e.g. "the
// leadership key still has revision R" for fenced writes).
type Cond struct {
	Key       string
	ExpectRev int64 // MustNotExist or an exact modification revision
	// Prefix makes the condition "no key under the prefix Key was written
	// after revision ExpectRev" (a plan read at ExpectRev is still true of
	// the keys it read; a deleted key is not seen). ExpectRev must be > 0.
	Prefix bool
}

// Unchanged is the condition that nothing under prefix was written after
// revision rev.
func Unchanged(prefix string, rev int64) Cond { return Cond{Key: prefix, ExpectRev: rev, Prefix: true} }

// PutOp writes value at key if the key's revision is expectRev.
func PutOp(key string, value []byte, expectRev int64) Op {
	return Op{Key: key, Value: value, ExpectRev: expectRev}
}

// DeleteOp deletes key if its revision is expectRev.
func DeleteOp(key string, expectRev int64) Op {
	return Op{Key: key, Delete: true, ExpectRev: expectRev}
}

// Store is the state store. All methods honour ctx.
type Store interface {
	// Get returns the key or ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns all keys with the prefix, sorted by key, and the store
	// revision they were read at (to start a watch from rev+1).
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	// Put writes the key if the condition holds; returns the new revision.
	// A failed condition returns ErrConflict.
	Put(ctx context.Context, key string, value []byte, expectRev int64) (int64, error)
	// Delete removes the key if the condition holds. Deleting a missing key
	// with AnyRevision is not an error; with an exact revision it is ErrConflict.
	Delete(ctx context.Context, key string, expectRev int64) error
	// Txn applies all ops atomically if every op's and cond's condition holds,
	// else nothing and ErrConflict. Returns the new store revision.
	Txn(ctx context.Context, conds []Cond, ops ...Op) (int64, error)
	// Watch streams changes under prefix starting at revision fromRev (0 =
	// from now). The channel closes when ctx ends or the watch fails (e.g.
	// compacted); callers then List again and re-watch.
	Watch(ctx context.Context, prefix string, fromRev int64) <-chan Event
	// Grant creates a lease with the TTL.
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAlive renews the lease until ctx ends; the channel closes when the
	// lease is lost (expired or revoked) or ctx ends.
	KeepAlive(ctx context.Context, id LeaseID) (<-chan struct{}, error)
	// TimeToLive is the lease's remaining time as the store answers it
	// (whole seconds, rounded down: it holds at least that long from when
	// the question was sent); ErrNotFound once it expired or was revoked.
	TimeToLive(ctx context.Context, id LeaseID) (time.Duration, error)
	// Revoke ends the lease and deletes the keys attached to it.
	Revoke(ctx context.Context, id LeaseID) error
	// PutWithLease writes key attached to a lease (unconditionally).
	PutWithLease(ctx context.Context, key string, value []byte, id LeaseID) (int64, error)
	// Close releases the client.
	Close() error
}
