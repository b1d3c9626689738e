package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	v1 "hangar/api/v1"
	"hangar/internal/etcdembed"
	"hangar/internal/inventory"
	"hangar/internal/join"
	"hangar/internal/pki"
	"hangar/internal/revert"
)

// Default etcd ports on a host's --listen IP.
const (
	etcdPeerPort   = 2380
	etcdClientPort = 2379
	// promoteTimeout bounds how long a joining member waits to catch up
	// with the leader and become a voting member.
	promoteTimeout = 2 * time.Minute
)

// checkFlags checks the flags that go together and fills in the etcd URLs
// derived from --listen. It returns the --listen IP (nil without one, or
// for an unspecified address).
func checkFlags(cfg *Config) (net.IP, error) {
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if cfg.Listen == "" && (cfg.TLSCert != "" || cfg.ClientCA != "" || cfg.TokensFile != "") {
		return nil, errors.New("--tls-cert, --client-ca and --tokens-file are for --listen: give --listen too")
	}
	var ip net.IP
	if cfg.Listen != "" {
		h, p, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: want IP:PORT: %w", cfg.Listen, err)
		}
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return nil, fmt.Errorf("--listen %q: bad port", cfg.Listen)
		}
		if h != "" {
			if ip = net.ParseIP(h); ip == nil {
				return nil, fmt.Errorf("--listen %q: want an IP address (the host certificate names it)", cfg.Listen)
			}
			if ip.IsUnspecified() {
				ip = nil
			}
		}
	}
	if (cfg.Join == "") != (cfg.Token == "") {
		return nil, errors.New("--join and --token go together: --join HOST:PORT of a pool host, --token from `hangar pool join-token` there")
	}
	external := len(cfg.EtcdEndpoints) > 0
	if external {
		if cfg.EtcdPeerURL != "" || cfg.EtcdClientURL != "" {
			return nil, errors.New("--etcd-endpoints uses an external etcd cluster: --etcd-peer-url and --etcd-client-url are for the embedded member")
		}
		if (cfg.EtcdCert == "") != (cfg.EtcdKey == "") {
			return nil, errors.New("--etcd-cert and --etcd-key go together")
		}
		for _, e := range cfg.EtcdEndpoints {
			u, err := url.Parse(e)
			if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				return nil, fmt.Errorf("--etcd-endpoints: %q: want https://HOST:PORT", e)
			}
		}
	} else if cfg.EtcdCA != "" || cfg.EtcdCert != "" || cfg.EtcdKey != "" {
		return nil, errors.New("--etcd-ca, --etcd-cert and --etcd-key are for --etcd-endpoints")
	}
	if cfg.Join != "" && (ip == nil || strings.HasSuffix(cfg.Listen, ":0")) {
		return nil, errors.New("--join needs --listen IP:PORT with this host's IP address and a port: the pool reaches the host there and its certificate names it")
	}
	if !external && ip != nil && !ip.IsLoopback() {
		if cfg.EtcdPeerURL == "" {
			cfg.EtcdPeerURL = "https://" + net.JoinHostPort(ip.String(), strconv.Itoa(etcdPeerPort))
		}
		if cfg.EtcdClientURL == "" {
			cfg.EtcdClientURL = "https://" + net.JoinHostPort(ip.String(), strconv.Itoa(etcdClientPort))
		}
	}
	if cfg.Join != "" && !external && !cfg.NotManager && (cfg.EtcdPeerURL == "" || cfg.EtcdClientURL == "") {
		return nil, errors.New("--join with a loopback --listen needs --etcd-peer-url and --etcd-client-url (the pool may make this host an etcd member)")
	}
	return ip, nil
}

// hostAddrs are the IP addresses and extra DNS names of the host
// certificate: loopback, the --listen IP and the hosts of the etcd URLs.
func hostAddrs(cfg Config, listenIP net.IP) ([]net.IP, []string, error) {
	ips := []net.IP{net.IPv4(127, 0, 0, 1).To4(), net.IPv6loopback}
	dns := []string{"localhost"}
	add := func(ip net.IP) {
		if !ip.IsUnspecified() && !slices.ContainsFunc(ips, ip.Equal) {
			ips = append(ips, ip)
		}
	}
	if listenIP != nil {
		add(listenIP)
	}
	for _, raw := range []string{cfg.EtcdPeerURL, cfg.EtcdClientURL} {
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("etcd url %q: %w", raw, err)
		}
		if ip := net.ParseIP(u.Hostname()); ip != nil {
			add(ip)
		} else if u.Hostname() != "" && !slices.Contains(dns, u.Hostname()) {
			dns = append(dns, u.Hostname())
		}
	}
	return ips, dns, nil
}

