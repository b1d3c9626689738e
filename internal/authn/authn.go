// Package authn authenticates API requests that arrive over TCP: a client
// certificate of a trusted CA or a bearer token from a tokens file here;
// local users' API tokens and session cookies in internal/access. The unix
// socket is trusted (root-only local access): its requests are Local.
//
// Authorization (roles, grants) is not decided here; the Identity a
// request was authenticated as is put in its context for that layer.
package authn

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"unicode"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
)

// MinTokenLen is the shortest bearer token a tokens file may hold.
const MinTokenLen = 16

// Methods of Identity.
const (
	MethodLocal       = "local"       // the unix socket: root (local trust)
	MethodCertificate = "certificate" // a client certificate of the pool CA or --client-ca
	MethodToken       = "tokens-file" // a bearer token of --tokens-file
	MethodAPIToken    = "token"       // a user's API token (internal/access)
	MethodSession     = "session"     // a user's browser session cookie (internal/access)
)

// Identity is who a request was authenticated as.
type Identity struct {
	// Name is the client certificate's common name, the token's name or
	// the local user's name.
	Name string
	// Method is one of the Method constants.
	Method string
	// Full: a principal with every right — the unix socket, a pool or
	// --client-ca certificate, a --tokens-file token. Others act for a
	// local user with its grants.
	Full bool
	// User is the local user the request acts for (API tokens, sessions).
	User string
	// Grants are User's grants as read when the request authenticated.
	Grants []v1.Grant
	// Limit are an API token's own grants (nil: none, the owner's apply):
	// a token may do only what both its owner's grants and Limit allow.
	Limit []v1.Grant
	// TokenID is the API token's id, SessionID the session's.
	TokenID, SessionID string
	// CSRF is the SHA-256 of the session's CSRF token.
	CSRF [sha256.Size]byte
}

// Local is the identity of requests on the unix socket.
var Local = Identity{Name: "root", Method: MethodLocal, Full: true}

// Authenticator decides who sent a request. It returns an error wrapping
// errdefs.ErrUnauthenticated when the request carries no credential it
// accepts.
type Authenticator interface {
	Authenticate(r *http.Request) (Identity, error)
}

// ErrNoCredentials: the request presented neither a client certificate
// nor a bearer token.
var ErrNoCredentials = fmt.Errorf("authentication required: present a client certificate of a trusted CA, an Authorization: Bearer token (hangar login) or a session cookie: %w",
	errdefs.ErrUnauthenticated)

// AnyOf accepts a request that one of its authenticators accepts, tried
// in order.
type AnyOf []Authenticator

// Authenticate implements Authenticator. Without a credential it returns
// ErrNoCredentials; with a rejected one the first specific refusal.
func (a AnyOf) Authenticate(r *http.Request) (Identity, error) {
	var first error
	for _, x := range a {
		id, err := x.Authenticate(r)
		if err == nil {
			return id, nil
		}
		if first == nil && !errors.Is(err, ErrNoCredentials) {
			first = err
		}
	}
	if first == nil {
		first = ErrNoCredentials
	}
	return Identity{}, first
}

// ClientCert accepts a TLS client certificate that verifies against Roots
// for client authentication. The listener asks for it with
// tls.VerifyClientCertIfGiven and the same roots; ClientCert checks again,
// so a listener configured differently cannot let a certificate through.
type ClientCert struct {
	Roots *x509.CertPool
}

// Authenticate implements Authenticator.
func (c ClientCert) Authenticate(r *http.Request) (Identity, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return Identity{}, ErrNoCredentials
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, ic := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.Roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return Identity{}, fmt.Errorf("client certificate not accepted: %w", errdefs.ErrUnauthenticated)
	}
	return Identity{Name: leaf.Subject.CommonName, Method: MethodCertificate, Full: true}, nil
}

// Tokens accepts an Authorization: Bearer token listed in a tokens file.
type Tokens struct {
	names  []string
	hashes [][sha256.Size]byte
}

