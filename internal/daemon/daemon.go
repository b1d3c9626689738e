// Package daemon wires one `hangar serve` process: embedded etcd member (or
// a client of the pool's members, or of an external cluster), state store,
// host agent and API server.
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
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	v1 "hangar/api/v1"
	"hangar/internal/access"
	"hangar/internal/agent"
	"hangar/internal/audit"
	"hangar/internal/authn"
	"hangar/internal/etcdembed"
	"hangar/internal/hostapi"
	"hangar/internal/inventory"
	"hangar/internal/join"
	"hangar/internal/manager"
	"hangar/internal/master"
	"hangar/internal/pki"
	"hangar/internal/qemu"
	"hangar/internal/revert"
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
	// Listen is an optional TCP address (IP:PORT) of the TLS API. Without
	// TLSCert/TLSKey it is served with the host certificate of the pool CA
	// (<data-dir>/pki). Clients authenticate with a certificate of the
	// pool CA, of ClientCA, or a bearer token of TokensFile.
	Listen          string
	TLSCert, TLSKey string
	// ClientCA is a PEM file of further CAs whose client certificates the
	// TCP listener accepts.
	ClientCA string
	// TokensFile lists bearer tokens the TCP listener accepts (see
	// authn.LoadTokens).
	TokensFile string
	// LoginMaxFailures and LoginLockout lock a user's logins from one
	// address after so many failures, for so long (0: the defaults).
	LoginMaxFailures int
	LoginLockout     time.Duration
	// AuditMaxRecords and AuditMaxAge are the audit log's retention (0:
	// the defaults).
	AuditMaxRecords int
	AuditMaxAge     time.Duration
	// Join is the --listen address of a host of the pool to join, with
	// Token (hangar pool join-token). Used only while the data dir holds no
	// pool.json: a restart does not join again.
	Join, Token string
	// EtcdClientURL is an https URL on which the embedded etcd member also
	// serves clients of other hosts (pool CA client certificates). Default
	// with a --listen IP that is not loopback: https://<IP>:2379. Local
	// clients always use the unix socket RunDir/etcd/client.sock.
	EtcdClientURL string
	// EtcdPeerURL is the member's https peer URL. Default with a --listen
	// IP that is not loopback: https://<IP>:2380, else a free 127.0.0.1
	// port. Peers authenticate each other with pool CA certificates.
	EtcdPeerURL string
	// NotManager: this host is not manager-capable: when it joins it becomes
	// an etcd client (never a member, never holding the CA key) even while
	// the pool has fewer than three members.
	NotManager bool
	// EtcdEndpoints are the client URLs of an external etcd cluster to use
	// instead of an embedded member (role external), with EtcdCA (its
	// server CA) and EtcdCert/EtcdKey (a client certificate it accepts).
	EtcdEndpoints             []string
	EtcdCA, EtcdCert, EtcdKey string
	StopTimeout               time.Duration
	// Accel is auto (default), kvm or tcg.
	Accel string
	// ImportDirs are the host directories (or block devices) from which
	// requests may name files outside the storage pools: disk images, ISOs
	// and import sources (storage.HostPaths). None by default.
	ImportDirs []string
	// VMUIDRange is "first-last", the uids (and file groups) QEMU runs
	// as; "" is inventory.DefaultIDRange.
	VMUIDRange string
	// FenceAgent is a command the pool master runs before it restarts a
	// dead host's HA VMs elsewhere (IPMI/Redfish style), given the host's
	// name; "" for none.
	FenceAgent string
	// TestFaults lets tests switch faults on through files in
	// <data-dir>/test-faults (agent.Config.FaultDir). Hidden serve flag.
	TestFaults bool
	// HistoryInterval between the agent's usage samples (0: 10 s). Hidden
	// serve flag: the tests shorten it.
	HistoryInterval time.Duration
	Log             *slog.Logger
}

// Daemon is a running hangar serve.
type Daemon struct {
	Agent *agent.Agent
	// Master is this host's candidacy for pool master.
	Master     *master.Master
	masterDone chan struct{}
	Store      store.Store
	Socket     string
	// Role is this host's part in the manager (v1.RoleMember, …).
	Role   string
	member *etcdembed.Member // nil unless Role is member
	srv    *http.Server
	tcp    *http.Server // nil without --listen
	// TCPAddr is the address of the TCP listener ("" without one).
	TCPAddr string
	errc    chan error
	cancel  context.CancelFunc
	done    chan struct{}
	// closeStore closes the embedded member or the etcd client.
	closeStore func() error
}