// hostIdentity loads the pool CA in DataDir/pki — creating it on the
// first host of a pool — and makes sure this host has a certificate from it
// covering its addresses (re-issued where the CA key is here).
func hostIdentity(cfg Config, listenIP net.IP, first bool) (*pki.CA, etcdembed.TLSFiles, error) {
	dir := filepath.Join(cfg.DataDir, "pki")
	var ca *pki.CA
	var err error
	if first {
		ca, err = pki.LoadOrCreateCA(dir)
	} else {
		ca, err = pki.OpenCA(dir)
	}
	if err != nil {
		return nil, etcdembed.TLSFiles{}, err
	}
	ips, dns, err := hostAddrs(cfg, listenIP)
	if err != nil {
		return nil, etcdembed.TLSFiles{}, err
	}
	f := etcdembed.TLSFiles{CertFile: join.HostCertFile(cfg.DataDir), KeyFile: join.HostKeyFile(cfg.DataDir), CAFile: ca.CertFile()}
	if _, err := ca.EnsureHost(f.CertFile, f.KeyFile, cfg.Host, ips, dns); err != nil {
		return nil, etcdembed.TLSFiles{}, err
	}
	return ca, f, nil
}

// hostClientTLS is the TLS configuration with which this host reaches the
// pool's etcd members: its host certificate, and only the pool CA trusted.
func hostClientTLS(host *pki.KeyPair, ca *pki.CA) *tls.Config {
	cert, err := host.TLSCertificate()
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool()}
	if err == nil {
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc
}

