package join

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/pki"
)

// TestRequestPinsTheCA: the joiner sends its request only to a server
// whose chain holds the CA of the token's fingerprint and whose leaf that
// CA issued. A server of another CA, or one that shows the pool's CA
// certificate next to a leaf of its own (a man in the middle who copied the
// public CA certificate), gets nothing.
func TestRequestPinsTheCA(t *testing.T) {
	dir := t.TempDir()
	poolCA, _ := pki.LoadOrCreateCA(filepath.Join(dir, "pool"))
	evilCA, _ := pki.LoadOrCreateCA(filepath.Join(dir, "evil"))
	leaf := func(ca *pki.CA, chain ...*pki.CA) tls.Certificate {
		kp, err := ca.IssueHost("h1", []net.IP{net.ParseIP("127.0.0.1")}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c, err := kp.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range chain {
			c.Certificate = append(c.Certificate, x.Cert().Raw)
		}
		return c
	}
	tok, err := NewToken(poolCA.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	req, key := request(t, "h2", "10.0.0.2")
	for _, c := range []struct {
		name string
		cert tls.Certificate
		ok   bool
	}{
		{"another CA", leaf(evilCA, evilCA), false},
		{"the pool CA shown with a foreign leaf", leaf(evilCA, poolCA), false},
		{"the pool CA not in the chain", leaf(poolCA), false},
		{"the pool", leaf(poolCA, poolCA), true},
	} {
		var got atomic.Int32
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":{"code":"unauthenticated","field":"token","message":"test"}}`))
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{c.cert}}
		srv.StartTLS()
		_, err := Request(t.Context(), srv.Listener.Addr().String(), tok, req, key)
		srv.Close()
		if c.ok {
			var ae *v1.Error
			if got.Load() != 1 || !errors.As(err, &ae) || ae.Code != v1.CodeUnauthenticated {
				t.Errorf("%s: request not delivered (%d) or its refusal lost: %v", c.name, got.Load(), err)
			}
			continue
		}
		if got.Load() != 0 || !errors.Is(err, ErrFingerprint) {
			t.Errorf("%s: %d requests reached the server, err %v; want none and ErrFingerprint", c.name, got.Load(), err)
		}
	}
}
