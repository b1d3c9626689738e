package join

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/inventory"
	"hangar/internal/pki"
	"hangar/internal/store"
)

// fakeCluster records membership changes; failAdd makes AddLearner fail.
type fakeCluster struct {
	mu      sync.Mutex
	members []Member
	failAdd bool
	nextID  uint64
}

func (f *fakeCluster) Members(context.Context) ([]Member, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Member(nil), f.members...), nil
}

func (f *fakeCluster) AddLearner(_ context.Context, peer string) (uint64, []Member, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failAdd {
		return 0, nil, errors.New("etcdserver: Peer URLs already exists")
	}
	f.nextID++
	f.members = append(f.members, Member{ID: f.nextID, PeerURLs: []string{peer}, Learner: true})
	return f.nextID, append([]Member(nil), f.members...), nil
}

func (f *fakeCluster) Remove(_ context.Context, id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, m := range f.members {
		if m.ID == id {
			f.members = append(f.members[:i], f.members[i+1:]...)
			return nil
		}
	}
	return errors.New("no such member")
}

func (f *fakeCluster) Promote(context.Context, uint64) error { return nil }

type fixture struct {
	st      store.Store
	ca      *pki.CA
	cluster *fakeCluster
	srv     *Server
	now     time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	m := etcdtest.Start(t)
	st := store.NewEtcd(m.Client())
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{st: st, ca: ca, now: time.Now(),
		cluster: &fakeCluster{nextID: 100, members: []Member{{ID: 1, Name: "h1", PeerURLs: []string{"https://10.0.0.1:2380"}, ClientURLs: []string{"https://10.0.0.1:2379"}}}}}
	f.srv = &Server{Store: st, CA: ca, SecretsKey: make([]byte, 32), Cluster: f.cluster, Host: "h1", Now: func() time.Time { return f.now }}
	if _, err := EnsurePool(t.Context(), st, ca, "h1"); err != nil {
		t.Fatal(err)
	}
	return f
}

// request builds a join request of host at ip with a fresh key.
func request(t *testing.T, host, ip string) (v1.JoinRequest, []byte) {
	t.Helper()
	key, csr, err := pki.NewHostRequest(host, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(ip)}, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	return v1.JoinRequest{Host: host, CSR: string(csr), Address: ip + ":8443", PeerURL: "https://" + ip + ":2380", ClientURL: "https://" + ip + ":2379"}, key
}

func (f *fixture) token(t *testing.T, ttl time.Duration) string {
	t.Helper()
	tok, err := f.srv.IssueToken(t.Context(), ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

// nothingBehind: no host record and the cluster as it was.
func (f *fixture) nothingBehind(t *testing.T, host string, members int) {
	t.Helper()
	for _, k := range []string{inventory.HostInfoKey(host), inventory.HostKey(host)} {
		if _, err := f.st.Get(t.Context(), k); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s after a refused join: %v", k, err)
		}
	}
	if ms, _ := f.cluster.Members(t.Context()); len(ms) != members {
		t.Errorf("%d etcd members after a refused join, want %d", len(ms), members)
	}
}

func apiErr(t *testing.T, err error, code, field, want string) {
	t.Helper()
	var ae *v1.Error
	if !errors.As(err, &ae) || ae.Code != code || ae.Field != field || !strings.Contains(ae.Message, want) {
		t.Fatalf("err = %v (%#v), want %s on %s containing %q", err, ae, code, field, want)
	}
}

func TestTokenRoundTripAndTamper(t *testing.T) {
	var fp [32]byte
	fp[0] = 7
	tok, err := NewToken(fp)
	if err != nil {
		t.Fatal(err)
	}
	s := tok.String()
	if strings.ContainsAny(s, " \n\t") || !strings.HasPrefix(s, tokenPrefix) {
		t.Fatalf("token %q is not one word", s)
	}
	back, err := Parse(" " + s + "\n")
	if err != nil || back.ID != tok.ID || back.CAFingerprint != fp || string(back.secret) != string(tok.secret) {
		t.Fatalf("parse: %+v %v", back, err)
	}
	if len(tok.secret) < 32 {
		t.Fatalf("secret of %d bytes", len(tok.secret))
	}
	// Every single changed character is caught by the check sum (or the
	// encoding), as are truncation and another prefix.
	body := s[len(tokenPrefix):]
	for i := range body {
		c := byte('A')
		if body[i] == 'A' {
			c = 'B'
		}
		bad := tokenPrefix + body[:i] + string(c) + body[i+1:]
		if _, err := Parse(bad); !errors.Is(err, ErrMalformed) {
			t.Fatalf("changed char %d: err = %v", i, err)
		}
	}
	for _, bad := range []string{"", s[:len(s)-1], "hgjoin2." + body, s + "A"} {
		if _, err := Parse(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) = %v, want ErrMalformed", bad, err)
		}
	}
}

