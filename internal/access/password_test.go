package access

import (
	"strings"
	"testing"
	"time"
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
	now := time.Unix(1000, 0)
	l := &Limiter{MaxFailures: 2, Lockout: time.Minute, Now: func() time.Time { return now }}
	l.Fail("u", "a")
	if l.Check("u", "a") != nil {
		t.Fatal("locked after one failure")
	}
	l.Fail("u", "a")
	if l.Check("u", "a") == nil {
		t.Fatal("not locked after two failures")
	}
	if l.Check("u", "b") != nil || l.Check("v", "a") != nil {
		t.Fatal("the lock covers another user or source")
	}
	now = now.Add(61 * time.Second)
	if l.Check("u", "a") != nil {
		t.Fatal("still locked after the lockout")
	}
	l.Fail("u", "a")
	if l.Check("u", "a") != nil {
		t.Fatal("the failures before the lockout ended still count")
	}
	l.Succeed("u", "a")
	l.Fail("u", "a")
	if l.Check("u", "a") != nil {
		t.Fatal("a success did not clear the failures")
	}
}
