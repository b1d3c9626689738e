package access

import (
	"fmt"
	"sync"
	"time"

	v1 "hangar/api/v1"
)

// Login lockout defaults.
const (
	DefaultMaxFailures = 5
	DefaultLockout     = 5 * time.Minute
)

// Limiter locks logins of one user from one source address after
// MaxFailures failed attempts within Lockout, for Lockout. It is kept in
// the memory of each API server: an attacker who spreads attempts over
// the pool's hosts gets MaxFailures on each.
type Limiter struct {
	MaxFailures int
	Lockout     time.Duration
	Now         func() time.Time

	mu sync.Mutex
	m  map[string]*attempts
}

type attempts struct {
	failures    int
	first       time.Time
	lockedUntil time.Time
}

// maxTracked bounds the table: past it, entries whose window is over are
// dropped.
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

func limiterKey(user, source string) string { return user + "\x00" + source }

// Check refuses (429) a login of user from source while it is locked.
func (l *Limiter) Check(user, source string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.m[limiterKey(user, source)]
	now := l.now()
	if a == nil || !now.Before(a.lockedUntil) {
		return nil
	}
	return &LockedError{RetryAfter: a.lockedUntil.Sub(now), Failures: a.failures}
}

// Fail counts a failed login; the one that reaches MaxFailures locks.
func (l *Limiter) Fail(user, source string) {
	max, lockout := l.limits()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*attempts{}
	}
	now := l.now()
	if len(l.m) >= maxTracked {
		for k, a := range l.m {
			if now.Sub(a.first) > lockout && !now.Before(a.lockedUntil) {
				delete(l.m, k)
			}
		}
	}
	k := limiterKey(user, source)
	a := l.m[k]
	if a == nil || (now.Sub(a.first) > lockout && !now.Before(a.lockedUntil)) {
		a = &attempts{first: now}
		l.m[k] = a
	}
	a.failures++
	if a.failures >= max {
		a.lockedUntil = now.Add(lockout)
	}
}

// Succeed forgets the failures of user from source.
func (l *Limiter) Succeed(user, source string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.m, limiterKey(user, source))
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
