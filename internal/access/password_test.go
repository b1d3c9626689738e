package access

import (
	"errors"
	"strings"
	"testing"
	"time"

	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/store"
)

func TestPasswordHash(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Errorf("hash %q", h)
	}
	if ok, err := VerifyPassword(h, "correct horse"); !ok || err != nil {
		t.Errorf("right password: %v %v", ok, err)
	}
	if ok, err := VerifyPassword(h, "correct horsE"); ok || err != nil {
		t.Errorf("wrong password: %v %v", ok, err)
	}
	h2, _ := HashPassword("correct horse")
	if h2 == h {
		t.Error("two hashes of one password are equal: no salt")
	}
	// A stored hash is input: parameters out of bounds are refused, not computed.
	for _, bad := range []string{"", "$2a$10$abc", strings.Replace(h, "m=19456", "m=4194304", 1), strings.Replace(h, "t=2", "t=1000", 1),
		strings.Replace(h, "v=19", "v=16", 1), h[:len(h)-10] + "!!!"} {
		if _, err := VerifyPassword(bad, "correct horse"); err == nil {
			t.Errorf("hash %q accepted", bad)
		}
	}
	if CheckPassword("password", "short") == nil || CheckPassword("password", strings.Repeat("x", MaxPassword+1)) == nil {
		t.Error("bad password lengths accepted")
	}
}

func TestSecret(t *testing.T) {
	s, err := newSecret(tokenPrefix)
	if err != nil {
		t.Fatal(err)
	}
	id, d, ok := parseSecret(tokenPrefix, s.full)
	if !ok || id != s.id || d != s.digest {
		t.Fatalf("parse %q: %v %v", s.full, id, ok)
	}
	for _, bad := range []string{"", s.full[1:], sessionPrefix + s.full[len(tokenPrefix):], s.full + "x", strings.ToUpper(s.full)} {
		if _, _, ok := parseSecret(tokenPrefix, bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestLimiter(t *testing.T) {
	ctx := t.Context()
	st := store.NewEtcd(etcdtest.Start(t).Client())
	for name, mk := range map[string]func(now func() time.Time) (*Limiter, *Limiter){
		"memory": func(now func() time.Time) (*Limiter, *Limiter) {
			l := &Limiter{MaxFailures: 2, Lockout: time.Minute, Now: now}
			return l, l
		},
		// Two hosts' APIs on one store count together.
		"etcd": func(now func() time.Time) (*Limiter, *Limiter) {
			return &Limiter{MaxFailures: 2, Lockout: time.Minute, Now: now, S: st}, &Limiter{MaxFailures: 2, Lockout: time.Minute, Now: now, S: st}
		},
	} {
		now := time.Unix(1000, 0)
		l, other := mk(func() time.Time { return now })
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(l.Fail(ctx, "u", "a"))
		if l.Check(ctx, "u", "a") != nil {
			t.Fatalf("%s: locked after one failure", name)
		}
		must(other.Fail(ctx, "u", "a"))
		var le *LockedError
		if err := l.Check(ctx, "u", "a"); !errors.As(err, &le) || le.RetryAfter != time.Minute {
			t.Fatalf("%s: not locked after two failures: %v", name, err)
		}
		if l.Check(ctx, "u", "b") != nil || l.Check(ctx, "v", "a") != nil {
			t.Fatalf("%s: the lock covers another user or source", name)
		}
		now = now.Add(61 * time.Second)
		if l.Check(ctx, "u", "a") != nil {
			t.Fatalf("%s: still locked after the lockout", name)
		}
		must(l.Fail(ctx, "u", "a"))
		if l.Check(ctx, "u", "a") != nil {
			t.Fatalf("%s: the failures before the lockout ended still count", name)
		}
		must(l.Succeed(ctx, "u", "a"))
		must(l.Fail(ctx, "u", "a"))
		if l.Check(ctx, "u", "a") != nil {
			t.Fatalf("%s: a success did not clear the failures", name)
		}
		must(l.Succeed(ctx, "u", "a"))
	}
}

// BenchmarkVerifyPassword is what one login costs in CPU.
func BenchmarkVerifyPassword(b *testing.B) {
	h, err := HashPassword("correct horse")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if ok, err := VerifyPassword(h, "correct horse"); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}
