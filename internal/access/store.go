package access

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/authn"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// Keys in etcd.
const (
	UsersPrefix    = "/hangar/users/"
	TokensPrefix   = "/hangar/apitokens/"
	SessionsPrefix = "/hangar/sessions/"
	TicketsPrefix  = "/hangar/consoletickets/"
)

// Lifetimes.
const (
	DefaultTokenTTL = 30 * 24 * time.Hour
	MaxTokenTTL     = 366 * 24 * time.Hour
	SessionTTL      = 12 * time.Hour
	TicketTTL       = 10 * time.Second
	maxTokensOfUser = 100
)

// Secret prefixes: what a secret is can be told from its start.
const (
	tokenPrefix   = "hgt_"
	sessionPrefix = "hgs_"
	ticketPrefix  = "hgc_"
)

// SessionCookie is the session cookie's name: __Host- makes browsers
// insist on Secure, Path=/ and no Domain.
const SessionCookie = "__Host-hangar_session"

// CSRFHeader carries a session's CSRF token on mutating requests.
const CSRFHeader = "X-CSRF-Token"

// ErrBadLogin: no such user or a wrong password (one message for both).
var ErrBadLogin = fmt.Errorf("user or password not accepted: %w", errdefs.ErrUnauthenticated)

// Store keeps users, tokens, sessions and console tickets in etcd.
type Store struct {
	S store.Store
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now().UTC()
	}
	return time.Now().UTC()
}

// userRecord is /hangar/users/<name>.
type userRecord struct {
	Name         string     `json:"name"`
	PasswordHash string     `json:"passwordHash"`
	Grants       []v1.Grant `json:"grants"`
	Created      time.Time  `json:"created"`
	Updated      time.Time  `json:"updated"`
}

func (u userRecord) api() v1.User {
	g := u.Grants
	if g == nil {
		g = []v1.Grant{}
	}
	return v1.User{Name: u.Name, Grants: g, Created: u.Created, Updated: u.Updated}
}

// checkUser: a record read back is input like a request.
func checkUser(key string, u userRecord) error {
	if key != UsersPrefix+u.Name || ValidateUserName("name", u.Name) != nil {
		return fmt.Errorf("user record %s names %q: %w", key, u.Name, inventory.ErrInvalidRecord)
	}
	if _, err := parseHash(u.PasswordHash); err != nil {
		return fmt.Errorf("user record %s: password hash: %v: %w", key, err, inventory.ErrInvalidRecord)
	}
	if err := ValidateGrants("grants", u.Grants); err != nil {
		return fmt.Errorf("user record %s: %v: %w", key, err, inventory.ErrInvalidRecord)
	}
	return nil
}

// ValidateUserName: user names are like VM names (lower-case letters,
// digits, -), so that they sit in keys and paths as they are.
func ValidateUserName(field, name string) error {
	return vm.ValidateName(field, name)
}

func notFound(kind, name string) error {
	return fmt.Errorf("%s %q not found: %w", kind, name, errdefs.ErrNotFound)
}

// decodeStrict decodes a record, refusing unknown fields.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// record reads the record prefix+name of a kind ("user", "token") and
// checks it (state is input).
func record[T any](ctx context.Context, st store.Store, prefix, name, kind string, check func(string, T) error) (T, int64, error) {
	var v T
	kv, err := st.Get(ctx, prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return v, 0, notFound(kind, name)
	}
	if err != nil {
		return v, 0, fmt.Errorf("load %s %q: %w", kind, name, err)
	}
	v, err = decodeRecord(kv, kind, check)
	return v, kv.Revision, err
}

// decodeRecord decodes a record strictly and checks it.
func decodeRecord[T any](kv store.KV, kind string, check func(string, T) error) (T, error) {
	var v T
	if err := decodeStrict(kv.Value, &v); err != nil {
		return v, fmt.Errorf("%s record %s: %v: %w", kind, kv.Key, err, inventory.ErrInvalidRecord)
	}
	return v, check(kv.Key, v)
}

func (s *Store) user(ctx context.Context, name string) (userRecord, int64, error) {
	if err := ValidateUserName("user", name); err != nil {
		return userRecord{}, 0, err
	}
	return record(ctx, s.S, UsersPrefix, name, "user", checkUser)
}