// externalTLS is the TLS configuration for an external etcd cluster.
func externalTLS(cfg Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.EtcdCA != "" {
		b, err := os.ReadFile(cfg.EtcdCA)
		if err != nil {
			return nil, fmt.Errorf("--etcd-ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--etcd-ca %s: no PEM certificates", cfg.EtcdCA)
		}
	}
	if cfg.EtcdCert != "" {
		c, err := tls.LoadX509KeyPair(cfg.EtcdCert, cfg.EtcdKey)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	for _, e := range cfg.EtcdEndpoints {
		if strings.HasPrefix(e, "http://") {
			return nil, nil // a plain-HTTP cluster (tests, a local proxy)
		}
	}
	return tc, nil
}

// joinPool joins the pool at cfg.Join: nothing is written until the pool's
// answer is complete and checked; then the files are written, and rev
// removes them (and the etcd learner, and the host's placeholder record)
// if the start fails later.
func joinPool(ctx context.Context, cfg Config, listenIP net.IP, external bool, rev *revert.Reverter) (*join.State, error) {
	tok, err := join.Parse(cfg.Token)
	if err != nil {
		return nil, fmt.Errorf("--token: %w", err)
	}
	if err := join.Fresh(cfg.DataDir); err != nil {
		return nil, err
	}
	ips, dns, err := hostAddrs(cfg, listenIP)
	if err != nil {
		return nil, err
	}
	keyPEM, csrPEM, err := pki.NewHostRequest(cfg.Host, ips, dns)
	if err != nil {
		return nil, err
	}
	req := v1.JoinRequest{Host: cfg.Host, CSR: string(csrPEM), Address: cfg.Listen, PeerURL: cfg.EtcdPeerURL,
		ClientURL: cfg.EtcdClientURL, External: external, ClientOnly: cfg.NotManager}
	if req.PeerURL != "" {
		u, _ := url.Parse(req.PeerURL)
		req.PeerURL = u.String()
	}
	cfg.Log.Info("joining the pool", "via", cfg.Join, "host", cfg.Host, "token", tok.ID)
	ans, err := join.Request(ctx, cfg.Join, tok, req, keyPEM)
	if err != nil {
		return nil, err
	}
	// The answer is complete: from here on, a failure undoes the join.
	rev.Add(func() { forget(cfg, ans, keyPEM) })
	undo, err := join.Install(cfg.DataDir, cfg.Join, ans, keyPEM)
	if err != nil {
		return nil, err
	}
	rev.Add(undo)
	rev.Add(func() { _ = os.RemoveAll(filepath.Join(cfg.DataDir, "etcd")) })
	cfg.Log.Info("joined the pool", "pool", ans.Pool, "role", ans.Role, "member", ans.MemberID)
	return join.LoadState(cfg.DataDir)
}

// forget undoes the pool's side of a join whose start failed: the learner
// is removed and the placeholder host record deleted (through the members,
// with the new host certificate).
func forget(cfg Config, ans v1.JoinAnswer, keyPEM []byte) {
	if len(ans.Endpoints) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := poolClient(ctx, ans.Endpoints, []byte(ans.HostCert), keyPEM, []byte(ans.CACert))
	if err != nil {
		cfg.Log.Warn("join failed and the pool cannot be told: remove the host with `hangar host remove`", "host", cfg.Host, "err", err)
		return
	}
	defer c.Close()
	if ans.MemberID != "" {
		id, _ := strconv.ParseUint(ans.MemberID, 16, 64)
		if _, err := c.MemberRemove(ctx, id); err != nil {
			cfg.Log.Warn("join failed: remove etcd learner", "member", ans.MemberID, "err", err)
		} else {
			cfg.Log.Info("join failed: etcd learner removed", "member", ans.MemberID)
		}
	}
	if _, err := c.Delete(ctx, inventory.HostInfoKey(cfg.Host)); err != nil {
		cfg.Log.Warn("join failed: delete host record", "err", err)
	}
}

// poolClient is an etcd client of the pool's members, authenticated with
// a host certificate.
func poolClient(ctx context.Context, endpoints []string, certPEM, keyPEM, caPEM []byte) (*clientv3.Client, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	return clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Context: context.WithoutCancel(ctx),
		TLS: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, Certificates: []tls.Certificate{cert}}, Logger: zap.NewNop()})
}

