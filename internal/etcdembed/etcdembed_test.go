package etcdembed_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"hangar/internal/etcdembed"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/pki"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Logf("%s", p)
	return len(p), nil
}

// testCA creates a CA in a temp dir; hostTLS issues a member certificate
// for 127.0.0.1 from it.
func testCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func hostTLS(t *testing.T, ca *pki.CA, name string) etcdembed.TLSFiles {
	t.Helper()
	dir := t.TempDir()
	f := etcdembed.TLSFiles{CertFile: filepath.Join(dir, "h.crt"), KeyFile: filepath.Join(dir, "h.key"), CAFile: ca.CertFile()}
	if _, err := ca.EnsureHost(f.CertFile, f.KeyFile, name, []net.IP{net.ParseIP("127.0.0.1")}, nil); err != nil {
		t.Fatal(err)
	}
	return f
}

func testConfig(t *testing.T, name string) etcdembed.Config {
	t.Helper()
	cfg := etcdtest.Config(t, name)
	cfg.Logger = testLogger(t)
	return cfg
}

func TestRestartKeepsData(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cfg := testConfig(t, "h1")

	start := time.Now()
	m, err := etcdembed.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Logf("first start ready in %v, client urls %v", time.Since(start), m.ClientURLs())
	if _, err := m.Client().Put(ctx, "/hangar/test", "v1"); err != nil {
		t.Fatalf("put: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}

	start = time.Now()
	m, err = etcdembed.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer m.Close()
	t.Logf("restart ready in %v, client urls %v", time.Since(start), m.ClientURLs())
	resp, err := m.Client().Get(ctx, "/hangar/test")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("get after restart = %v, want v1", resp.Kvs)
	}
	// The restarted member still accepts writes.
	if _, err := m.Client().Put(ctx, "/hangar/test", "v2"); err != nil {
		t.Fatalf("put after restart: %v", err)
	}
}

// TestClientSocket: local clients are served on a unix socket (mode 0600)
// in a 0700 directory and on no TCP port; a stale socket left by a killed
// process is replaced; a non-socket file or a directory of another user is
// refused.
func TestClientSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cfg := testConfig(t, "s1")
	dir := filepath.Dir(cfg.ClientSocket)
	// A stale socket from an earlier process, in a directory others could enter.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.ClientSocket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	m, err := etcdembed.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start over a stale socket: %v", err)
	}
	defer m.Close()
	if got := m.ClientURLs(); len(got) != 1 || got[0] != "unix://"+cfg.ClientSocket {
		t.Fatalf("client urls = %v, want only the unix socket", got)
	}
	for path, want := range map[string]fs.FileMode{dir: fs.ModeDir | 0o700, cfg.ClientSocket: fs.ModeSocket | 0o600} {
		st, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), want)
		}
	}
	if _, err := m.Client().Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put over the socket: %v", err)
	}

	notSock := testConfig(t, "s2")
	_ = os.MkdirAll(filepath.Dir(notSock.ClientSocket), 0o700)
	if err := os.WriteFile(notSock.ClientSocket, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if m, err := etcdembed.Start(ctx, notSock); err == nil || !strings.Contains(err.Error(), "not a socket") {
		if m != nil {
			m.Close()
		}
		t.Fatalf("start with a regular file at the socket path: err = %v", err)
	}

	if os.Geteuid() == 0 {
		foreign := testConfig(t, "s3")
		fdir := filepath.Dir(foreign.ClientSocket)
		_ = os.MkdirAll(fdir, 0o700)
		if err := os.Chown(fdir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if m, err := etcdembed.Start(ctx, foreign); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			if m != nil {
				m.Close()
			}
			t.Fatalf("start in a directory of another user: err = %v", err)
		}
	}

	long := testConfig(t, "s4")
	long.ClientSocket = "/tmp/" + strings.Repeat("x", 110) + "/c.sock"
	if _, err := etcdembed.Start(ctx, long); err == nil || !strings.Contains(err.Error(), "107 bytes") {
		t.Fatalf("start with a too long socket path: err = %v", err)
	}
}

// startOnFreePort starts a member with a host certificate of a new pool CA
// and an https URL on a free loopback port, which set puts in the config
// (as a peer or a client URL). The member is closed when the test ends.
func startOnFreePort(ctx context.Context, t *testing.T, name string, set func(cfg *etcdembed.Config, url string)) (*etcdembed.Member, string, *pki.CA) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ca := testCA(t)
	cfg := testConfig(t, name)
	cfg.TLS = hostTLS(t, ca, name)
	set(&cfg, "https://"+addr)
	m, err := etcdembed.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m, addr, ca
}

