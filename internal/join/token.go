// Package join admits hosts into a pool: join tokens (issued by any host,
// recorded in etcd as a digest, single-use and short-lived), the join
// protocol (the joiner pins the pool CA by the token's fingerprint and
// sends a certificate request; the pool answers with its certificate, the
// CA, the secrets key and the host's etcd role) and the joiner's local
// state (<data-dir>/pool.json).
package join

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

// Token layout: "hgjoin1." + base64url(id | secret | CA fingerprint |
// check), where check is the first bytes of the SHA-256 of what precedes
// it: a token damaged in copying is refused before anything is dialled.
const (
	tokenPrefix = "hgjoin1."
	idLen       = 12
	secretLen   = 32
	fpLen       = sha256.Size
	checkLen    = 4
	rawLen      = idLen + secretLen + fpLen + checkLen

	// DefaultTTL is a token's lifetime when none is asked for.
	DefaultTTL = 10 * time.Minute
	// MaxTTL is the longest lifetime a token may have.
	MaxTTL = 24 * time.Hour
	// keepAfter: an expired or used token's record stays this long (so the
	// refusal can say "expired" or "used" rather than "unknown"), then its
	// lease removes it.
	keepAfter = time.Hour
)

// Refusals of a token. The API turns them into 401 unauthenticated
// naming the field "token".
var (
	ErrMalformed = errors.New("join token is malformed or damaged: copy the whole last line that `hangar pool join-token` printed")
	ErrUnknown   = errors.New("join token not accepted: this pool issued no such token (or its record is gone)")
	ErrWrong     = errors.New("join token not accepted: its secret is wrong")
	ErrExpired   = errors.New("join token has expired: make a new one with `hangar pool join-token`")
	ErrUsed      = errors.New("join token was already used: tokens are single-use, make a new one with `hangar pool join-token`")
)

// Token is a parsed join token.
type Token struct {
	ID            string // hex
	secret        []byte
	CAFingerprint [fpLen]byte
}

var tokenID = regexp.MustCompile(`^[0-9a-f]{24}$`)

// NewToken makes a token for the pool whose CA has fingerprint fp.
func NewToken(fp [fpLen]byte) (Token, error) {
	b := make([]byte, idLen+secretLen)
	if _, err := rand.Read(b); err != nil {
		return Token{}, fmt.Errorf("join token: %w", err)
	}
	return Token{ID: hex.EncodeToString(b[:idLen]), secret: b[idLen:], CAFingerprint: fp}, nil
}

// String is the token as the user copies it: one line, no spaces.
func (t Token) String() string {
	id, _ := hex.DecodeString(t.ID)
	raw := make([]byte, 0, rawLen)
	raw = append(raw, id...)
	raw = append(raw, t.secret...)
	raw = append(raw, t.CAFingerprint[:]...)
	sum := sha256.Sum256(raw)
	raw = append(raw, sum[:checkLen]...)
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
}

// Parse reads a token; a damaged one is ErrMalformed.
func Parse(s string) (Token, error) {
	s = strings.TrimSpace(s)
	body, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return Token{}, ErrMalformed
	}
	// Strict: one encoding per token (no slack in the last character's
	// unused bits).
	raw, err := base64.RawURLEncoding.Strict().DecodeString(body)
	if err != nil || len(raw) != rawLen {
		return Token{}, ErrMalformed
	}
	sum := sha256.Sum256(raw[:rawLen-checkLen])
	if subtle.ConstantTimeCompare(sum[:checkLen], raw[rawLen-checkLen:]) != 1 {
		return Token{}, ErrMalformed
	}
	t := Token{ID: hex.EncodeToString(raw[:idLen]), secret: bytes.Clone(raw[idLen : idLen+secretLen])}
	copy(t.CAFingerprint[:], raw[idLen+secretLen:])
	return t, nil
}

// FingerprintHex is the token's CA fingerprint in hex.
func (t Token) FingerprintHex() string { return hex.EncodeToString(t.CAFingerprint[:]) }

// digest is what etcd keeps of a token's secret.
func digest(id string, secret []byte) string {
	h := sha256.New()
	h.Write([]byte("hangar join token\x00" + id + "\x00"))
	h.Write(secret)
	return hex.EncodeToString(h.Sum(nil))
}