// AddUser creates a user.
func (s *Store) AddUser(ctx context.Context, req v1.UserRequest) (v1.User, error) {
	if err := ValidateUserName("name", req.Name); err != nil {
		return v1.User{}, err
	}
	if err := CheckPassword("password", req.Password); err != nil {
		return v1.User{}, err
	}
	if err := ValidateGrants("grants", req.Grants); err != nil {
		return v1.User{}, err
	}
	h, err := HashPassword(req.Password)
	if err != nil {
		return v1.User{}, err
	}
	now := s.now()
	u := userRecord{Name: req.Name, PasswordHash: h, Grants: req.Grants, Created: now, Updated: now}
	if u.Grants == nil {
		u.Grants = []v1.Grant{}
	}
	if _, err := s.S.Put(ctx, UsersPrefix+u.Name, inventory.Marshal(u), store.MustNotExist); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return v1.User{}, &v1.Error{Code: v1.CodeConflict, Field: "name", Message: fmt.Sprintf("name: user %q already exists", u.Name)}
		}
		return v1.User{}, fmt.Errorf("create user %q: %w", u.Name, err)
	}
	return u.api(), nil
}

// User returns one user.
func (s *Store) User(ctx context.Context, name string) (v1.User, error) {
	u, _, err := s.user(ctx, name)
	return u.api(), err
}

// Users lists the users, sorted by name.
func (s *Store) Users(ctx context.Context) ([]v1.User, error) {
	kvs, _, err := s.S.List(ctx, UsersPrefix)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	out := []v1.User{}
	for _, kv := range kvs {
		u, err := decodeRecord(kv, "user", checkUser)
		if err != nil {
			return nil, err
		}
		out = append(out, u.api())
	}
	return out, nil
}

// updateUser applies f to the user's record in a write conditioned on the
// revision read (read again on a conflict).
func (s *Store) updateUser(ctx context.Context, name string, f func(*userRecord) error) (userRecord, error) {
	for attempt := 0; ; attempt++ {
		u, rev, err := s.user(ctx, name)
		if err != nil {
			return u, err
		}
		if err := f(&u); err != nil {
			return u, err
		}
		u.Updated = s.now()
		_, err = s.S.Put(ctx, UsersPrefix+name, inventory.Marshal(u), rev)
		if errors.Is(err, store.ErrConflict) && attempt < 5 {
			continue
		}
		if err != nil {
			return u, fmt.Errorf("update user %q: %w", name, err)
		}
		return u, nil
	}
}

// SetPassword sets a user's password and ends its sessions.
func (s *Store) SetPassword(ctx context.Context, name, pw string) error {
	if err := CheckPassword("password", pw); err != nil {
		return err
	}
	h, err := HashPassword(pw)
	if err != nil {
		return err
	}
	if _, err := s.updateUser(ctx, name, func(u *userRecord) error { u.PasswordHash = h; return nil }); err != nil {
		return err
	}
	return s.deleteOwned(ctx, SessionsPrefix, name)
}

// AddGrant gives a user a role on a scope (already given: unchanged).
func (s *Store) AddGrant(ctx context.Context, name string, g v1.Grant) (v1.User, error) {
	if err := ValidateGrant("", g); err != nil {
		return v1.User{}, err
	}
	u, err := s.updateUser(ctx, name, func(u *userRecord) error {
		if !slices.Contains(u.Grants, g) {
			u.Grants = append(u.Grants, g)
		}
		return ValidateGrants("grants", u.Grants)
	})
	return u.api(), err
}

// RemoveGrant takes a grant away; a grant the user does not have is 404.
func (s *Store) RemoveGrant(ctx context.Context, name string, g v1.Grant) (v1.User, error) {
	if err := ValidateGrant("", g); err != nil {
		return v1.User{}, err
	}
	u, err := s.updateUser(ctx, name, func(u *userRecord) error {
		i := slices.Index(u.Grants, g)
		if i < 0 {
			return fmt.Errorf("user %q has no grant %s on %s: %w", name, g.Role, g.Scope, errdefs.ErrNotFound)
		}
		u.Grants = slices.Delete(u.Grants, i, i+1)
		return nil
	})
	return u.api(), err
}

