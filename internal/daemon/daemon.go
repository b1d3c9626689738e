// Package daemon wires one `hangar serve` process: embedded etcd member,
// state store, host agent and API server.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"hangar/internal/agent"
	"hangar/internal/authn"
	"hangar/internal/etcdembed"
	"hangar/internal/inventory"
	"hangar/internal/manager"
	"hangar/internal/pki"
	"hangar/internal/qemu"
	"hangar/internal/secrets"
	"hangar/internal/storage"
	"hangar/internal/store"
)

// Config of a hangar serve process.
type Config struct {
	DataDir string // default /var/lib/hangar
	RunDir  string // default /run/hangar
	Socket  string // default RunDir/hangar.sock
	Host    string // default the machine's hostname
	// Listen is an optional TCP address; it needs TLSCert and TLSKey, and
	// ClientCA or TokensFile (or both) to authenticate its clients.
	Listen          string
	TLSCert, TLSKey string
	// ClientCA is a PEM file of CAs whose client certificates the TCP
	// listener accepts.
	ClientCA string
	// TokensFile lists bearer tokens the TCP listener accepts (see
	// authn.LoadTokens).
	TokensFile string
	// EtcdClientURL is an optional https URL on which the embedded etcd
	// member also serves clients of other hosts; they must present a
	// certificate of the pool CA. Local clients always use the unix socket
	// RunDir/etcd/client.sock (directory 0700).
	EtcdClientURL string
	// EtcdPeerURL is the member's https peer URL; default a free 127.0.0.1
	// port. Peers authenticate each other with pool CA certificates.
	EtcdPeerURL string
	StopTimeout time.Duration
	// Accel is auto (default), kvm or tcg.
	Accel string
	// ImportDirs are the host directories (or block devices) from which
	// requests may name files outside the storage pools: disk images, ISOs
	// and import sources (storage.HostPaths). None by default.
	ImportDirs []string
	// VMUIDRange is "first-last", the uids (and file groups) QEMU runs
	// as; "" is inventory.DefaultIDRange.
	VMUIDRange string
	Log        *slog.Logger
}

// Daemon is a running hangar serve.
type Daemon struct {
	Agent  *agent.Agent
	Store  store.Store
	Socket string
	member *etcdembed.Member
	srv    *http.Server
	tcp    *http.Server // nil without --listen
	// TCPAddr is the address of the TCP listener ("" without one).
	TCPAddr string
	errc    chan error
	cancel  context.CancelFunc
	done    chan struct{}
}

// Start brings everything up and returns once the API is served and the
// agent has recovered its VMs.
func Start(ctx context.Context, cfg Config) (*Daemon, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.DataDir == "" {
		cfg.DataDir = "/var/lib/hangar"
	}
	if cfg.RunDir == "" {
		cfg.RunDir = "/run/hangar"
	}
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(cfg.RunDir, "hangar.sock")
	}
	if cfg.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("host name: %w", err)
		}
		cfg.Host = h
	}
	if cfg.Listen != "" && (cfg.TLSCert == "" || cfg.TLSKey == "") {
		return nil, errors.New("--listen needs --tls-cert and --tls-key: the API is served over TCP only with TLS")
	}
	if cfg.Listen != "" && cfg.ClientCA == "" && cfg.TokensFile == "" {
		return nil, errors.New("--listen needs --client-ca or --tokens-file (or both): TCP clients must authenticate with a client certificate or a bearer token")
	}
	if cfg.Listen == "" && (cfg.ClientCA != "" || cfg.TokensFile != "") {
		return nil, errors.New("--client-ca and --tokens-file authenticate clients of --listen: give --listen too")
	}
	// Read the TLS material before anything starts, so that a bad file
	// fails fast.
	var tcpTLS *tls.Config
	var tcpAuth authn.AnyOf
	if cfg.Listen != "" {
		var err error
		if tcpTLS, tcpAuth, err = listenerAuth(cfg); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{cfg.DataDir, cfg.RunDir, filepath.Join(cfg.RunDir, "vms")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	caps, err := qemu.Detect(ctx, cfg.Accel)
	if err != nil {
		return nil, err
	}
	ids := inventory.DefaultIDRange
	if cfg.VMUIDRange != "" {
		if ids, err = inventory.ParseIDRange(cfg.VMUIDRange); err != nil {
			return nil, fmt.Errorf("--vm-uid-range: %w", err)
		}
	}
	etcdTLS, err := hostTLS(cfg)
	if err != nil {
		return nil, err
	}
	ecfg := etcdembed.Config{Name: cfg.Host, DataDir: filepath.Join(cfg.DataDir, "etcd"), Logger: cfg.Log,
		ClientSocket: EtcdSocket(cfg.RunDir), TLS: etcdTLS}
	if cfg.EtcdClientURL != "" {
		ecfg.ClientURLs = []string{cfg.EtcdClientURL}
	}
	if cfg.EtcdPeerURL != "" {
		ecfg.PeerURLs = []string{cfg.EtcdPeerURL}
	}
	etcdStart := time.Now()
	member, err := etcdembed.Start(ctx, ecfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	cfg.Log.Debug("etcd ready", "socket", member.ClientSocket(), "dur", time.Since(etcdStart))
	ok := false
	defer func() {
		if !ok {
			_ = member.Close()
		}
	}()
	st := store.NewEtcd(member.Client())
	pool, err := storage.OpenDirPool("default", filepath.Join(cfg.DataDir, "pools", "default"))
	if err != nil {
		return nil, err
	}
	hostPaths, err := storage.NewHostPaths(cfg.ImportDirs, []string{cfg.DataDir, cfg.RunDir})
	if err != nil {
		return nil, fmt.Errorf("--import-dir: %w", err)
	}
	// The key that seals cloud-init user-data in etcd; it stays on the host.
	box, err := secrets.LoadOrCreate(filepath.Join(cfg.DataDir, "secrets.key"))
	if err != nil {
		return nil, err
	}
	ag, err := agent.New(agent.Config{Host: cfg.Host, DataDir: cfg.DataDir, RunDir: cfg.RunDir, Store: st, Caps: caps,
		Pool: pool, HostPaths: hostPaths, Log: cfg.Log, StopTimeout: cfg.StopTimeout, Secrets: box, VMIDs: ids})
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	d := &Daemon{Agent: ag, Store: st, Socket: cfg.Socket, member: member, errc: make(chan error, 3), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		if err := ag.Run(rctx); err != nil {
			d.errc <- fmt.Errorf("agent: %w", err)
		}
	}()
	select {
	case <-ag.Ready():
	case err := <-d.errc:
		cancel()
		return nil, err
	case <-ctx.Done():
		cancel()
		return nil, ctx.Err()
	}
	api := manager.New(manager.Config{Store: st, Metrics: ag, Consoles: ag, Volumes: ag, Pools: ag, Secrets: box, Log: cfg.Log})
	d.srv = &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second}
	_ = os.Remove(cfg.Socket)
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("listen on %s: %w", cfg.Socket, err)
	}
	if err := os.Chmod(cfg.Socket, 0o660); err != nil {
		cancel()
		return nil, fmt.Errorf("chmod %s: %w", cfg.Socket, err)
	}
	go func() {
		if err := d.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.errc <- fmt.Errorf("api on %s: %w", cfg.Socket, err)
		}
	}()
	if cfg.Listen != "" {
		tln, err := tls.Listen("tcp", cfg.Listen, tcpTLS)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
		// A server of its own: only TCP requests go through authentication;
		// the unix socket stays trusted.
		d.tcp = &http.Server{Handler: api.Logged(func(h http.Handler) http.Handler { return authn.Require(tcpAuth, h) }), ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: slog.NewLogLogger(cfg.Log.With("listener", cfg.Listen).Handler(), slog.LevelInfo)}
		d.TCPAddr = tln.Addr().String()
		go func() {
			if err := d.tcp.Serve(tln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.errc <- fmt.Errorf("api on %s: %w", cfg.Listen, err)
			}
		}()
	}
	ok = true
	cfg.Log.Info("hangar serving", "socket", cfg.Socket, "host", cfg.Host, "data", cfg.DataDir, "accel", caps.Accel)
	return d, nil
}