// Record is a token as etcd keeps it (/hangar/jointokens/<id>): the digest
// of its secret, never the secret.
type Record struct {
	ID      string    `json:"id"`
	Digest  string    `json:"digest"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	// IssuedOn is the host that issued it.
	IssuedOn string `json:"issuedOn,omitempty"`
	// UsedBy and UsedAt are set when a join consumed it.
	UsedBy string     `json:"usedBy,omitempty"`
	UsedAt *time.Time `json:"usedAt,omitempty"`
}

func tokenKey(id string) string { return inventory.JoinTokens + id }

// Issue makes a token valid for ttl and records its digest. host is the
// issuing host (for the record).
func Issue(ctx context.Context, st store.Store, fp [fpLen]byte, ttl time.Duration, host string, now time.Time) (Token, Record, error) {
	if ttl <= 0 || ttl > MaxTTL {
		return Token{}, Record{}, &v1.Error{Code: v1.CodeInvalidArgument, Field: "ttlSeconds",
			Message: fmt.Sprintf("ttlSeconds: must be between 1 and %d (24 h)", int(MaxTTL/time.Second))}
	}
	t, err := NewToken(fp)
	if err != nil {
		return Token{}, Record{}, err
	}
	rec := Record{ID: t.ID, Digest: digest(t.ID, t.secret), Created: now.UTC(), Expires: now.Add(ttl).UTC(), IssuedOn: host}
	lease, err := st.Grant(ctx, ttl+keepAfter)
	if err != nil {
		return Token{}, Record{}, fmt.Errorf("join token: lease: %w", err)
	}
	b, _ := json.Marshal(rec)
	if _, err := st.Txn(ctx, nil, store.Op{Key: tokenKey(t.ID), Value: b, ExpectRev: store.MustNotExist, Lease: lease}); err != nil {
		return Token{}, Record{}, fmt.Errorf("join token: record: %w", err)
	}
	return t, rec, nil
}

// claim is a checked, not yet consumed token.
type claim struct {
	rec Record
	kv  store.KV
}

// check reads the token's record and refuses a wrong, expired or used
// token. It writes nothing.
func check(ctx context.Context, st store.Store, t Token, now time.Time) (claim, error) {
	kv, err := st.Get(ctx, tokenKey(t.ID))
	if errors.Is(err, store.ErrNotFound) {
		return claim{}, ErrUnknown
	}
	if err != nil {
		return claim{}, fmt.Errorf("join token: read record: %w", err)
	}
	var rec Record
	if err := json.Unmarshal(kv.Value, &rec); err != nil || rec.ID != t.ID || len(rec.Digest) != 2*sha256.Size {
		return claim{}, fmt.Errorf("join token %s: invalid record in etcd: %w", t.ID, inventory.ErrInvalidRecord)
	}
	want := digest(t.ID, t.secret)
	if subtle.ConstantTimeCompare([]byte(want), []byte(rec.Digest)) != 1 {
		return claim{}, ErrWrong
	}
	if rec.UsedBy != "" {
		at := ""
		if rec.UsedAt != nil {
			at = " at " + rec.UsedAt.Format(time.RFC3339)
		}
		return claim{}, fmt.Errorf("%w (by host %q%s)", ErrUsed, rec.UsedBy, at)
	}
	if !now.Before(rec.Expires) {
		return claim{}, fmt.Errorf("%w (at %s)", ErrExpired, rec.Expires.Format(time.RFC3339))
	}
	return claim{rec: rec, kv: kv}, nil
}

// consumeOps marks the claimed token used by host, conditioned on the
// record being unchanged since check read it: of two joins racing with one
// token, one transaction fails.
func (c claim) consumeOp(host string, now time.Time) store.Op {
	rec := c.rec
	rec.UsedBy = host
	at := now.UTC()
	rec.UsedAt = &at
	b, _ := json.Marshal(rec)
	return store.Op{Key: tokenKey(rec.ID), Value: b, ExpectRev: c.kv.Revision, Lease: c.kv.Lease}
}

// restoreOp puts the record back as it was before consumption (after a
// join failed past the consumption), conditioned on revision rev that the
// consuming transaction wrote.
func (c claim) restoreOp(rev int64) store.Op {
	return store.Op{Key: c.kv.Key, Value: c.kv.Value, ExpectRev: rev, Lease: c.kv.Lease}
}

// TokenError says whether err is a refusal of the token itself.
func TokenError(err error) bool {
	for _, e := range []error{ErrMalformed, ErrUnknown, ErrWrong, ErrExpired, ErrUsed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
