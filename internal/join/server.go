package join

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/pki"
	"hangar/internal/revert"
	"hangar/internal/secrets"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// MaxMembers is how many voting etcd members the pool grows to by joins;
// later hosts are etcd clients.
const MaxMembers = 3

// Member is one etcd member.
type Member struct {
	ID         uint64
	Name       string
	PeerURLs   []string
	ClientURLs []string
	Learner    bool
}

// Cluster is the part of etcd's cluster API that joins use.
type Cluster interface {
	Members(ctx context.Context) ([]Member, error)
	// AddLearner adds a non-voting member with peerURL and returns its id
	// and the members after the change.
	AddLearner(ctx context.Context, peerURL string) (uint64, []Member, error)
	Remove(ctx context.Context, id uint64) error
	Promote(ctx context.Context, id uint64) error
}

type etcdMember = etcdserverpb.Member

// EtcdCluster is Cluster on an etcd client.
type EtcdCluster struct{ C *clientv3.Client }

func members(ms []*etcdMember) []Member {
	out := make([]Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, Learner: m.IsLearner})
	}
	return out
}

// Members implements Cluster.
func (e EtcdCluster) Members(ctx context.Context) ([]Member, error) {
	resp, err := e.C.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd member list: %w", err)
	}
	return members(resp.Members), nil
}

// AddLearner implements Cluster.
func (e EtcdCluster) AddLearner(ctx context.Context, peerURL string) (uint64, []Member, error) {
	resp, err := e.C.MemberAddAsLearner(ctx, []string{peerURL})
	if err != nil {
		return 0, nil, fmt.Errorf("etcd add learner %s: %w", peerURL, err)
	}
	return resp.Member.ID, members(resp.Members), nil
}

// Remove implements Cluster.
func (e EtcdCluster) Remove(ctx context.Context, id uint64) error {
	if _, err := e.C.MemberRemove(ctx, id); err != nil {
		return fmt.Errorf("etcd remove member %x: %w", id, err)
	}
	return nil
}

// Promote implements Cluster.
func (e EtcdCluster) Promote(ctx context.Context, id uint64) error {
	if _, err := e.C.MemberPromote(ctx, id); err != nil {
		return fmt.Errorf("etcd promote member %x: %w", id, err)
	}
	return nil
}