// TestPeerMutualTLS: the peer port answers only TLS clients that present a
// certificate of the pool CA. Plain HTTP, TLS without a certificate and a
// certificate of another CA are refused; a host certificate of the pool CA
// gets an answer (so the refusals are not a dead port).
func TestPeerMutualTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, addr, ca := startOnFreePort(ctx, t, "p1", func(cfg *etcdembed.Config, url string) { cfg.PeerURLs = []string{url} })

	get := func(scheme string, tc *tls.Config) (int, error) {
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		resp, err := hc.Get(scheme + "://" + addr + "/version")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	if code, err := get("http", nil); err == nil && code < 300 {
		t.Errorf("plain HTTP peer request answered %d", code)
	} else {
		t.Logf("plain HTTP: %d %v", code, err)
	}
	if code, err := get("https", &tls.Config{RootCAs: ca.Pool()}); err == nil {
		t.Errorf("TLS without a client certificate answered %d", code)
	} else {
		t.Logf("no client certificate: %v", err)
	}
	other := testCA(t)
	bad, _ := other.IssueHost("p2", []net.IP{net.ParseIP("127.0.0.1")}, nil)
	badCert, _ := bad.TLSCertificate()
	if code, err := get("https", &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{badCert}}); err == nil {
		t.Errorf("client certificate of another CA answered %d", code)
	} else {
		t.Logf("foreign client certificate: %v", err)
	}
	good, _ := ca.IssueHost("p2", []net.IP{net.ParseIP("127.0.0.1")}, nil)
	goodCert, _ := good.TLSCertificate()
	if code, err := get("https", &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{goodCert}}); err != nil || code != 200 {
		t.Fatalf("pool CA client certificate: %d %v", code, err)
	}
}

func TestStartErrors(t *testing.T) {
	ctx := t.Context()
	if _, err := etcdembed.Start(ctx, etcdembed.Config{}); err == nil {
		t.Fatal("start without data dir: want error")
	}
	cfg := testConfig(t, "e1")
	cfg.ClusterState = "bogus"
	if _, err := etcdembed.Start(ctx, cfg); err == nil {
		t.Fatal("start with bad cluster state: want error")
	}
	noTLS := testConfig(t, "e2")
	noTLS.TLS = etcdembed.TLSFiles{}
	if _, err := etcdembed.Start(ctx, noTLS); err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("start without TLS files: err = %v", err)
	}
	noSock := testConfig(t, "e3")
	noSock.ClientSocket = ""
	if _, err := etcdembed.Start(ctx, noSock); err == nil {
		t.Fatal("start without a client socket: want error")
	}
	for _, tc := range []struct{ client, peer string }{
		{client: "http://127.0.0.1:1"},
		{client: "unix:///tmp/x.sock"},
		{peer: "http://127.0.0.1:1"},
		{peer: "tcp://127.0.0.1:1"},
	} {
		c := testConfig(t, "e4")
		if tc.client != "" {
			c.ClientURLs = []string{tc.client}
		}
		if tc.peer != "" {
			c.PeerURLs = []string{tc.peer}
		}
		if m, err := etcdembed.Start(ctx, c); err == nil || !strings.Contains(err.Error(), `want "https"`) {
			if m != nil {
				m.Close()
			}
			t.Errorf("client %q peer %q: err = %v, want a refusal of non-TLS URLs", tc.client, tc.peer, err)
		}
	}
}

// TestStartNotReady starts one member of a two-member cluster whose other
// member never comes up: it cannot get quorum, so Start must give up when
// ctx ends and clean up.
func TestStartNotReady(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peer := "https://" + l.Addr().String()
	l.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	cfg := testConfig(t, "a")
	cfg.PeerURLs = []string{peer}
	cfg.InitialCluster = "a=" + peer + ",b=https://127.0.0.1:1"
	cfg.Logger = slog.New(slog.DiscardHandler)
	start := time.Now()
	m, err := etcdembed.Start(ctx, cfg)
	if err == nil {
		m.Close()
		t.Fatal("start without quorum: want error")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start without quorum: err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > time.Minute { // a safety net: it gives up, not forever
		t.Fatalf("start took %v to give up", d)
	}
	t.Logf("gave up after %v: %v", time.Since(start), err)
	if _, err := os.Stat(cfg.ClientSocket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("client socket left behind after a failed start: %v", err)
	}
}

// TestRemoteClientTLS: an https client URL serves only clients with a
// certificate of the pool CA; plain gRPC and TLS without a certificate
// cannot write.
func TestRemoteClientTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	m, addr, ca := startOnFreePort(ctx, t, "r1", func(cfg *etcdembed.Config, url string) { cfg.ClientURLs = []string{url} })
	if got := m.ClientURLs(); len(got) != 2 || got[1] != "https://"+addr {
		t.Fatalf("client urls = %v", got)
	}
	put := func(endpoint string, tc *tls.Config) error {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 3 * time.Second, TLS: tc, Logger: zap.NewNop()})
		if err != nil {
			return err
		}
		defer c.Close()
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err = c.Put(pctx, "remote", "v")
		return err
	}
	good, _ := ca.IssueHost("r2", nil, nil)
	goodCert, _ := good.TLSCertificate()
	if err := put("https://"+addr, &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{goodCert}}); err != nil {
		t.Fatalf("client with a pool CA certificate: %v", err)
	}
	if err := put("http://"+addr, nil); err == nil {
		t.Error("plain client wrote")
	}
	if err := put("https://"+addr, &tls.Config{RootCAs: ca.Pool()}); err == nil {
		t.Error("TLS client without a certificate wrote")
	}
}
