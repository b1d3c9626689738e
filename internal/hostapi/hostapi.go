// Package hostapi forwards host-local API requests (a VM's console and
// serial log, a host's own storage) to the host that has the VM or the
// file, over mutual TLS with the pool's host certificates: the API on any
// host answers for the whole pool (Incus forwards requests to the member
// that owns an instance the same way).
//
// A forwarded request carries the Header marker naming the forwarding
// host. The receiving host serves such a request locally (it is never
// forwarded twice), and only when it arrived over TLS with a host
// certificate of the pool (serverAuth and clientAuth from the pool CA)
// whose name is the host the marker names: a client cannot make a host
// serve something "as forwarded" by setting the header.
package hostapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// Header marks a forwarded request; its value is the forwarding host.
const Header = "Hangar-Forwarded-By"

// ErrNotForwardable: the host named has no TLS API address (it runs
// without --listen) or an address that is not host:port.
var ErrNotForwardable = errors.New("host has no usable API address")

// Resolver returns where host's TLS API listens (host:port).
type Resolver func(ctx context.Context, host string) (string, error)

// Forwarder sends requests to other hosts of the pool and checks the
// forwarded requests this host receives.
type Forwarder struct {
	self    string
	roots   *x509.CertPool
	cert    tls.Certificate
	resolve Resolver
	log     *slog.Logger

	mu         sync.Mutex
	transports map[string]*http.Transport // by host name
}

// New returns a forwarder for host self, which presents cert (its host
// certificate) and trusts roots (the pool CA) for the hosts it reaches.
func New(self string, roots *x509.CertPool, cert tls.Certificate, resolve Resolver, log *slog.Logger) *Forwarder {
	if log == nil {
		log = slog.Default()
	}
	return &Forwarder{self: self, roots: roots, cert: cert, resolve: resolve, log: log, transports: map[string]*http.Transport{}}
}

// Load returns the forwarder of host self from its host certificate in
// pkiDir (ca.crt, host.crt, host.key, as internal/pki writes them). A
// missing file is an error wrapping os.ErrNotExist: a host without a
// pool certificate forwards nothing.
func Load(pkiDir, self string, resolve Resolver, log *slog.Logger) (*Forwarder, error) {
	caPEM, err := os.ReadFile(filepath.Join(pkiDir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("host api: read pool ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("host api: %s holds no certificate", filepath.Join(pkiDir, "ca.crt"))
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "host.crt"), filepath.Join(pkiDir, "host.key"))
	if err != nil {
		return nil, fmt.Errorf("host api: load host certificate: %w", err)
	}
	return New(self, roots, cert, resolve, log), nil
}

// StoreResolver reads a host's address from its facts
// (/hangar/hostinfo/<host>, v1.Host.Address), checked like any record.
func StoreResolver(s store.Store) Resolver {
	return func(ctx context.Context, host string) (string, error) {
		var h v1.Host
		if _, err := store.GetJSON(ctx, s, inventory.HostInfoKey(host), &h); err != nil {
			return "", inventory.NotFound(err, "host", host)
		}
		if err := CheckAddress(h.Address); err != nil {
			return "", fmt.Errorf("host %q: %w", host, err)
		}
		return h.Address, nil
	}
}

// CheckAddress accepts host:port with a port in 1–65535 and a host that
// is an IP address or a DNS name.
func CheckAddress(addr string) error {
	if addr == "" {
		return fmt.Errorf("%w: none (it serves no --listen)", ErrNotForwardable)
	}
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %q: %v", ErrNotForwardable, addr, err)
	}
	if port, err := strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
		return fmt.Errorf("%w: %q: bad port", ErrNotForwardable, addr)
	}
	if net.ParseIP(h) == nil && !dnsName(h) {
		return fmt.Errorf("%w: %q: bad host", ErrNotForwardable, addr)
	}
	return nil
}

func dnsName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range splitDots(s) {
		if vm.ValidateName("host", label) != nil {
			return false
		}
	}
	return true
}

