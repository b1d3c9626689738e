// Package audit keeps the record of every mutating API request — who,
// what (method and route), which target, when, from where and with what
// result — in etcd, pruned to a retention of a number of records and an
// age.
package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/store"
)

// Prefix of the records: /hangar/audit/<unix nanoseconds, 20 digits>-<8 hex>,
// so that keys sort by time.
const Prefix = "/hangar/audit/"

// Retention defaults.
const (
	DefaultMaxRecords = 10000
	DefaultMaxAge     = 90 * 24 * time.Hour
)

// Log writes and reads the audit records.
type Log struct {
	S store.Store
	// MaxRecords and MaxAge bound what is kept (0: the defaults).
	MaxRecords int
	MaxAge     time.Duration
	Now        func() time.Time
	Log        *slog.Logger

	mu      sync.Mutex
	written int
}

func (l *Log) now() time.Time {
	if l.Now != nil {
		return l.Now().UTC()
	}
	return time.Now().UTC()
}

func (l *Log) limits() (int, time.Duration) {
	n, d := l.MaxRecords, l.MaxAge
	if n <= 0 {
		n = DefaultMaxRecords
	}
	if d <= 0 {
		d = DefaultMaxAge
	}
	return n, d
}

// Record stores one record (its ID and, when unset, Time are filled in).
// Every tenth of MaxRecords writes it prunes.
func (l *Log) Record(ctx context.Context, rec v1.AuditRecord) error {
	if rec.Time.IsZero() {
		rec.Time = l.now()
	}
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		return err
	}
	rec.ID = fmt.Sprintf("%020d-%s", rec.Time.UnixNano(), hex.EncodeToString(r[:]))
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := l.S.Put(ctx, Prefix+rec.ID, b, store.MustNotExist); err != nil {
		return fmt.Errorf("write audit record: %w", err)
	}
	keep, _ := l.limits()
	l.mu.Lock()
	l.written++
	due := l.written%max(1, keep/10) == 0 || l.written == 1
	l.mu.Unlock()
	if due {
		return l.Prune(ctx)
	}
	return nil
}

// Prune deletes the records older than MaxAge and the oldest beyond
// MaxRecords.
func (l *Log) Prune(ctx context.Context) error {
	keep, age := l.limits()
	kvs, _, err := l.S.List(ctx, Prefix)
	if err != nil {
		return fmt.Errorf("list audit records: %w", err)
	}
	cut := fmt.Sprintf("%020d", l.now().Add(-age).UnixNano())
	for i, kv := range kvs {
		if len(kvs)-i <= keep && strings.TrimPrefix(kv.Key, Prefix) >= cut {
			break
		}
		if err := l.S.Delete(ctx, kv.Key, store.AnyRevision); err != nil {
			return fmt.Errorf("prune audit record %s: %w", kv.Key, err)
		}
	}
	return nil
}

// Filter selects records.
type Filter struct {
	VM, User string
	// Limit is the most records returned, newest first (0: 100).
	Limit int
}

// MaxLimit bounds Filter.Limit.
const MaxLimit = 10000

// List returns the records the filter selects, newest first. A record
// that does not decode is skipped with a log line (state is input).
func (l *Log) List(ctx context.Context, f Filter) ([]v1.AuditRecord, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	kvs, _, err := l.S.List(ctx, Prefix)
	if err != nil {
		return nil, fmt.Errorf("list audit records: %w", err)
	}
	out := []v1.AuditRecord{}
	for _, kv := range slices.Backward(kvs) {
		var rec v1.AuditRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil || Prefix+rec.ID != kv.Key {
			if l.Log != nil {
				l.Log.Warn("audit record refused", "key", kv.Key, "err", err)
			}
			continue
		}
		if (f.VM != "" && rec.VM != f.VM) || (f.User != "" && rec.User != f.User) {
			continue
		}
		out = append(out, rec)
		if len(out) == f.Limit {
			break
		}
	}
	return out, nil
}