// DeleteUser removes a user with its tokens and sessions.
func (s *Store) DeleteUser(ctx context.Context, name string) error {
	_, rev, err := s.user(ctx, name)
	if err != nil {
		return err
	}
	if err := s.S.Delete(ctx, UsersPrefix+name, rev); err != nil {
		return fmt.Errorf("delete user %q: %w", name, err)
	}
	// What is left behind would be refused anyway (the owner is read at
	// every use); remove it so that lists do not show it.
	if err := s.deleteOwned(ctx, TokensPrefix, name); err != nil {
		return err
	}
	return s.deleteOwned(ctx, SessionsPrefix, name)
}

// deleteOwned deletes the records under prefix whose "user" is name.
func (s *Store) deleteOwned(ctx context.Context, prefix, name string) error {
	kvs, _, err := s.S.List(ctx, prefix)
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	for _, kv := range kvs {
		var o struct {
			User string `json:"user"`
		}
		if json.Unmarshal(kv.Value, &o) == nil && o.User == name {
			if err := s.S.Delete(ctx, kv.Key, kv.Revision); err != nil && !errors.Is(err, store.ErrConflict) {
				return fmt.Errorf("delete %s: %w", kv.Key, err)
			}
		}
	}
	return nil
}

// hashing bounds the argon2id hashes computed at once (19 MiB and ~20 ms
// of a core each): a flood of logins waits instead of taking the host's
// memory.
var hashing = make(chan struct{}, 2)

// CheckLogin verifies a user's password and returns the user. An unknown
// user costs the same hash as a wrong password and gets the same error.
func (s *Store) CheckLogin(ctx context.Context, name, pw string) (v1.User, error) {
	select {
	case hashing <- struct{}{}:
		defer func() { <-hashing }()
	case <-ctx.Done():
		return v1.User{}, fmt.Errorf("check the password of %q: %w", name, ctx.Err())
	}
	u, _, err := s.user(ctx, name)
	if errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, vm.ErrInvalid) {
		_, _ = VerifyPassword(dummyHash(), pw)
		return v1.User{}, ErrBadLogin
	}
	if err != nil {
		return v1.User{}, err
	}
	ok, err := VerifyPassword(u.PasswordHash, pw)
	if err != nil {
		return v1.User{}, err
	}
	if !ok {
		return v1.User{}, ErrBadLogin
	}
	return u.api(), nil
}

// secret is a random credential: prefix + id + "_" + secret; the store
// keeps only SHA-256 of the secret part, under the id.
type secret struct {
	id, full string
	digest   [sha256.Size]byte
}

func newSecret(prefix string) (secret, error) {
	var id [8]byte
	var key [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		return secret{}, err
	}
	if _, err := rand.Read(key[:]); err != nil {
		return secret{}, err
	}
	k := base64.RawURLEncoding.EncodeToString(key[:])
	s := secret{id: hex.EncodeToString(id[:]), digest: sha256.Sum256([]byte(k))}
	s.full = prefix + s.id + "_" + k
	return s, nil
}

// parseSecret splits a presented credential; ok is false for one not of
// this kind or malformed.
func parseSecret(prefix, s string) (id string, digest [sha256.Size]byte, ok bool) {
	rest, found := strings.CutPrefix(s, prefix)
	if !found {
		return "", digest, false
	}
	id, k, found := strings.Cut(rest, "_")
	if !found || len(id) != 16 || len(k) != 43 {
		return "", digest, false
	}
	if _, err := hex.DecodeString(id); err != nil || strings.ToLower(id) != id {
		return "", digest, false
	}
	if _, err := base64.RawURLEncoding.DecodeString(k); err != nil {
		return "", digest, false
	}
	return id, sha256.Sum256([]byte(k)), true
}

func digestHex(d [sha256.Size]byte) string { return hex.EncodeToString(d[:]) }

// sameDigest compares a stored hex digest with a computed one in constant
// time.
func sameDigest(stored string, d [sha256.Size]byte) bool {
	b, err := hex.DecodeString(stored)
	return err == nil && len(b) == sha256.Size && subtle.ConstantTimeCompare(b, d[:]) == 1
}