// LoadTokens reads a tokens file: one token per line, or "name:token";
// blank lines and lines starting with # are skipped. The file must not be
// readable by others nor writable by group or others, and must hold at
// least one token; each token is at least MinTokenLen bytes without
// whitespace.
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("tokens file %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o026 != 0 {
		return nil, fmt.Errorf("tokens file %s has mode %v: it must not be readable by others nor writable by group or others (chmod 600)", path, perm)
	}
	t, err := ParseTokens(f)
	if err != nil {
		return nil, fmt.Errorf("tokens file %s: %w", path, err)
	}
	return t, nil
}

// ParseTokens reads the tokens file format (see LoadTokens).
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, tok, ok := strings.Cut(line, ":")
		if !ok {
			name, tok = fmt.Sprintf("line-%d", n), line
		}
		name, tok = strings.TrimSpace(name), strings.TrimSpace(tok)
		switch {
		case name == "":
			return nil, fmt.Errorf("line %d: empty name before ':'", n)
		case len(tok) < MinTokenLen:
			return nil, fmt.Errorf("line %d: token shorter than %d bytes", n, MinTokenLen)
		case strings.IndexFunc(tok, unicode.IsSpace) >= 0:
			return nil, fmt.Errorf("line %d: token contains white space", n)
		}
		h := sha256.Sum256([]byte(tok))
		for i := range t.names {
			if t.names[i] == name {
				return nil, fmt.Errorf("line %d: name %q listed twice", n, name)
			}
			if t.hashes[i] == h {
				return nil, fmt.Errorf("line %d: token of %q listed twice", n, name)
			}
		}
		t.names = append(t.names, name)
		t.hashes = append(t.hashes, h)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(t.names) == 0 {
		return nil, errors.New("no tokens")
	}
	return t, nil
}

// Len is the number of tokens.
func (t *Tokens) Len() int { return len(t.names) }

// Authenticate implements Authenticator. The presented token is compared
// with every listed one in constant time (as SHA-256 digests, so lengths
// leak nothing either).
func (t *Tokens) Authenticate(r *http.Request) (Identity, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return Identity{}, ErrNoCredentials
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return Identity{}, fmt.Errorf("authorization header: want \"Bearer <token>\": %w", errdefs.ErrUnauthenticated)
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	match := -1
	for i := range t.hashes {
		if subtle.ConstantTimeCompare(sum[:], t.hashes[i][:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return Identity{}, fmt.Errorf("bearer token not accepted: %w", errdefs.ErrUnauthenticated)
	}
	return Identity{Name: t.names[match], Method: MethodToken, Full: true}, nil
}

type ctxKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity a request was authenticated as; ok is
// false for requests that were not authenticated.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// Require serves next only requests that a accepts, with the identity in
// their context; every other request gets 401 with a JSON error body
// {"error":{"code":"unauthenticated",...}}.
func Require(a Authenticator, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := a.Authenticate(r)
		if err != nil {
			WriteUnauthenticated(w, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithIdentity(r.Context(), id)))
	})
}

// WriteUnauthenticated answers 401 with WWW-Authenticate and a JSON error
// saying why err refused the request.
func WriteUnauthenticated(w http.ResponseWriter, err error) {
	if !errors.Is(err, errdefs.ErrUnauthenticated) {
		err = fmt.Errorf("%w: %w", errdefs.ErrUnauthenticated, err)
	}
	e := errdefs.ToAPI(err)
	e.Code = v1.CodeUnauthenticated
	// Trim the class suffix: the message says what to do.
	e.Message = strings.TrimSuffix(e.Message, ": "+errdefs.ErrUnauthenticated.Error())
	w.Header().Set("WWW-Authenticate", `Bearer realm="hangar"`)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	_ = json.NewEncoder(w).Encode(v1.ErrorResponse{Error: e})
}