func TestJoinMemberThenClient(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	for i, want := range []string{v1.RoleMember, v1.RoleMember, v1.RoleClient} {
		host, ip := []string{"h2", "h3", "h4"}[i], []string{"10.0.0.2", "10.0.0.3", "10.0.0.4"}[i]
		req, key := request(t, host, ip)
		tok, _ := Parse(f.token(t, time.Minute))
		req.Token = tok.String()
		ans, err := f.srv.Join(ctx, req)
		if err != nil {
			t.Fatalf("join %s: %v", host, err)
		}
		if ans.Role != want {
			t.Fatalf("%s: role %s, want %s", host, ans.Role, want)
		}
		if err := CheckAnswer(ans, tok, req, key); err != nil {
			t.Fatalf("%s: answer does not check: %v", host, err)
		}
		if (ans.CAKey != "") != (want == v1.RoleMember) {
			t.Errorf("%s: CA key handed to a %s", host, want)
		}
		if want == v1.RoleMember && !strings.Contains(ans.InitialCluster, "h1=https://10.0.0.1:2380") {
			t.Errorf("%s: initial cluster %q", host, ans.InitialCluster)
		}
		if len(ans.Endpoints) == 0 || ans.Endpoints[0] != "https://10.0.0.1:2379" {
			t.Errorf("%s: endpoints %v", host, ans.Endpoints)
		}
		cert, _ := pki.ParseCert([]byte(ans.HostCert))
		if !cert.IPAddresses[len(cert.IPAddresses)-1].Equal(net.ParseIP(ip)) || cert.Subject.CommonName != host {
			t.Errorf("%s: certificate for %s %v", host, cert.Subject.CommonName, cert.IPAddresses)
		}
		// The host name is taken now (placeholder record).
		if _, err := f.st.Get(ctx, inventory.HostInfoKey(host)); err != nil {
			t.Errorf("%s: no host record after the join: %v", host, err)
		}
		// Promote the learner as the joiner would.
		f.cluster.mu.Lock()
		for i := range f.cluster.members {
			f.cluster.members[i].Learner = false
			if f.cluster.members[i].Name == "" {
				f.cluster.members[i].Name = host
			}
		}
		f.cluster.mu.Unlock()
	}
	// The same name again: refused, token untouched.
	req, _ := request(t, "h3", "10.0.0.9")
	tokS := f.token(t, time.Minute)
	req.Token = tokS
	_, err := f.srv.Join(ctx, req)
	apiErr(t, err, v1.CodeConflict, "host", "already")
	req2, _ := request(t, "h9", "10.0.0.9")
	req2.Token = tokS
	if _, err := f.srv.Join(ctx, req2); err != nil {
		t.Fatalf("the token of a join refused for its name does not work any more: %v", err)
	}
}