// Start brings everything up and returns once the API is served and the
// agent has recovered its VMs. A first start with Join joins the pool
// first; if anything fails after the pool admitted the host, what the join
// wrote is removed again (files, etcd learner, host record).
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
	listenIP, err := checkFlags(&cfg)
	if err != nil {
		return nil, err
	}
	// Files named by flags are read before anything starts, so that a bad
	// one fails fast.
	extra, err := listenerExtras(cfg)
	if err != nil {
		return nil, err
	}
	state, err := join.LoadState(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	external := len(cfg.EtcdEndpoints) > 0
	switch {
	case state != nil && state.Role == v1.RoleExternal && !external:
		return nil, fmt.Errorf("this host uses an external etcd cluster (%s): give --etcd-endpoints", filepath.Join(cfg.DataDir, join.StateFile))
	case state != nil && state.Role != v1.RoleExternal && external:
		return nil, fmt.Errorf("this host is a %s of a pool with its own etcd (%s): --etcd-endpoints does not apply", state.Role, filepath.Join(cfg.DataDir, join.StateFile))
	case state != nil && cfg.Join != "":
		cfg.Log.Info("already in a pool: --join and --token are not used again", "pool", state.Pool, "role", state.Role, "joinedVia", state.JoinedVia)
	}

	rev := revert.New()
	defer rev.Fail()
	first := false
	if state == nil && cfg.Join != "" {
		if state, err = joinPool(ctx, cfg, listenIP, external, rev); err != nil {
			return nil, err
		}
	}
	if state == nil && cfg.NotManager {
		return nil, errors.New("--manager=false is for a host that joins a pool (--join): the first host of a pool is a manager host")
	}
	if state == nil {
		first = true
		state = &join.State{Role: v1.RoleMember, Joined: time.Now().UTC()}
		if external {
			state.Role = v1.RoleExternal
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
	ca, hostFiles, err := hostIdentity(cfg, listenIP, first)
	if err != nil {
		return nil, err
	}
	hostKP, err := pki.LoadKeyPair(hostFiles.CertFile, hostFiles.KeyFile)
	if err != nil {
		return nil, err
	}
	d := &Daemon{Socket: cfg.Socket, Role: state.Role, errc: make(chan error, 3), done: make(chan struct{})}
	var cluster join.Cluster
	var closeStore func() error
	switch state.Role {
	case v1.RoleMember:
		m, err := startMember(ctx, cfg, state, hostFiles, hostKP, ca)
		if err != nil {
			return nil, err
		}
		rev.Add(func() { _ = m.Close() })
		d.member, closeStore = m, m.Close
		d.Store = store.NewEtcd(m.Client())
		cluster = join.EtcdCluster{C: m.Client()}
	case v1.RoleClient:
		es, err := store.OpenEtcdTLS(ctx, state.Endpoints, hostClientTLS(hostKP, ca))
		if err != nil {
			return nil, fmt.Errorf("connect to the pool's etcd members %v: %w", state.Endpoints, err)
		}
		rev.Add(func() { _ = es.Close() })
		d.Store, closeStore = es, es.Close
		cluster = join.EtcdCluster{C: es.Client()}
		refreshEndpoints(ctx, cfg, state, cluster)
	case v1.RoleExternal:
		tc, err := externalTLS(cfg)
		if err != nil {
			return nil, err
		}
		es, err := store.OpenEtcdTLS(ctx, cfg.EtcdEndpoints, tc)
		if err != nil {
			return nil, fmt.Errorf("--etcd-endpoints: %w", err)
		}
		rev.Add(func() { _ = es.Close() })
		d.Store, closeStore = es, es.Close
	}
	st := d.Store
	pool, err := join.EnsurePool(ctx, st, ca, cfg.Host)
	if err != nil {
		return nil, err
	}
	if first {
		state.Pool = pool.Name
		if err := join.WriteState(cfg.DataDir, *state); err != nil {
			return nil, err
		}
	}

	storagePool, err := storage.OpenDirPool(storage.LocalPoolName(cfg.Host), filepath.Join(cfg.DataDir, "pools", "default"))
	if err != nil {
		return nil, err
	}
	hostPaths, err := storage.NewHostPaths(cfg.ImportDirs, []string{cfg.DataDir, cfg.RunDir})
	if err != nil {
		return nil, fmt.Errorf("--import-dir: %w", err)
	}
	// The key that seals cloud-init user-data in etcd: every host of the
	// pool has the same one (handed over with the join); it never goes
	// into etcd.
	keyFile := join.SecretsKeyFile(cfg.DataDir)
	box, err := secrets.LoadOrCreate(keyFile)
	if err != nil {
		return nil, err
	}
	secretsKey, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}

	// The TCP listener before the agent, so that the address it publishes
	// is the one bound (also for port 0).
	var tln net.Listener
	if cfg.Listen != "" {
		tc, auth, err := listenerTLS(cfg, ca, hostKP, extra)
		if err != nil {
			return nil, err
		}
		if tln, err = tls.Listen("tcp", cfg.Listen, tc); err != nil {
			return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
		rev.Add(func() { _ = tln.Close() })
		d.TCPAddr = tln.Addr().String()
		extra.auth = auth
	}

	faultDir := ""
	if cfg.TestFaults {
		faultDir = filepath.Join(cfg.DataDir, "test-faults")
		cfg.Log.Warn("test faults enabled: files in this directory switch faults on", "dir", faultDir)
	}
	ag, err := agent.New(agent.Config{Host: cfg.Host, DataDir: cfg.DataDir, RunDir: cfg.RunDir, Store: st, Caps: caps,
		Pool: storagePool, HostPaths: hostPaths, Log: cfg.Log, StopTimeout: cfg.StopTimeout, Secrets: box, VMIDs: ids,
		Address: d.TCPAddr, Role: state.Role, SelfFence: true, FaultDir: faultDir,
		HistoryInterval: cfg.HistoryInterval})
	if err != nil {
		return nil, err
	}
	d.Agent = ag
	rctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	rev.Add(cancel)
	go func() {
		defer close(d.done)
		if err := ag.Run(rctx); err != nil {
			d.errc <- fmt.Errorf("agent: %w", err)
		}
	}()
	// Every host is a candidate for pool master; one is elected.
	ecli, ok := st.(interface{ Client() *clientv3.Client })
	if !ok {
		return nil, errors.New("the pool master needs an etcd store")
	}
	d.Master = master.New(master.Config{Client: ecli.Client(), Store: st, Host: cfg.Host, Log: cfg.Log,
		FenceAgent: cfg.FenceAgent})
	d.masterDone = make(chan struct{})
	go func() {
		defer close(d.masterDone)
		_ = d.Master.Run(rctx)
	}()
	select {
	case <-ag.Ready():
	case err := <-d.errc:
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	admin := &join.Server{Store: st, CA: ca, SecretsKey: secretsKey, Cluster: cluster, External: cfg.EtcdEndpoints, Host: cfg.Host, Log: cfg.Log}
	// Host-local requests about other hosts go to them with this host's
	// certificate (internal/hostapi); without one, everything is served here.
	fwd, err := hostapi.Load(filepath.Join(cfg.DataDir, "pki"), cfg.Host, hostapi.StoreResolver(st), cfg.Log)
	if errors.Is(err, os.ErrNotExist) {
		cfg.Log.Info("no host certificate: host-local requests are served on this host only", "err", err)
		fwd, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	users := &access.Store{S: st}
	api := manager.New(manager.Config{Store: st, Metrics: ag, Usage: ag, Consoles: ag, Volumes: ag, Pools: ag, Secrets: box, Log: cfg.Log, PoolAdmin: admin, Forward: fwd,
		Access: users, Audit: &audit.Log{S: st, MaxRecords: cfg.AuditMaxRecords, MaxAge: cfg.AuditMaxAge, Log: cfg.Log},
		Logins: &access.Limiter{MaxFailures: cfg.LoginMaxFailures, Lockout: cfg.LoginLockout, S: st}})
	// No write timeout: GET /api/v1/events is a stream (each event has its
	// own write deadline); Shutdown ends the streams first.
	d.srv = &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second}
	d.srv.RegisterOnShutdown(api.CloseStreams)
	_ = os.Remove(cfg.Socket)
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Socket, err)
	}
	if err := os.Chmod(cfg.Socket, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", cfg.Socket, err)
	}
	go func() {
		if err := d.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.errc <- fmt.Errorf("api on %s: %w", cfg.Socket, err)
		}
	}()
	if tln != nil {
		// A server of its own: TCP requests authenticate (but for the
		// public routes: the join, which its token authenticates, and the
		// login); the unix socket stays trusted. Users' API tokens come
		// before the tokens file so that a revoked one says so.
		auth := append(authn.AnyOf{extra.auth[0], users}, extra.auth[1:]...)
		d.tcp = &http.Server{Handler: api.TCP(auth), ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: slog.NewLogLogger(cfg.Log.With("listener", cfg.Listen).Handler(), slog.LevelInfo)}
		d.tcp.RegisterOnShutdown(api.CloseStreams)
		go func() {
			if err := d.tcp.Serve(tln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.errc <- fmt.Errorf("api on %s: %w", cfg.Listen, err)
			}
		}()
	}
	d.closeStore = closeStore
	rev.Success()
	cfg.Log.Info("hangar serving", "socket", cfg.Socket, "host", cfg.Host, "data", cfg.DataDir, "accel", caps.Accel,
		"pool", pool.Name, "role", state.Role, "listen", d.TCPAddr)
	return d, nil
}