func splitDots(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// Self is the name of this host.
func (f *Forwarder) Self() string { return f.self }

// Verify checks a request that carries the Header marker: it must have
// arrived over TLS with a verified host certificate of the pool whose
// common name is the host the marker names. It returns that host.
func (f *Forwarder) Verify(r *http.Request) (string, error) {
	return verify(r, f.roots)
}

// VerifyWithout refuses every request marked as forwarded: for a host that
// has no pool certificate (and so no pool to be forwarded from).
func VerifyWithout(r *http.Request) error {
	return fmt.Errorf("%s: this host has no pool certificate and serves no forwarded requests: %w", Header, errdefs.ErrUnauthenticated)
}

func verify(r *http.Request, roots *x509.CertPool) (string, error) {
	from := r.Header.Get(Header)
	if len(r.Header.Values(Header)) != 1 || !dnsName(from) {
		return "", fmt.Errorf("%s: want one host name: %w", Header, errdefs.ErrUnauthenticated)
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "", fmt.Errorf("%s: a forwarded request must come over TLS with the host certificate of %q: %w", Header, from, errdefs.ErrUnauthenticated)
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	// A host certificate is both server and client; a user's client
	// certificate (pool credentials) is client only.
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return "", fmt.Errorf("%s: the client certificate %q is no host certificate of this pool: %w", Header, leaf.Subject.CommonName, errdefs.ErrUnauthenticated)
		}
	}
	if leaf.Subject.CommonName != from {
		return "", fmt.Errorf("%s: names %q, the certificate is %q's: %w", Header, from, leaf.Subject.CommonName, errdefs.ErrUnauthenticated)
	}
	return from, nil
}

// Forward proxies r to host's TLS API, marked as forwarded by this host,
// and writes its answer to w. Upgraded connections (the console stream)
// are relayed both ways. When the host cannot be reached the answer is a
// 503 error naming it.
func (f *Forwarder) Forward(w http.ResponseWriter, r *http.Request, host string) {
	addr, err := f.resolve(r.Context(), host)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, v1.CodeUnavailable, fmt.Sprintf("forward to host %s: %v", host, err))
		return
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "https", Host: addr})
			pr.Out.Host = addr
			pr.Out.Header.Del("Authorization") // this host authenticates with its certificate
			pr.Out.Header.Del(Header)
			pr.Out.Header.Set(Header, f.self)
		},
		Transport:     f.transport(host),
		FlushInterval: -1, // stream (serial logs, console)
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			f.log.Warn("forward request", "host", host, "addr", addr, "path", r.URL.Path, "err", err)
			writeError(w, http.StatusServiceUnavailable, v1.CodeUnavailable, fmt.Sprintf("forward to host %s (%s): %v", host, addr, err))
		},
	}
	rp.ServeHTTP(w, r)
}

// Do sends one request to host's API (path under it, body JSON or nil),
// marked as forwarded by this host, and returns the answer: the caller
// reads and closes its body.
func (f *Forwarder) Do(ctx context.Context, host, method, path string, body io.Reader) (*http.Response, error) {
	addr, err := f.resolve(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w: %w", host, err, errdefs.ErrUnavailable)
	}
	req, err := http.NewRequestWithContext(ctx, method, (&url.URL{Scheme: "https", Host: addr, Path: path}).String(), body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set(Header, f.self)
	resp, err := (&http.Client{Transport: f.transport(host)}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("host %s (%s): %w: %w", host, addr, err, errdefs.ErrUnavailable)
	}
	return resp, nil
}

// transport to host: this host's certificate, the pool CA as the only
// root, and the peer's certificate must be issued to host (its name is a
// SAN of its host certificate).
func (f *Forwarder) transport(host string) *http.Transport {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.transports[host]; t != nil {
		return t
	}
	t := &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{f.cert}, RootCAs: f.roots, ServerName: host,
			MinVersion: tls.VersionTLS12},
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConnsPerHost: 4,
	}
	f.transports[host] = t
	return t
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	b, _ := json.Marshal(v1.ErrorResponse{Error: &v1.Error{Code: code, Message: msg}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