func TestJoinRefusesTokens(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	req, _ := request(t, "h2", "10.0.0.2")

	// Reused: the first join consumed it.
	used := f.token(t, time.Minute)
	req.Token = used
	if _, err := f.srv.Join(ctx, req); err != nil {
		t.Fatal(err)
	}
	req3, _ := request(t, "h3", "10.0.0.3")
	req3.Token = used
	_, err := f.srv.Join(ctx, req3)
	apiErr(t, err, v1.CodeUnauthenticated, "token", "already used")
	f.nothingBehind(t, "h3", 2)

	// Expired.
	exp := f.token(t, time.Second)
	f.now = f.now.Add(2 * time.Second)
	req3.Token = exp
	_, err = f.srv.Join(ctx, req3)
	apiErr(t, err, v1.CodeUnauthenticated, "token", "expired")
	f.nothingBehind(t, "h3", 2)

	// Wrong secret: the id of a real token with another secret.
	good, _ := Parse(f.token(t, time.Minute))
	wrong := good
	wrong.secret = make([]byte, secretLen)
	req3.Token = wrong.String()
	_, err = f.srv.Join(ctx, req3)
	apiErr(t, err, v1.CodeUnauthenticated, "token", "secret is wrong")
	// Unknown id.
	unknown, _ := NewToken(f.ca.Fingerprint())
	req3.Token = unknown.String()
	_, err = f.srv.Join(ctx, req3)
	apiErr(t, err, v1.CodeUnauthenticated, "token", "no such token")
	// Another pool's fingerprint.
	other := good
	other.CAFingerprint[0] ^= 1
	req3.Token = other.String()
	_, err = f.srv.Join(ctx, req3)
	apiErr(t, err, v1.CodeUnauthenticated, "token", "another pool")
	// Tampered in transit: one character changed (to another: a token
	// whose 41st character is an x already was not tampered with, and
	// joined — CI, once in a few dozen runs).
	tampered := []byte(good.String())
	tampered[40] = map[bool]byte{true: 'y', false: 'x'}[tampered[40] == 'x']
	req3.Token = string(tampered)
	_, err = f.srv.Join(ctx, req3)
	apiErr(t, err, v1.CodeUnauthenticated, "token", "malformed")
	f.nothingBehind(t, "h3", 2)

	// The good token still works after all that.
	req3.Token = good.String()
	if _, err := f.srv.Join(ctx, req3); err != nil {
		t.Fatalf("good token after refusals: %v", err)
	}
}

// TestJoinRace: two joins with one token, at once: exactly one succeeds.
func TestJoinRace(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, time.Minute)
	errs := make(chan error, 2)
	for _, h := range []string{"h2", "h3"} {
		go func() {
			req, _ := request(t, h, map[string]string{"h2": "10.0.0.2", "h3": "10.0.0.3"}[h])
			req.Token = tok
			_, err := f.srv.Join(context.Background(), req)
			errs <- err
		}()
	}
	e1, e2 := <-errs, <-errs
	if (e1 == nil) == (e2 == nil) {
		t.Fatalf("two joins with one token: %v, %v; want exactly one to succeed", e1, e2)
	}
}

// TestJoinFailureRestores: a join that fails after the token was consumed
// (the learner cannot be added) leaves the token usable and no record.
func TestJoinFailureRestores(t *testing.T) {
	f := newFixture(t)
	f.cluster.failAdd = true
	req, _ := request(t, "h2", "10.0.0.2")
	req.Token = f.token(t, time.Minute)
	if _, err := f.srv.Join(t.Context(), req); err == nil || !strings.Contains(err.Error(), "learner") {
		t.Fatalf("join with a failing learner add: %v", err)
	}
	f.nothingBehind(t, "h2", 1)
	f.cluster.failAdd = false
	if _, err := f.srv.Join(t.Context(), req); err != nil {
		t.Fatalf("the token after a failed join: %v", err)
	}
}