// startMember starts the embedded etcd member. A member that joined starts
// its first time with the initial cluster of its join ("existing") and
// promotes itself from learner to voting member once it caught up.
func startMember(ctx context.Context, cfg Config, state *join.State, files etcdembed.TLSFiles, host *pki.KeyPair, ca *pki.CA) (*etcdembed.Member, error) {
	ecfg := etcdembed.Config{Name: cfg.Host, DataDir: filepath.Join(cfg.DataDir, "etcd"), Logger: cfg.Log,
		ClientSocket: EtcdSocket(cfg.RunDir), TLS: files}
	if cfg.EtcdClientURL != "" {
		ecfg.ClientURLs = []string{cfg.EtcdClientURL}
	}
	if cfg.EtcdPeerURL != "" {
		ecfg.PeerURLs = []string{cfg.EtcdPeerURL}
	}
	_, err := os.Stat(ecfg.DataDir)
	fresh := errors.Is(err, fs.ErrNotExist)
	if state.InitialCluster != "" && fresh {
		ecfg.InitialCluster, ecfg.ClusterState = state.InitialCluster, "existing"
	}
	start := time.Now()
	m, err := etcdembed.Start(ctx, ecfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	cfg.Log.Debug("etcd ready", "socket", m.ClientSocket(), "dur", time.Since(start))
	if state.MemberID != "" {
		endpoints := state.Endpoints
		if !fresh {
			// A restart: still a learner (killed before its promotion)?
			// Then through the members it knows now.
			endpoints = stillLearner(ctx, m.Client(), state.MemberID)
		}
		if len(endpoints) > 0 {
			err := promote(ctx, cfg, state.MemberID, endpoints, host, ca)
			if err == nil {
				err = votingLocally(ctx, m.Client(), state.MemberID)
			}
			if err != nil {
				_ = m.Close()
				return nil, err
			}
		}
	} else if len(ecfg.PeerURLs) > 0 {
		advertise(ctx, cfg, m.Client(), ecfg.PeerURLs)
	}
	return m, nil
}

// promote makes this joined member a voting member: etcd refuses until
// the learner has caught up with the leader, so it retries.
func promote(ctx context.Context, cfg Config, memberID string, endpoints []string, host *pki.KeyPair, ca *pki.CA) error {
	id, err := strconv.ParseUint(memberID, 16, 64)
	if err != nil {
		return fmt.Errorf("pool state: member id %q", memberID)
	}
	ctx, cancel := context.WithTimeout(ctx, promoteTimeout)
	defer cancel()
	c, err := poolClient(ctx, endpoints, host.CertPEM, host.KeyPEM, ca.CertPEM())
	if err != nil {
		return fmt.Errorf("promote etcd member: %w", err)
	}
	defer c.Close()
	for {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.MemberPromote(rctx, id)
		rcancel()
		if err == nil {
			cfg.Log.Info("etcd learner promoted to voting member", "member", memberID)
			return nil
		}
		if strings.Contains(err.Error(), "not a learner") {
			return nil // promoted already (a restart)
		}
		cfg.Log.Debug("etcd learner not promoted yet", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd member %s did not catch up with the leader within %s: %w", memberID, promoteTimeout, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// votingLocally waits until this member has applied its own promotion
// (until then it refuses reads and writes as a learner).
func votingLocally(ctx context.Context, c *clientv3.Client, memberID string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if stillLearner(ctx, c, memberID) == nil {
			if _, err := c.Get(ctx, inventory.PoolRecord); err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd member %s: promoted, but still a learner locally: %w", memberID, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stillLearner returns the voting members' client URLs when the member
// memberID is still a learner (as this member's own list says), else nil.
func stillLearner(ctx context.Context, c *clientv3.Client, memberID string) []string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		return nil
	}
	var learner bool
	var urls []string
	for _, m := range resp.Members {
		if strconv.FormatUint(m.ID, 16) == memberID {
			learner = m.IsLearner
		} else if !m.IsLearner {
			urls = append(urls, m.ClientURLs...)
		}
	}
	if !learner {
		return nil
	}
	return urls
}

// advertise updates this member's peer URLs in the cluster when they
// changed (a host that was started without --listen before): joiners get
// the URLs from the member list.
func advertise(ctx context.Context, cfg Config, c *clientv3.Client, peerURLs []string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.MemberList(ctx)
	if err != nil {
		cfg.Log.Warn("etcd member list", "err", err)
		return
	}
	for _, m := range resp.Members {
		if m.Name == cfg.Host && !slices.Equal(m.PeerURLs, peerURLs) {
			if _, err := c.MemberUpdate(ctx, m.ID, peerURLs); err != nil {
				cfg.Log.Warn("etcd: update peer URLs", "from", m.PeerURLs, "to", peerURLs, "err", err)
			} else {
				cfg.Log.Info("etcd: peer URLs updated", "from", m.PeerURLs, "to", peerURLs)
			}
		}
	}
}

// nextCert parses the next PEM certificate of b; nil at the end.
func nextCert(b []byte) (*x509.Certificate, []byte, error) {
	for {
		blk, rest := pem.Decode(b)
		if blk == nil {
			return nil, nil, nil
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			return c, rest, err
		}
		b = rest
	}
}

// refreshEndpoints keeps a client host's pool.json naming the voting
// members it reaches now, so that a restart finds them even after the
// members it joined through were replaced.
func refreshEndpoints(ctx context.Context, cfg Config, state *join.State, c join.Cluster) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ms, err := c.Members(ctx)
	if err != nil {
		cfg.Log.Warn("etcd member list", "err", err)
		return
	}
	var urls []string
	for _, m := range ms {
		if !m.Learner {
			urls = append(urls, m.ClientURLs...)
		}
	}
	slices.Sort(urls)
	old := slices.Sorted(slices.Values(state.Endpoints))
	if len(urls) == 0 || slices.Equal(urls, old) {
		return
	}
	state.Endpoints = urls
	if err := join.WriteState(cfg.DataDir, *state); err != nil {
		cfg.Log.Warn("pool state: endpoints", "err", err)
		return
	}
	cfg.Log.Info("etcd endpoints updated", "from", old, "to", urls)
}
