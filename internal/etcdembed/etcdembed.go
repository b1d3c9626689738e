// Package etcdembed runs an etcd member inside the Hangar process.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const (
	// startTimeout bounds Start even if ctx has no deadline.
	startTimeout = 60 * time.Second
	// quotaBackendBytes is the backend size at which etcd raises the NOSPACE
	// alarm and goes read-only (etcd's own default, made explicit).
	quotaBackendBytes = 2 << 30
	// autoCompactionRetention keeps an hour of history for watchers to
	// resume from; older revisions are compacted periodically.
	autoCompactionRetention = "1h"
	// dialTimeout bounds the member's own client connecting to it.
	dialTimeout = 5 * time.Second
	// portAttempts is how often Start retries when an automatically picked
	// port was taken between picking and listening.
	portAttempts = 3
	// debugEnv, when set to anything non-empty, lets etcd log at debug level
	// instead of error level.
	debugEnv = "HANGAR_ETCD_DEBUG"
)

// Config describes one embedded etcd member.
//
// The member is closed to local users other than the process's own: local
// clients (this process) reach it only through ClientSocket, a unix socket
// in a 0700 directory; peers and remote clients only over TLS with
// certificates from TLS.CAFile (mutual TLS).
type Config struct {
	// Name is the member name; default "default".
	Name string
	// DataDir holds the member's WAL and database; required. Starting on an
	// existing DataDir restarts the member with its data.
	DataDir string
	// ClientSocket is the path of the unix socket the member serves local
	// clients on, and that Client uses; required, at most 107 bytes. Its
	// directory is created 0700 (or made 0700) and must belong to this
	// process's user; a stale socket there is removed.
	ClientSocket string
	// ClientURLs are further client URLs, for other hosts: https only; the
	// clients must present a certificate signed by TLS.CAFile.
	ClientURLs []string
	// PeerURLs are listened on and advertised for peers: https only. Empty
	// picks a free 127.0.0.1 port.
	PeerURLs []string
	// TLS is the member's certificate, used for peer traffic (as server and
	// as client) and for ClientURLs; required.
	TLS TLSFiles
	// InitialCluster is etcd's --initial-cluster; "" means a single member
	// "Name=PeerURLs".
	InitialCluster string
	// ClusterState is "new" (default) or "existing".
	ClusterState string
	// Logger receives etcd's own logs, at error level unless HANGAR_ETCD_DEBUG
	// is set; nil means slog.Default().
	Logger *slog.Logger
}

// TLSFiles names PEM files: a key pair and the CA that peers' and remote
// clients' certificates must be signed by.
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
}

// maxSocketPath is the longest unix socket path Linux accepts (sun_path is
// 108 bytes including the terminating NUL).
const maxSocketPath = 107

// Member is a running embedded etcd member.
type Member struct {
	etcd       *embed.Etcd
	client     *clientv3.Client
	clientURLs []string
	// clientSocket is the path of the unix socket for local clients.
	clientSocket string
	closing      *atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

// Start starts the member and returns once it serves client requests, or
// fails when ctx ends or after 60 s.
func Start(ctx context.Context, cfg Config) (*Member, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("etcd: data dir is required")
	}
	if cfg.TLS.CertFile == "" || cfg.TLS.KeyFile == "" || cfg.TLS.CAFile == "" {
		return nil, errors.New("etcd: TLS cert, key and CA files are required: peers authenticate each other with TLS client certificates")
	}
	if err := prepareSocket(cfg.ClientSocket); err != nil {
		return nil, err
	}
	if cfg.Name == "" {
		cfg.Name = embed.DefaultName
	}
	switch cfg.ClusterState {
	case "":
		cfg.ClusterState = embed.ClusterStateFlagNew
	case embed.ClusterStateFlagNew, embed.ClusterStateFlagExisting:
	default:
		return nil, fmt.Errorf("etcd: invalid cluster state %q (want %q or %q)",
			cfg.ClusterState, embed.ClusterStateFlagNew, embed.ClusterStateFlagExisting)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	level, levelName := zapcore.ErrorLevel, "error"
	if os.Getenv(debugEnv) != "" {
		level, levelName = zapcore.DebugLevel, "debug"
	}
	closing := new(atomic.Bool)
	zl := zap.New(newSlogCore(logger.Handler().WithAttrs([]slog.Attr{
		slog.String("component", "etcd"),
		slog.String("member", cfg.Name),
	}), level, closing))

	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	auto := len(cfg.PeerURLs) == 0
	var (
		e          *embed.Etcd
		clientURLs []string
		err        error
	)
	for attempt := 1; ; attempt++ {
		var ecfg *embed.Config
		ecfg, clientURLs, err = embedConfig(cfg, zl, levelName)
		if err != nil {
			return nil, err
		}
		e, err = embed.StartEtcd(ecfg)
		if err == nil {
			break
		}
		if !auto || attempt == portAttempts || !isAddrInUse(err) {
			return nil, fmt.Errorf("etcd: start member %q: %w", cfg.Name, err)
		}
		logger.DebugContext(ctx, "etcd: picked port was taken, retrying", "attempt", attempt, "err", err)
	}

	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		closing.Store(true)
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("etcd: member %q failed while starting: %w", cfg.Name, err)
	case <-ctx.Done():
		closing.Store(true)
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("etcd: member %q not ready: %w", cfg.Name, context.Cause(ctx))
	}

	// The socket is inside a 0700 directory already; its own mode is a
	// second fence (etcd creates it with the process umask).
	if err := os.Chmod(cfg.ClientSocket, 0o600); err != nil {
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("etcd: chmod client socket: %w", err)
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   clientURLs[:1], // the unix socket
		DialTimeout: dialTimeout,
		Logger:      zl.Named("client"),
		Context:     context.WithoutCancel(ctx),
	})
	if err != nil {
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("etcd: connect to member %q: %w", cfg.Name, err)
	}
	return &Member{etcd: e, client: client, clientURLs: clientURLs, clientSocket: cfg.ClientSocket, closing: closing}, nil
}