// Server admits hosts: it issues tokens and answers joins. Any host can
// issue tokens; only a manager host (one with the CA key) answers joins.
type Server struct {
	Store store.Store
	CA    *pki.CA
	// SecretsKey is the key of internal/secrets, handed to every joiner.
	SecretsKey []byte
	// Cluster is the pool's etcd cluster; nil when the pool uses an
	// external etcd cluster (the joiner must be given its endpoints too).
	Cluster Cluster
	// External lists the endpoints of an external etcd cluster (shown by
	// PoolInfo).
	External []string
	// Host is this host's name.
	Host string
	Log  *slog.Logger
	Now  func() time.Time
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// IssueToken makes a join token valid for ttl (0: DefaultTTL).
func (s *Server) IssueToken(ctx context.Context, ttl time.Duration) (v1.JoinToken, error) {
	if ttl == 0 {
		ttl = DefaultTTL
	}
	t, rec, err := Issue(ctx, s.Store, s.CA.Fingerprint(), ttl, s.Host, s.now())
	if err != nil {
		return v1.JoinToken{}, err
	}
	s.log().Info("join token issued", "token", t.ID, "expires", rec.Expires)
	return v1.JoinToken{Token: t.String(), ID: t.ID, Expires: rec.Expires}, nil
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

func fieldErr(field, format string, args ...any) error {
	return &v1.Error{Code: v1.CodeInvalidArgument, Field: field, Message: field + ": " + fmt.Sprintf(format, args...)}
}

// tokenRefusal is the API error for a refused token.
func tokenRefusal(err error) error {
	return &v1.Error{Code: v1.CodeUnauthenticated, Field: "token", Message: err.Error()}
}

// parseHTTPSURL checks an etcd URL of the joiner: https, an IP host that
// the certificate names, a port.
func parseHTTPSURL(field, raw string, ips []net.IP) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Port() == "" || u.Path != "" || u.User != nil || u.RawQuery != "" {
		return "", fieldErr(field, "%q: want https://IP:PORT", raw)
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || !slices.ContainsFunc(ips, ip.Equal) {
		return "", fieldErr(field, "%q: the host must be one of the certificate's IP addresses %v", raw, ips)
	}
	if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
		return "", fieldErr(field, "%q: bad port", raw)
	}
	return u.String(), nil
}

// Join admits a host. Everything it changes is undone when it fails: the
// token is restored, the placeholder host record deleted and the learner
// removed. A refused token changes nothing.
func (s *Server) Join(ctx context.Context, req v1.JoinRequest) (v1.JoinAnswer, error) {
	tok, err := Parse(req.Token)
	if err != nil {
		return v1.JoinAnswer{}, tokenRefusal(err)
	}
	if !s.CA.HasKey() {
		return v1.JoinAnswer{}, errdefs.Precondition("host %s is not a manager host (it holds no CA key): join through one of the etcd members (hangar pool show)", s.Host)
	}
	if tok.CAFingerprint != s.CA.Fingerprint() {
		return v1.JoinAnswer{}, tokenRefusal(fmt.Errorf("join token is for another pool (CA fingerprint %s), this pool's CA is %s", tok.FingerprintHex(), s.CA.FingerprintHex()))
	}
	if err := vm.ValidateName("host", req.Host); err != nil {
		return v1.JoinAnswer{}, err
	}
	host, port, err := net.SplitHostPort(req.Address)
	listenIP := net.ParseIP(host)
	if err != nil || listenIP == nil || listenIP.IsUnspecified() || listenIP.IsMulticast() {
		return v1.JoinAnswer{}, fieldErr("address", "%q: want the joiner's --listen IP:PORT (a specific IP address)", req.Address)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return v1.JoinAnswer{}, fieldErr("address", "%q: bad port", req.Address)
	}
	csr, ips, dns, err := CheckHostCSR(req.CSR, req.Host, listenIP)
	if err != nil {
		return v1.JoinAnswer{}, err
	}
	// The token before anything about the pool is told.
	now := s.now()
	c, err := check(ctx, s.Store, tok, now)
	if err != nil {
		if TokenError(err) {
			s.log().Warn("join refused", "host", req.Host, "token", tok.ID, "err", err)
			return v1.JoinAnswer{}, tokenRefusal(err)
		}
		return v1.JoinAnswer{}, err
	}
	if err := s.nameFree(ctx, req.Host); err != nil {
		return v1.JoinAnswer{}, err
	}

	// Which role: a member while the cluster has fewer than MaxMembers.
	ans := v1.JoinAnswer{CACert: string(s.CA.CertPEM()), SecretsKey: base64.StdEncoding.EncodeToString(s.SecretsKey)}
	if pr, err := ReadPool(ctx, s.Store); err == nil {
		ans.Pool = pr.Name
	}
	var peerURL string
	var ms []Member
	switch {
	case s.Cluster == nil:
		if !req.External {
			return v1.JoinAnswer{}, errdefs.Precondition("the pool uses an external etcd cluster: start the joining host with --etcd-endpoints (and --etcd-ca, --etcd-cert, --etcd-key) too")
		}
		ans.Role = v1.RoleExternal
	case req.External:
		return v1.JoinAnswer{}, errdefs.Precondition("the pool runs its own etcd members; start the joining host without --etcd-endpoints")
	default:
		if ms, err = s.Cluster.Members(ctx); err != nil {
			return v1.JoinAnswer{}, err
		}
		for _, m := range ms {
			if m.Name == req.Host {
				return v1.JoinAnswer{}, &v1.Error{Code: v1.CodeConflict, Field: "host", Message: fmt.Sprintf("host: %q is already an etcd member of the pool", req.Host)}
			}
		}
		ans.Endpoints = votingClientURLs(ms)
		if len(ms) < MaxMembers && !req.ClientOnly {
			ans.Role = v1.RoleMember
			if peerURL, err = parseHTTPSURL("peerURL", req.PeerURL, ips); err != nil {
				return v1.JoinAnswer{}, err
			}
			if req.ClientURL != "" {
				if _, err = parseHTTPSURL("clientURL", req.ClientURL, ips); err != nil {
					return v1.JoinAnswer{}, err
				}
			}
		} else {
			ans.Role = v1.RoleClient
		}
		if len(ans.Endpoints) == 0 {
			return v1.JoinAnswer{}, errdefs.Precondition("the pool's etcd members serve no client URL other hosts can reach: start them with --listen IP:PORT (or --etcd-client-url)")
		}
	}

	cert, certPEM, err := s.CA.SignHost(csr, req.Host, ips, dns)
	if err != nil {
		return v1.JoinAnswer{}, err
	}
	ans.HostCert = string(certPEM)
	if ans.Role == v1.RoleMember {
		k, err := s.CA.KeyPEM()
		if err != nil {
			return v1.JoinAnswer{}, err
		}
		ans.CAKey = string(k)
	}

	rev := revert.New()
	defer rev.Fail()
	// One transaction: the token is used and the host's name taken, or
	// neither (a second join with the same token, or of the same name,
	// fails its condition).
	placeholder := v1.Host{Name: req.Host, Address: req.Address, Role: ans.Role, UpdatedAt: now.UTC()}
	if ans.Role == v1.RoleMember {
		placeholder.Role = v1.RoleLearner
	}
	pb, _ := json.Marshal(placeholder)
	crev, err := s.Store.Txn(ctx, []store.Cond{{Key: inventory.HostKey(req.Host), ExpectRev: store.MustNotExist}},
		c.consumeOp(req.Host, now), store.PutOp(inventory.HostInfoKey(req.Host), pb, store.MustNotExist))
	if errors.Is(err, store.ErrConflict) {
		if _, cerr := check(ctx, s.Store, tok, now); cerr != nil && TokenError(cerr) {
			return v1.JoinAnswer{}, tokenRefusal(cerr)
		}
		return v1.JoinAnswer{}, &v1.Error{Code: v1.CodeConflict, Field: "host", Message: fmt.Sprintf("host: %q is already in the pool", req.Host)}
	}
	if err != nil {
		return v1.JoinAnswer{}, fmt.Errorf("join %s: consume token: %w", req.Host, err)
	}
	rev.Add(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := s.Store.Txn(ctx, nil, c.restoreOp(crev), store.DeleteOp(inventory.HostInfoKey(req.Host), crev)); err != nil {
			s.log().Warn("join: restore token", "host", req.Host, "err", err)
		}
	})
	if ans.Role == v1.RoleMember {
		id, after, err := s.addLearner(ctx, peerURL)
		if err != nil && strings.Contains(err.Error(), "too many learner") {
			return v1.JoinAnswer{}, errdefs.Precondition("join %s: another host is still catching up as an etcd learner (or its join died half-way: hangar pool show lists it, hangar host remove takes it out); try again", req.Host)
		}
		if err != nil {
			return v1.JoinAnswer{}, errdefs.Precondition("join %s: add etcd learner: %v", req.Host, err)
		}
		ans.MemberID = strconv.FormatUint(id, 16)
		ans.InitialCluster = initialCluster(after, id, req.Host)
		s.log().Info("etcd learner added", "host", req.Host, "member", ans.MemberID, "peer", peerURL)
	}
	rev.Success()
	s.log().Info("host joined", "host", req.Host, "role", ans.Role, "address", req.Address, "serial", cert.SerialNumber.Text(16))
	return ans, nil
}