func validID(id string) bool {
	if len(id) != 16 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

// tokenRecord is /hangar/apitokens/<id>.
type tokenRecord struct {
	ID      string     `json:"id"`
	Name    string     `json:"name"`
	User    string     `json:"user"`
	Digest  string     `json:"digest"`
	Grants  []v1.Grant `json:"grants,omitempty"`
	Created time.Time  `json:"created"`
	Expires time.Time  `json:"expires"`
}

func (t tokenRecord) api() v1.Token {
	return v1.Token{ID: t.ID, Name: t.Name, User: t.User, Grants: t.Grants, Created: t.Created, Expires: t.Expires}
}

func checkToken(key string, t tokenRecord) error {
	switch {
	case key != TokensPrefix+t.ID || !validID(t.ID):
		return fmt.Errorf("token record %s names id %q: %w", key, t.ID, inventory.ErrInvalidRecord)
	case ValidateUserName("user", t.User) != nil:
		return fmt.Errorf("token record %s: user %q: %w", key, t.User, inventory.ErrInvalidRecord)
	case validateTokenName(t.Name) != nil:
		return fmt.Errorf("token record %s: name %q: %w", key, t.Name, inventory.ErrInvalidRecord)
	case len(t.Digest) != 2*sha256.Size:
		return fmt.Errorf("token record %s: digest: %w", key, inventory.ErrInvalidRecord)
	case t.Expires.IsZero() || t.Expires.Before(t.Created):
		return fmt.Errorf("token record %s: expiry: %w", key, inventory.ErrInvalidRecord)
	}
	if err := ValidateGrants("grants", t.Grants); err != nil {
		return fmt.Errorf("token record %s: %v: %w", key, err, inventory.ErrInvalidRecord)
	}
	return nil
}

func validateTokenName(n string) error {
	if n == "" || len(n) > 63 || strings.IndexFunc(n, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) >= 0 {
		return fieldErr("name", "%q: want 1-63 letters, digits, '-', '_' or '.'", n)
	}
	return nil
}

// CreateToken makes an API token for the caller's user. Grants asked
// beyond the owner's are refused (403); at every use the token may still
// do only what its owner may do then.
func (s *Store) CreateToken(ctx context.Context, caller authn.Identity, req v1.TokenRequest) (v1.NewToken, error) {
	if caller.User == "" {
		return v1.NewToken{}, errdefs.Precondition("API tokens belong to local users: %s (%s) is none (hangar login as a user first)", caller.Name, caller.Method)
	}
	if err := validateTokenName(req.Name); err != nil {
		return v1.NewToken{}, err
	}
	ttl := time.Duration(req.TTLSeconds) * time.Second
	switch {
	case req.TTLSeconds == 0:
		ttl = DefaultTokenTTL
	case req.TTLSeconds < 0 || ttl > MaxTokenTTL:
		return v1.NewToken{}, fieldErr("ttlSeconds", "between 1 and %d (0: %d days)", int64(MaxTokenTTL/time.Second), int(DefaultTokenTTL/(24*time.Hour)))
	}
	if err := ValidateGrants("grants", req.Grants); err != nil {
		return v1.NewToken{}, err
	}
	// The owner's grants as they are now (not as the caller's token saw
	// them), further limited by the caller's own token.
	u, _, err := s.user(ctx, caller.User)
	if err != nil {
		return v1.NewToken{}, err
	}
	limit := req.Grants
	if g := Exceeds(u.Grants, limit); g != nil {
		return v1.NewToken{}, &v1.Error{Code: v1.CodePermissionDenied, Field: "grants",
			Message: fmt.Sprintf("grants: %s on %s is more than user %q has: a token never has more rights than its owner", g.Role, g.Scope, u.Name)}
	}
	if caller.Limit != nil {
		if limit == nil {
			limit = caller.Limit
		} else if g := Exceeds(caller.Limit, limit); g != nil {
			return v1.NewToken{}, &v1.Error{Code: v1.CodePermissionDenied, Field: "grants",
				Message: fmt.Sprintf("grants: %s on %s is more than this token has", g.Role, g.Scope)}
		}
	}
	mine, err := s.Tokens(ctx, u.Name)
	if err != nil {
		return v1.NewToken{}, err
	}
	if len(mine) >= maxTokensOfUser {
		return v1.NewToken{}, errdefs.Precondition("user %q has %d tokens: revoke some first", u.Name, len(mine))
	}
	for _, t := range mine {
		if t.Name == req.Name {
			return v1.NewToken{}, &v1.Error{Code: v1.CodeConflict, Field: "name", Message: fmt.Sprintf("name: user %q already has a token %q (revoke it first)", u.Name, req.Name)}
		}
	}
	sec, err := newSecret(tokenPrefix)
	if err != nil {
		return v1.NewToken{}, fmt.Errorf("token secret: %w", err)
	}
	now := s.now()
	rec := tokenRecord{ID: sec.id, Name: req.Name, User: u.Name, Digest: digestHex(sec.digest), Grants: limit, Created: now, Expires: now.Add(ttl)}
	if _, err := s.S.Put(ctx, TokensPrefix+rec.ID, inventory.Marshal(rec), store.MustNotExist); err != nil {
		return v1.NewToken{}, fmt.Errorf("store token %q: %w", req.Name, err)
	}
	return v1.NewToken{Token: rec.api(), Secret: sec.full}, nil
}

func (s *Store) token(ctx context.Context, id string) (tokenRecord, int64, error) {
	return record(ctx, s.S, TokensPrefix, id, "token", checkToken)
}

// Tokens lists the tokens of user ("": everyone's), oldest first.
func (s *Store) Tokens(ctx context.Context, user string) ([]v1.Token, error) {
	kvs, _, err := s.S.List(ctx, TokensPrefix)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	out := []v1.Token{}
	for _, kv := range kvs {
		t, err := decodeRecord(kv, "token", checkToken)
		if err != nil {
			return nil, err
		}
		if user == "" || t.User == user {
			out = append(out, t.api())
		}
	}
	slices.SortFunc(out, func(a, b v1.Token) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// RevokeToken deletes a token: the caller's own, or anyone's for a caller
// with admin on the pool.
func (s *Store) RevokeToken(ctx context.Context, caller authn.Identity, id string) error {
	if !validID(id) {
		return fieldErr("id", "%q: want the token's 16 hex digit id (hangar token list)", id)
	}
	t, rev, err := s.token(ctx, id)
	if err != nil {
		return err
	}
	if t.User != caller.User && !Can(caller, PermAdmin, nil) {
		return notFound("token", id) // another's token: as if there were none
	}
	if err := s.S.Delete(ctx, TokensPrefix+id, rev); err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	return nil
}

// Authenticate accepts "Authorization: Bearer hgt_…" of a token that
// exists, has not expired and whose owner exists; the identity carries
// the owner's grants as they are now and the token's own.
func (s *Store) Authenticate(r *http.Request) (authn.Identity, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return s.authenticateSession(r)
	}
	scheme, tok, _ := strings.Cut(h, " ")
	tok = strings.TrimSpace(tok)
	if !strings.EqualFold(scheme, "Bearer") || !strings.HasPrefix(tok, tokenPrefix) {
		return authn.Identity{}, authn.ErrNoCredentials // not ours: the tokens file's, maybe
	}
	id, d, ok := parseSecret(tokenPrefix, tok)
	if !ok {
		return authn.Identity{}, fmt.Errorf("bearer token: malformed: %w", errdefs.ErrUnauthenticated)
	}
	t, _, err := s.token(r.Context(), id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return authn.Identity{}, fmt.Errorf("bearer token not accepted (revoked or unknown): %w", errdefs.ErrUnauthenticated)
	}
	if err != nil {
		return authn.Identity{}, err
	}
	if !sameDigest(t.Digest, d) {
		return authn.Identity{}, fmt.Errorf("bearer token not accepted: %w", errdefs.ErrUnauthenticated)
	}
	if !s.now().Before(t.Expires) {
		return authn.Identity{}, fmt.Errorf("bearer token %q expired at %s: %w", t.Name, t.Expires.Format(time.RFC3339), errdefs.ErrUnauthenticated)
	}
	u, _, err := s.user(r.Context(), t.User)
	if errors.Is(err, errdefs.ErrNotFound) {
		return authn.Identity{}, fmt.Errorf("bearer token %q: its user %q no longer exists: %w", t.Name, t.User, errdefs.ErrUnauthenticated)
	}
	if err != nil {
		return authn.Identity{}, err
	}
	limit := t.Grants
	if limit != nil && len(limit) == 0 {
		limit = nil
	}
	return authn.Identity{Name: u.Name, Method: authn.MethodAPIToken, User: u.Name, Grants: u.Grants, Limit: limit, TokenID: t.ID}, nil
}

// sessionRecord is /hangar/sessions/<id>, on a lease of its lifetime.
type sessionRecord struct {
	ID      string    `json:"id"`
	User    string    `json:"user"`
	Digest  string    `json:"digest"`
	CSRF    string    `json:"csrf"` // SHA-256 of the CSRF token
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

func checkSession(key string, s sessionRecord) error {
	if key != SessionsPrefix+s.ID || !validID(s.ID) || ValidateUserName("user", s.User) != nil ||
		len(s.Digest) != 2*sha256.Size || len(s.CSRF) != 2*sha256.Size || s.Expires.Before(s.Created) {
		return fmt.Errorf("session record %s: %w", key, inventory.ErrInvalidRecord)
	}
	return nil
}

// NewSession opens a session for user (its password checked): it returns
// the cookie's value and the session with its CSRF token.
func (s *Store) NewSession(ctx context.Context, user string) (string, v1.Session, error) {
	sec, err := newSecret(sessionPrefix)
	if err != nil {
		return "", v1.Session{}, err
	}
	csrf, err := newSecret("")
	if err != nil {
		return "", v1.Session{}, err
	}
	now := s.now()
	rec := sessionRecord{ID: sec.id, User: user, Digest: digestHex(sec.digest), CSRF: digestHex(sha256.Sum256([]byte(csrf.full))), Created: now, Expires: now.Add(SessionTTL)}
	lease, err := s.S.Grant(ctx, SessionTTL+time.Minute)
	if err != nil {
		return "", v1.Session{}, fmt.Errorf("session lease: %w", err)
	}
	if _, err := s.S.PutWithLease(ctx, SessionsPrefix+rec.ID, inventory.Marshal(rec), lease); err != nil {
		return "", v1.Session{}, fmt.Errorf("store session: %w", err)
	}
	return sec.full, v1.Session{User: user, CSRFToken: csrf.full, Expires: rec.Expires}, nil
}

// EndSession deletes a session.
func (s *Store) EndSession(ctx context.Context, id string) error {
	if !validID(id) {
		return nil
	}
	return s.S.Delete(ctx, SessionsPrefix+id, store.AnyRevision)
}

// authenticateSession accepts the session cookie.
func (s *Store) authenticateSession(r *http.Request) (authn.Identity, error) {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return authn.Identity{}, authn.ErrNoCredentials
	}
	id, d, ok := parseSecret(sessionPrefix, c.Value)
	if !ok {
		return authn.Identity{}, fmt.Errorf("session cookie: malformed: %w", errdefs.ErrUnauthenticated)
	}
	rec, _, err := record(r.Context(), s.S, SessionsPrefix, id, "session", checkSession)
	if errors.Is(err, errdefs.ErrNotFound) {
		return authn.Identity{}, fmt.Errorf("session ended or unknown: log in again: %w", errdefs.ErrUnauthenticated)
	}
	if err != nil {
		return authn.Identity{}, err
	}
	if !sameDigest(rec.Digest, d) {
		return authn.Identity{}, fmt.Errorf("session cookie not accepted: %w", errdefs.ErrUnauthenticated)
	}
	if !s.now().Before(rec.Expires) {
		return authn.Identity{}, fmt.Errorf("session expired: log in again: %w", errdefs.ErrUnauthenticated)
	}
	u, _, err := s.user(r.Context(), rec.User)
	if errors.Is(err, errdefs.ErrNotFound) {
		return authn.Identity{}, fmt.Errorf("session of user %q, who no longer exists: %w", rec.User, errdefs.ErrUnauthenticated)
	}
	if err != nil {
		return authn.Identity{}, err
	}
	id2 := authn.Identity{Name: u.Name, Method: authn.MethodSession, User: u.Name, Grants: u.Grants, SessionID: rec.ID}
	b, _ := hex.DecodeString(rec.CSRF)
	copy(id2.CSRF[:], b)
	return id2, nil
}

// CheckCSRF: a mutating request authenticated by a session cookie must
// send the session's CSRF token in X-CSRF-Token.
func CheckCSRF(id authn.Identity, r *http.Request) error {
	if id.Method != authn.MethodSession {
		return nil
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	got := r.Header.Get(CSRFHeader)
	d := sha256.Sum256([]byte(got))
	if got == "" || subtle.ConstantTimeCompare(d[:], id.CSRF[:]) != 1 {
		return &v1.Error{Code: v1.CodePermissionDenied, Field: CSRFHeader,
			Message: CSRFHeader + ": a request with the session cookie that changes something must send the session's CSRF token (from POST /api/v1/login)"}
	}
	return nil
}

// ticketRecord is /hangar/consoletickets/<id>, on a short lease.
type ticketRecord struct {
	ID        string    `json:"id"`
	Digest    string    `json:"digest"`
	Principal string    `json:"principal"`
	VM        string    `json:"vm"`
	Expires   time.Time `json:"expires"`
}

// principal names an identity for binding a ticket to it.
func principal(id authn.Identity) string { return id.Method + ":" + id.Name }

// NewTicket issues a single-use console ticket for id and VM name, valid
// for TicketTTL.
func (s *Store) NewTicket(ctx context.Context, id authn.Identity, name string) (v1.ConsoleTicket, error) {
	sec, err := newSecret(ticketPrefix)
	if err != nil {
		return v1.ConsoleTicket{}, err
	}
	rec := ticketRecord{ID: sec.id, Digest: digestHex(sec.digest), Principal: principal(id), VM: name, Expires: s.now().Add(TicketTTL)}
	lease, err := s.S.Grant(ctx, time.Minute)
	if err != nil {
		return v1.ConsoleTicket{}, fmt.Errorf("ticket lease: %w", err)
	}
	if _, err := s.S.PutWithLease(ctx, TicketsPrefix+rec.ID, inventory.Marshal(rec), lease); err != nil {
		return v1.ConsoleTicket{}, fmt.Errorf("store console ticket: %w", err)
	}
	return v1.ConsoleTicket{Ticket: sec.full, VM: name, Expires: rec.Expires}, nil
}

// UseTicket accepts a ticket once: issued to id for VM name, not expired,
// and deleted in a write conditioned on the revision read (of two uses at
// once, one fails).
func (s *Store) UseTicket(ctx context.Context, id authn.Identity, name, ticket string) error {
	refuse := func(why string) error {
		return &v1.Error{Code: v1.CodeUnauthenticated, Field: "ticket", Message: "ticket: " + why}
	}
	if ticket == "" {
		return refuse("the console needs a ticket (POST /api/v1/vms/" + name + "/console/ticket), ?ticket=…")
	}
	tid, d, ok := parseSecret(ticketPrefix, ticket)
	if !ok {
		return refuse("malformed")
	}
	kv, err := s.S.Get(ctx, TicketsPrefix+tid)
	if errors.Is(err, store.ErrNotFound) {
		return refuse("unknown or already used (a ticket opens the console once)")
	}
	if err != nil {
		return fmt.Errorf("load console ticket: %w", err)
	}
	var rec ticketRecord
	if err := decodeStrict(kv.Value, &rec); err != nil || kv.Key != TicketsPrefix+rec.ID {
		return fmt.Errorf("console ticket record %s: %w", kv.Key, inventory.ErrInvalidRecord)
	}
	switch {
	case !sameDigest(rec.Digest, d):
		return refuse("not accepted")
	case rec.Principal != principal(id):
		return refuse("issued to someone else")
	case rec.VM != name:
		return refuse(fmt.Sprintf("issued for vm %q, not %q", rec.VM, name))
	}
	// Used once, even when it has expired: it is gone either way.
	if err := s.S.Delete(ctx, kv.Key, kv.Revision); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return refuse("already used")
		}
		return fmt.Errorf("use console ticket: %w", err)
	}
	if !s.now().Before(rec.Expires) {
		return refuse("expired at " + rec.Expires.Format(time.RFC3339Nano))
	}
	return nil
}