// embedConfig builds etcd's configuration, picking a free peer port when
// cfg leaves PeerURLs empty. The first client URL returned is the unix
// socket.
func embedConfig(cfg Config, zl *zap.Logger, levelName string) (*embed.Config, []string, error) {
	peerURLs := cfg.PeerURLs
	if len(peerURLs) == 0 {
		ports, err := freePorts(1)
		if err != nil {
			return nil, nil, err
		}
		peerURLs = []string{fmt.Sprintf("https://127.0.0.1:%d", ports[0])}
	}
	clientURLs := append([]string{"unix://" + cfg.ClientSocket}, cfg.ClientURLs...)
	cu, err := parseURLs(cfg.ClientURLs, "https")
	if err != nil {
		return nil, nil, fmt.Errorf("etcd: client urls: %w (local clients use the unix socket; others need TLS client certificates)", err)
	}
	pu, err := parseURLs(peerURLs, "https")
	if err != nil {
		return nil, nil, fmt.Errorf("etcd: peer urls: %w (peers authenticate each other with TLS client certificates)", err)
	}
	sock := url.URL{Scheme: "unix", Path: cfg.ClientSocket}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	ec.ListenClientUrls = append([]url.URL{sock}, cu...)
	// Only TCP URLs are advertised (to other members): etcd wants host:port
	// there, and the socket is of no use to other hosts.
	ec.AdvertiseClientUrls = cu
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = pu, pu
	ec.InitialCluster = cfg.InitialCluster
	if ec.InitialCluster == "" {
		ec.InitialCluster = ec.InitialClusterFromName(cfg.Name)
	}
	ec.ClusterState = cfg.ClusterState

	// Mutual TLS: a peer (and a remote client) must present a certificate
	// signed by the pool CA; etcd verifies ours the same way.
	tlsInfo := transport.TLSInfo{
		CertFile:       cfg.TLS.CertFile,
		KeyFile:        cfg.TLS.KeyFile,
		TrustedCAFile:  cfg.TLS.CAFile,
		ClientCertAuth: true,
	}
	ec.PeerTLSInfo = tlsInfo
	if len(cu) > 0 {
		// Only with TCP client URLs: on the unix socket etcd ignores
		// client TLS and warns about it.
		ec.ClientTLSInfo = tlsInfo
	}
	ec.TlsMinVersion = "TLS1.2"

	// Raft timing: etcd's defaults (100 ms heartbeat, 1 s election) with
	// the initial election ticks fast-forwarded, so a single member elects
	// itself right away.
	ec.TickMs = 100
	ec.ElectionMs = 1000
	ec.InitialElectionTickAdvance = true

	ec.QuotaBackendBytes = quotaBackendBytes
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = autoCompactionRetention

	// No metrics or pprof listeners and no JSON gateway; clients use gRPC.
	ec.ListenMetricsUrls = nil
	ec.EnablePprof = false
	ec.EnableGRPCGateway = false

	ec.Logger = "zap"
	ec.LogLevel = levelName
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	return ec, clientURLs, nil
}

// prepareSocket makes the directory of the client socket private (0700,
// owned by this user) and removes a stale socket from an earlier run.
func prepareSocket(path string) error {
	switch {
	case path == "":
		return errors.New("etcd: client socket path is required")
	case !filepath.IsAbs(path):
		return fmt.Errorf("etcd: client socket %q: must be absolute", path)
	case len(path) > maxSocketPath:
		return fmt.Errorf("etcd: client socket %q: longer than %d bytes (a unix socket limit); use a shorter run dir", path, maxSocketPath)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("etcd: create socket dir: %w", err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("etcd: socket dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("etcd: socket dir %s is not a directory", dir)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("etcd: socket dir %s belongs to uid %d, not to this process (uid %d): refusing to serve etcd there",
			dir, sys.Uid, os.Geteuid())
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("etcd: chmod socket dir: %w", err)
	}
	st, err = os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("etcd: client socket: %w", err)
	case st.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("etcd: client socket %s exists and is not a socket", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("etcd: remove stale client socket: %w", err)
	}
	return nil
}

func parseURLs(ss []string, scheme string) ([]url.URL, error) {
	us := make([]url.URL, 0, len(ss))
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("parse %q: %w", s, err)
		}
		if u.Scheme != scheme {
			return nil, fmt.Errorf("url %q: scheme %q, want %q", s, u.Scheme, scheme)
		}
		us = append(us, *u)
	}
	return us, nil
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. They are free
// only at the moment of the call; Start retries if one is taken before etcd
// listens on it.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("etcd: pick free port: %w", err)
		}
		// Keep it open until all are picked so the ports differ.
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// Client returns a client connected to this member. It is closed by Close;
// callers must not close it themselves.
func (m *Member) Client() *clientv3.Client { return m.client }

// ClientSocket returns the path of the member's unix client socket.
func (m *Member) ClientSocket() string { return m.clientSocket }

// ClientURLs returns the URLs the member serves clients on, the unix
// socket first.
func (m *Member) ClientURLs() []string { return slices.Clone(m.clientURLs) }

// Close closes the member's client and stops the member. It is safe to call
// more than once.
func (m *Member) Close() error {
	m.closeOnce.Do(func() {
		if err := m.client.Close(); err != nil && !errors.Is(err, context.Canceled) {
			m.closeErr = fmt.Errorf("etcd: close client: %w", err)
		}
		m.closing.Store(true)
		m.etcd.Close()
	})
	return m.closeErr
}
