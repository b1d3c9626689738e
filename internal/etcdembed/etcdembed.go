// Package etcdembed runs an etcd member inside the Hangar process.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
type Config struct {
	// Name is the member name; default "default".
	Name string
	// DataDir holds the member's WAL and database; required. Starting on an
	// existing DataDir restarts the member with its data.
	DataDir string
	// ClientURLs are listened on and advertised for clients, e.g.
	// "http://127.0.0.1:2379". Empty picks a free 127.0.0.1 port.
	ClientURLs []string
	// PeerURLs are listened on and advertised for peers. Empty picks a free
	// 127.0.0.1 port.
	PeerURLs []string
	// InitialCluster is etcd's --initial-cluster; "" means a single member
	// "Name=PeerURLs".
	InitialCluster string
	// ClusterState is "new" (default) or "existing".
	ClusterState string
	// Logger receives etcd's own logs, at error level unless HANGAR_ETCD_DEBUG
	// is set; nil means slog.Default().
	Logger *slog.Logger
}

// Member is a running embedded etcd member.
type Member struct {
	etcd       *embed.Etcd
	client     *clientv3.Client
	clientURLs []string
	closing    *atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

// Start starts the member and returns once it serves client requests, or
// fails when ctx ends or after 60 s.
func Start(ctx context.Context, cfg Config) (*Member, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("etcd: data dir is required")
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

	auto := len(cfg.ClientURLs) == 0 || len(cfg.PeerURLs) == 0
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

	client, err := clientv3.New(clientv3.Config{
		Endpoints:   clientURLs,
		DialTimeout: dialTimeout,
		Logger:      zl.Named("client"),
		Context:     context.WithoutCancel(ctx),
	})
	if err != nil {
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("etcd: connect to member %q: %w", cfg.Name, err)
	}
	return &Member{etcd: e, client: client, clientURLs: clientURLs, closing: closing}, nil
}

// embedConfig builds etcd's configuration, picking free ports where cfg
// leaves URLs empty.
func embedConfig(cfg Config, zl *zap.Logger, levelName string) (*embed.Config, []string, error) {
	clientURLs, peerURLs := cfg.ClientURLs, cfg.PeerURLs
	need := 0
	if len(clientURLs) == 0 {
		need++
	}
	if len(peerURLs) == 0 {
		need++
	}
	if need > 0 {
		ports, err := freePorts(need)
		if err != nil {
			return nil, nil, err
		}
		if len(clientURLs) == 0 {
			clientURLs = []string{fmt.Sprintf("http://127.0.0.1:%d", ports[0])}
			ports = ports[1:]
		}
		if len(peerURLs) == 0 {
			peerURLs = []string{fmt.Sprintf("http://127.0.0.1:%d", ports[0])}
		}
	}
	cu, err := parseURLs(clientURLs)
	if err != nil {
		return nil, nil, fmt.Errorf("etcd: client urls: %w", err)
	}
	pu, err := parseURLs(peerURLs)
	if err != nil {
		return nil, nil, fmt.Errorf("etcd: peer urls: %w", err)
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	ec.ListenClientUrls, ec.AdvertiseClientUrls = cu, cu
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = pu, pu
	ec.InitialCluster = cfg.InitialCluster
	if ec.InitialCluster == "" {
		ec.InitialCluster = ec.InitialClusterFromName(cfg.Name)
	}
	ec.ClusterState = cfg.ClusterState

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

func parseURLs(ss []string) ([]url.URL, error) {
	us := make([]url.URL, 0, len(ss))
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("parse %q: %w", s, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix" && u.Scheme != "unixs" {
			return nil, fmt.Errorf("url %q: unsupported scheme %q", s, u.Scheme)
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

// ClientURLs returns the URLs the member serves clients on.
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
