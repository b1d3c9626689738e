package access

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/authn"
	"hangar/internal/errdefs"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

// TestRecordsAreInput: user and token records read back from etcd are
// checked like requests: another key's name, a hash with parameters out
// of bounds, an unknown field or a token record of another id is refused,
// never used.
func TestRecordsAreInput(t *testing.T) {
	st := store.NewEtcd(etcdtest.Start(t).Client())
	s := &Store{S: st}
	ctx := t.Context()
	if _, err := s.AddUser(ctx, v1.UserRequest{Name: "olga", Password: "long enough", Grants: []v1.Grant{{Role: "viewer", Scope: "pool"}}}); err != nil {
		t.Fatal(err)
	}
	kv, err := st.Get(ctx, UsersPrefix+"olga")
	if err != nil {
		t.Fatal(err)
	}
	good := string(kv.Value)
	for name, bad := range map[string]string{
		"another name":   strings.Replace(good, `"name":"olga"`, `"name":"root"`, 1),
		"huge memory":    strings.Replace(good, "m=19456", "m=9999999", 1),
		"unknown field":  strings.Replace(good, `{"name"`, `{"admin":true,"name"`, 1),
		"unknown role":   strings.Replace(good, `"viewer"`, `"root"`, 1),
		"not a PHC hash": strings.Replace(good, "$argon2id$", "$2a$", 1),
	} {
		if _, err := st.Put(ctx, UsersPrefix+"olga", []byte(bad), store.AnyRevision); err != nil {
			t.Fatal(err)
		}
		if _, err := s.User(ctx, "olga"); !errors.Is(err, inventory.ErrInvalidRecord) {
			t.Errorf("%s: User = %v, want an invalid record", name, err)
		}
		if _, err := s.CheckLogin(ctx, "olga", "long enough"); err == nil {
			t.Errorf("%s: login accepted", name)
		}
	}
	if _, err := st.Put(ctx, UsersPrefix+"olga", []byte(good), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	caller := authn.Identity{Name: "olga", Method: authn.MethodSession, User: "olga", Grants: []v1.Grant{{Role: "viewer", Scope: "pool"}}}
	nt, err := s.CreateToken(ctx, caller, v1.TokenRequest{Name: "t", TTLSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	auth := func() error {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Authorization", "Bearer "+nt.Secret)
		_, err := s.Authenticate(r)
		return err
	}
	if err := auth(); err != nil {
		t.Fatalf("fresh token: %v", err)
	}
	// The record of this token moved under another id: refused.
	kv, _ = st.Get(ctx, TokensPrefix+nt.ID)
	if _, err := st.Put(ctx, TokensPrefix+nt.ID, []byte(strings.Replace(string(kv.Value), nt.ID, "00000000000000aa", 1)), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	if err := auth(); !errors.Is(err, inventory.ErrInvalidRecord) {
		t.Errorf("token record naming another id: %v", err)
	}
	// A secret of the right form with the wrong bytes.
	if _, err := st.Put(ctx, TokensPrefix+nt.ID, kv.Value, store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	wrong := nt.Secret[:len(nt.Secret)-4] + "AAAA"
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+wrong)
	if _, err := s.Authenticate(r); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("wrong secret: %v", err)
	}
	// A token outlives neither its expiry nor its user.
	s.Now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if err := auth(); !errors.Is(err, errdefs.ErrUnauthenticated) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired: %v", err)
	}
	s.Now = nil
	if err := s.DeleteUser(ctx, "olga"); err != nil {
		t.Fatal(err)
	}
	if err := auth(); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("token of a deleted user: %v", err)
	}
}

// BenchmarkAuthenticateToken is what a token costs a request: the token's
// and its owner's records read from etcd.
func BenchmarkAuthenticateToken(b *testing.B) {
	st := store.NewEtcd(etcdtest.Start(b).Client())
	s := &Store{S: st}
	if _, err := s.AddUser(b.Context(), v1.UserRequest{Name: "olga", Password: "long enough"}); err != nil {
		b.Fatal(err)
	}
	nt, err := s.CreateToken(b.Context(), authn.Identity{Name: "olga", User: "olga"}, v1.TokenRequest{Name: "t"})
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+nt.Secret)
	for b.Loop() {
		if _, err := s.Authenticate(r); err != nil {
			b.Fatal(err)
		}
	}
}