func TestCheckHostCSR(t *testing.T) {
	ip := net.ParseIP("10.0.0.2")
	mk := func(tmpl *x509.CertificateRequest, key any) string {
		if key == nil {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			key = k
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	}
	good := mk(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "h2"}, DNSNames: []string{"h2", "localhost"}, IPAddresses: []net.IP{ip}}, nil)
	if _, ips, dns, err := CheckHostCSR(good, "h2", ip); err != nil || len(ips) != 1 || len(dns) != 1 {
		t.Fatalf("good CSR: %v %v %v", ips, dns, err)
	}
	// A signature over other content: flip a byte inside the signed part.
	blk, _ := pem.Decode([]byte(good))
	der := append([]byte(nil), blk.Bytes...)
	csr, _ := x509.ParseCertificateRequest(der)
	i := strings.Index(string(der), string(csr.RawSubject)) + len(csr.RawSubject) - 1
	der[i] ^= 0x01
	tampered := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	for name, c := range map[string]struct {
		csr, want string
	}{
		"not pem":      {"hello", "PEM"},
		"trailing":     {good + "junk", "after the PEM"},
		"tampered":     {tampered, ""},
		"other name":   {mk(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "h3"}, IPAddresses: []net.IP{ip}}, nil), "common name"},
		"foreign dns":  {mk(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "h2"}, DNSNames: []string{"www.bank.example"}, IPAddresses: []net.IP{ip}}, nil), "DNS name"},
		"no listen ip": {mk(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "h2"}, IPAddresses: []net.IP{net.ParseIP("10.0.0.3")}}, nil), "listen address"},
		"unspecified":  {mk(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "h2"}, IPAddresses: []net.IP{ip, net.IPv4zero}}, nil), "cannot be"},
		"email":        {mk(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "h2"}, EmailAddresses: []string{"a@b.c"}, IPAddresses: []net.IP{ip}}, nil), "e-mail"},
		"p224 key":     {mk(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "h2"}, IPAddresses: []net.IP{ip}}, mustKey(t, elliptic.P224())), "P-256"},
		"certificate":  {strings.Replace(good, "CERTIFICATE REQUEST", "CERTIFICATE", 2), "PEM"},
	} {
		_, _, _, err := CheckHostCSR(c.csr, "h2", ip)
		var ae *v1.Error
		if !errors.As(err, &ae) || ae.Field != "csr" || !strings.Contains(ae.Message, c.want) {
			t.Errorf("%s: err = %v, want a csr error containing %q", name, err, c.want)
		}
	}
}

func mustKey(t *testing.T, c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestTTLBounds(t *testing.T) {
	f := newFixture(t)
	for _, ttl := range []time.Duration{-time.Second, MaxTTL + time.Second} {
		_, err := f.srv.IssueToken(t.Context(), ttl)
		apiErr(t, err, v1.CodeInvalidArgument, "ttlSeconds", "between")
	}
	// The record holds a digest, not the secret.
	tok, _ := Parse(f.token(t, time.Minute))
	kv, err := f.st.Get(t.Context(), tokenKey(tok.ID))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(kv.Value), string(tok.secret)) || kv.Lease == 0 {
		t.Errorf("token record %s (lease %d): want a digest and a lease", kv.Value, kv.Lease)
	}
}

func TestInstallAndFresh(t *testing.T) {
	f := newFixture(t)
	req, key := request(t, "h2", "10.0.0.2")
	tok, _ := Parse(f.token(t, time.Minute))
	req.Token = tok.String()
	ans, err := f.srv.Join(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "data")
	if err := Fresh(dir); err != nil {
		t.Fatal(err)
	}
	undo, err := Install(dir, "10.0.0.1:8443", ans, key)
	if err != nil {
		t.Fatal(err)
	}
	st, err := LoadState(dir)
	if err != nil || st == nil || st.Role != v1.RoleMember || st.MemberID == "" {
		t.Fatalf("state %+v %v", st, err)
	}
	for _, p := range []string{"pki/ca.crt", "pki/ca.key", "pki/host.crt", "pki/host.key", "secrets.key", StateFile} {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", p, fi, err)
		}
	}
	if err := Fresh(dir); err == nil {
		t.Error("Fresh accepted a data dir that joined")
	}
	ca, err := pki.OpenCA(filepath.Join(dir, "pki"))
	if err != nil || !ca.HasKey() || ca.FingerprintHex() != f.ca.FingerprintHex() {
		t.Fatalf("installed CA: %v", err)
	}
	undo()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("undo left %s: %v", dir, err)
	}
}