// listenerAuth builds the TCP listener's TLS configuration and the ways
// its clients may authenticate: a client certificate of ClientCA (asked
// for, verified in the handshake and checked again per request) or a
// bearer token of TokensFile.
func listenerAuth(cfg Config) (*tls.Config, authn.AnyOf, error) {
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("load TLS key pair: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	var auth authn.AnyOf
	if cfg.ClientCA != "" {
		b, err := os.ReadFile(cfg.ClientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("--client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, nil, fmt.Errorf("--client-ca %s: no PEM certificates", cfg.ClientCA)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		auth = append(auth, authn.ClientCert{Roots: pool})
	}
	if cfg.TokensFile != "" {
		toks, err := authn.LoadTokens(cfg.TokensFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--tokens-file: %w", err)
		}
		auth = append(auth, toks)
	}
	return tc, auth, nil
}

// EtcdSocket is the unix socket on which the embedded etcd member serves
// this host's own clients.
func EtcdSocket(runDir string) string { return filepath.Join(runDir, "etcd", "client.sock") }

// hostTLS loads (or creates) the pool CA in DataDir/pki and makes sure this
// host has a certificate from it covering loopback and the hosts of the
// etcd URLs.
func hostTLS(cfg Config) (etcdembed.TLSFiles, error) {
	dir := filepath.Join(cfg.DataDir, "pki")
	ca, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		return etcdembed.TLSFiles{}, err
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	dns := []string{"localhost"}
	for _, raw := range []string{cfg.EtcdPeerURL, cfg.EtcdClientURL} {
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil {
			return etcdembed.TLSFiles{}, fmt.Errorf("etcd url %q: %w", raw, err)
		}
		if ip := net.ParseIP(u.Hostname()); ip != nil {
			if !ip.IsUnspecified() {
				ips = append(ips, ip)
			}
		} else if u.Hostname() != "" {
			dns = append(dns, u.Hostname())
		}
	}
	f := etcdembed.TLSFiles{CertFile: filepath.Join(dir, "host.crt"), KeyFile: filepath.Join(dir, "host.key"), CAFile: ca.CertFile()}
	if _, err := ca.EnsureHost(f.CertFile, f.KeyFile, cfg.Host, ips, dns); err != nil {
		return etcdembed.TLSFiles{}, err
	}
	return f, nil
}

// Err reports a fatal error of a component.
func (d *Daemon) Err() <-chan error { return d.errc }

// Close stops serving. Running VMs keep running; the next start re-adopts them.
func (d *Daemon) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = d.srv.Shutdown(ctx)
	if d.tcp != nil {
		_ = d.tcp.Shutdown(ctx)
	}
	d.cancel()
	<-d.done
	_ = os.Remove(d.Socket)
	return d.member.Close()
}