// unhealthyWait bounds how long a join waits for etcd to admit a new
// member: etcd refuses a member change ("unhealthy cluster") until every
// voting member has been connected for 5 s, e.g. right after the previous
// joiner was promoted, and admits one learner at a time ("too many
// learner members": another joiner is catching up).
const unhealthyWait = 30 * time.Second

func (s *Server) addLearner(ctx context.Context, peerURL string) (uint64, []Member, error) {
	deadline := time.Now().Add(unhealthyWait)
	for {
		id, after, err := s.Cluster.AddLearner(ctx, peerURL)
		// etcd derives a new member's id from its peer URLs and the time in
		// seconds: the same peer URL added again within the second after its
		// removal (a join retried right after a failed one) gets the removed
		// id, which etcd refuses as "member not found".
		retry := err != nil && (strings.Contains(err.Error(), "unhealthy cluster") || strings.Contains(err.Error(), "too many learner") ||
			strings.Contains(err.Error(), "member not found"))
		if !retry || time.Now().After(deadline) {
			return id, after, err
		}
		s.log().Debug("etcd not ready for another member yet", "peer", peerURL, "err", err)
		select {
		case <-ctx.Done():
			return 0, nil, err
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// nameFree refuses a host name already in the pool.
func (s *Server) nameFree(ctx context.Context, host string) error {
	for _, k := range []string{inventory.HostInfoKey(host), inventory.HostKey(host)} {
		_, err := s.Store.Get(ctx, k)
		if err == nil {
			return &v1.Error{Code: v1.CodeConflict, Field: "host", Message: fmt.Sprintf("host: %q is already in the pool (remove it first: hangar host remove %s)", host, host)}
		}
		if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("join: read %s: %w", k, err)
		}
	}
	return nil
}

// votingClientURLs are the client URLs of the voting members.
func votingClientURLs(ms []Member) []string {
	var out []string
	for _, m := range ms {
		if !m.Learner {
			out = append(out, m.ClientURLs...)
		}
	}
	return out
}

// initialCluster is etcd's --initial-cluster for new member id named name.
func initialCluster(ms []Member, id uint64, name string) string {
	var parts []string
	for _, m := range ms {
		n := m.Name
		if m.ID == id {
			n = name
		}
		if n == "" {
			continue // another member that has not started yet
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, n+"="+u)
		}
	}
	return strings.Join(parts, ",")
}

// Credentials issues a client certificate for a remote CLI.
func (s *Server) Credentials(name string) (v1.Credentials, error) {
	if err := vm.ValidateName("name", name); err != nil {
		return v1.Credentials{}, err
	}
	if !s.CA.HasKey() {
		return v1.Credentials{}, errdefs.Precondition("host %s is not a manager host (it holds no CA key): ask one of the etcd members (hangar pool show)", s.Host)
	}
	kp, err := s.CA.IssueClient(name)
	if err != nil {
		return v1.Credentials{}, err
	}
	s.log().Info("client certificate issued", "name", name, "serial", kp.Cert.SerialNumber.Text(16))
	return v1.Credentials{CACert: string(s.CA.CertPEM()), Cert: string(kp.CertPEM), Key: string(kp.KeyPEM)}, nil
}

// SecretsKeyOK checks a secrets key received in a join answer.
func SecretsKeyOK(b64 string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(k) != secrets.KeySize {
		return nil, fmt.Errorf("join answer: secrets key: want %d bytes of base64", secrets.KeySize)
	}
	return k, nil
}