// TestRemoveHost: refused for the answering host, a live host, a host with
// VMs placed on it and the only member; a host whose join died before its
// learner started (no name in etcd) goes with its learner, found by the
// address of its record.
func TestRemoveHost(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	req, _ := request(t, "h2", "10.0.0.2")
	req.Token = f.token(t, time.Minute)
	if _, err := f.srv.Join(ctx, req); err != nil {
		t.Fatal(err)
	}
	if ms, _ := f.cluster.Members(ctx); len(ms) != 2 || ms[1].Name != "" || !ms[1].Learner {
		t.Fatalf("members after the join %+v", ms)
	}
	prec := func(err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v, want %q", err, want)
		}
	}
	prec(f.srv.RemoveHost(ctx, "h1"), "cannot remove itself")
	if _, err := f.st.Put(ctx, inventory.HostKey("h2"), []byte("{}"), store.MustNotExist); err != nil {
		t.Fatal(err)
	}
	prec(f.srv.RemoveHost(ctx, "h2"), "is alive")
	if err := f.srv.CheckRemove(ctx, "h2"); err != nil { // evacuation may go first
		t.Fatalf("check removal of live h2: %v", err)
	}
	prec(f.srv.CheckRemove(ctx, "h1"), "cannot remove itself")
	_ = f.st.Delete(ctx, inventory.HostKey("h2"), store.AnyRevision)
	spec := v1.VMSpec{Name: "web", MemoryMiB: 64, Host: "h2"}
	if _, err := f.st.Put(ctx, inventory.VMKey("web"), inventory.Marshal(spec), store.MustNotExist); err != nil {
		t.Fatal(err)
	}
	prec(f.srv.RemoveHost(ctx, "h2"), "web")
	_ = f.st.Delete(ctx, inventory.VMKey("web"), store.AnyRevision)
	if err := f.srv.RemoveHost(ctx, "h2"); err != nil {
		t.Fatal(err)
	}
	if ms, _ := f.cluster.Members(ctx); len(ms) != 1 {
		t.Errorf("the learner of the removed host is still a member: %+v", ms)
	}
	f.nothingBehind(t, "h2", 1)
	var nf error = f.srv.RemoveHost(ctx, "h2")
	prec(nf, "not found")
	// The only voting member, asked through another host.
	other := *f.srv
	other.Host = "h9"
	if _, err := f.st.Put(ctx, inventory.HostInfoKey("h1"), []byte(`{"name":"h1"}`), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	prec(other.RemoveHost(ctx, "h1"), "only etcd member")
}

// TestJoinClientOnly: a host that is not manager-capable becomes an etcd
// client (without the CA key) even while the cluster has room.
func TestJoinClientOnly(t *testing.T) {
	f := newFixture(t)
	req, key := request(t, "h2", "10.0.0.2")
	req.ClientOnly, req.PeerURL, req.ClientURL = true, "", ""
	tok, _ := Parse(f.token(t, time.Minute))
	req.Token = tok.String()
	ans, err := f.srv.Join(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if ans.Role != v1.RoleClient || ans.CAKey != "" || ans.MemberID != "" {
		t.Fatalf("answer role %s key %t member %q", ans.Role, ans.CAKey != "", ans.MemberID)
	}
	if err := CheckAnswer(ans, tok, req, key); err != nil {
		t.Fatal(err)
	}
	if ms, _ := f.cluster.Members(t.Context()); len(ms) != 1 {
		t.Errorf("members %+v", ms)
	}
}
