package access

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/store"
)

// Login lockout defaults.
const (
	DefaultMaxFailures = 5
	DefaultLockout     = 5 * time.Minute
)

// FailuresPrefix keeps the failed logins of one user from one address:
// /hangar/loginfailures/<hex SHA-256 of user NUL address>, on a lease.
const FailuresPrefix = "/hangar/loginfailures/"

// Limiter locks logins of one user from one source address after
// MaxFailures failed attempts within Lockout, for Lockout. With a store
// the counts are the pool's (every host's API sees them); without one,
// they are kept in memory.
type Limiter struct {
	MaxFailures int
	Lockout     time.Duration
	Now         func() time.Time
	S           store.Store

	mu sync.Mutex
	m  map[string]attempts
}

// attempts is the record of one user and address.
type attempts struct {
	Failures    int       `json:"failures"`
	First       time.Time `json:"first"`
	LockedUntil time.Time `json:"lockedUntil"`
}

// maxTracked bounds the in-memory table: past it, entries whose window is
// over are dropped.
const maxTracked = 10000

func (l *Limiter) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

func (l *Limiter) limits() (int, time.Duration) {
	n, d := l.MaxFailures, l.Lockout
	if n <= 0 {
		n = DefaultMaxFailures
	}
	if d <= 0 {
		d = DefaultLockout
	}
	return n, d
}

func limiterKey(user, source string) string {
	h := sha256.Sum256([]byte(user + "\x00" + source))
	return FailuresPrefix + hex.EncodeToString(h[:])
}

// load returns the record of key and its revision (0: none). A record
// that does not decode counts as none (it only ever makes logins easier
// to lock, never harder).
func (l *Limiter) load(ctx context.Context, key string) (attempts, int64, error) {
	if l.S == nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.m[key], 0, nil
	}
	kv, err := l.S.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return attempts{}, store.MustNotExist, nil
	}
	if err != nil {
		return attempts{}, 0, fmt.Errorf("load failed logins: %w", err)
	}
	var a attempts
	if json.Unmarshal(kv.Value, &a) != nil || a.Failures < 0 {
		a = attempts{}
	}
	return a, kv.Revision, nil
}

// Check refuses (429) a login of user from source while it is locked.
func (l *Limiter) Check(ctx context.Context, user, source string) error {
	a, _, err := l.load(ctx, limiterKey(user, source))
	if err != nil {
		return err
	}
	now := l.now()
	if !now.Before(a.LockedUntil) {
		return nil
	}
	return &LockedError{RetryAfter: a.LockedUntil.Sub(now), Failures: a.Failures}
}

// next is a's record after one more failure at now.
func next(a attempts, now time.Time, max int, lockout time.Duration) attempts {
	if a.Failures == 0 || (now.Sub(a.First) > lockout && !now.Before(a.LockedUntil)) {
		a = attempts{First: now}
	}
	a.Failures++
	if a.Failures >= max {
		a.LockedUntil = now.Add(lockout)
	}
	return a
}

// Fail counts a failed login; the one that reaches MaxFailures locks.
func (l *Limiter) Fail(ctx context.Context, user, source string) error {
	max, lockout := l.limits()
	key := limiterKey(user, source)
	if l.S == nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.m == nil {
			l.m = map[string]attempts{}
		}
		now := l.now()
		if len(l.m) >= maxTracked {
			for k, a := range l.m {
				if now.Sub(a.First) > lockout && !now.Before(a.LockedUntil) {
					delete(l.m, k)
				}
			}
		}
		l.m[key] = next(l.m[key], now, max, lockout)
		return nil
	}
	for attempt := 0; ; attempt++ {
		a, rev, err := l.load(ctx, key)
		if err != nil {
			return err
		}
		a = next(a, l.now(), max, lockout)
		// The record goes with a lease that outlives its window.
		lease, err := l.S.Grant(ctx, 2*lockout+time.Minute)
		if err != nil {
			return fmt.Errorf("count a failed login: %w", err)
		}
		b, _ := json.Marshal(a)
		_, err = l.S.Txn(ctx, nil, store.Op{Key: key, Value: b, ExpectRev: rev, Lease: lease})
		if errors.Is(err, store.ErrConflict) && attempt < 5 {
			_ = l.S.Revoke(ctx, lease)
			continue
		}
		if err != nil {
			return fmt.Errorf("count a failed login: %w", err)
		}
		return nil
	}
}

// Succeed forgets the failures of user from source.
func (l *Limiter) Succeed(ctx context.Context, user, source string) error {
	key := limiterKey(user, source)
	if l.S == nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.m, key)
		return nil
	}
	if err := l.S.Delete(ctx, key, store.AnyRevision); err != nil {
		return fmt.Errorf("forget failed logins: %w", err)
	}
	return nil
}

// LockedError: logins are locked; the API answers 429 with Retry-After.
type LockedError struct {
	RetryAfter time.Duration
	Failures   int
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("too many failed logins (%d): locked, try again in %s", e.Failures, e.RetryAfter.Round(time.Second))
}

// APIError is the error's answer.
func (e *LockedError) APIError() *v1.Error {
	return &v1.Error{Code: v1.CodeTooManyRequests, Field: "user", Message: e.Error()}
}