// extras are the listener's credentials from flags: further client CAs and
// bearer tokens.
type extras struct {
	clientCAs []*x509.Certificate
	tokens    *authn.Tokens
	auth      authn.AnyOf
}

func listenerExtras(cfg Config) (extras, error) {
	var e extras
	if cfg.ClientCA != "" {
		b, err := os.ReadFile(cfg.ClientCA)
		if err != nil {
			return e, fmt.Errorf("--client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return e, fmt.Errorf("--client-ca %s: no PEM certificates", cfg.ClientCA)
		}
		for rest := b; ; {
			c, r, err := nextCert(rest)
			if err != nil {
				return e, fmt.Errorf("--client-ca %s: %w", cfg.ClientCA, err)
			}
			if c == nil {
				break
			}
			e.clientCAs = append(e.clientCAs, c)
			rest = r
		}
	}
	if cfg.TokensFile != "" {
		toks, err := authn.LoadTokens(cfg.TokensFile)
		if err != nil {
			return e, fmt.Errorf("--tokens-file: %w", err)
		}
		e.tokens = toks
	}
	if cfg.TLSCert != "" {
		if _, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey); err != nil {
			return e, fmt.Errorf("load TLS key pair: %w", err)
		}
	}
	return e, nil
}

// listenerTLS builds the TCP listener's TLS configuration and the ways its
// clients may authenticate: a client certificate of the pool CA or of
// --client-ca (asked for, verified in the handshake and checked again per
// request) or a bearer token of --tokens-file. Its certificate is the
// host's, with the CA certificate in the chain (a joiner pins the CA by its
// fingerprint), unless --tls-cert names another.
func listenerTLS(cfg Config, ca *pki.CA, host *pki.KeyPair, e extras) (*tls.Config, authn.AnyOf, error) {
	var cert tls.Certificate
	var err error
	if cfg.TLSCert != "" {
		cert, err = tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	} else {
		cert, err = host.TLSCertificate()
		if err == nil {
			cert.Certificate = append(cert.Certificate, ca.Cert().Raw)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load TLS key pair: %w", err)
	}
	roots := ca.Pool()
	for _, c := range e.clientCAs {
		roots.AddCert(c)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, ClientCAs: roots, ClientAuth: tls.VerifyClientCertIfGiven}
	auth := authn.AnyOf{authn.ClientCert{Roots: roots}}
	if e.tokens != nil {
		auth = append(auth, e.tokens)
	}
	return tc, auth, nil
}

// EtcdSocket is the unix socket on which the embedded etcd member serves
// this host's own clients.
func EtcdSocket(runDir string) string { return filepath.Join(runDir, "etcd", "client.sock") }

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
	<-d.masterDone
	_ = os.Remove(d.Socket)
	return d.closeStore()
}
