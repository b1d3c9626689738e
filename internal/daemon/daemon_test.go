package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/etcdembed"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/pki"
)

// tlsFixture: a server certificate (CA "srv"), a client CA and a client
// certificate from it, a client certificate of an unrelated CA, and a
// tokens file.
type tlsFixture struct {
	serverCert, serverKey, serverCA string
	clientCA                        string
	goodCert, goodKey               string
	badCert, badKey                 string
	tokens                          string
	token                           string
}

func newTLSFixture(t *testing.T) tlsFixture {
	t.Helper()
	dir := t.TempDir()
	mk := func(name string) *pki.CA {
		ca, err := pki.LoadOrCreateCA(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	issue := func(ca *pki.CA, name string, ips []net.IP) (string, string) {
		kp, err := ca.IssueHost(name, ips, nil)
		if err != nil {
			t.Fatal(err)
		}
		c, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := kp.WriteFiles(c, k); err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	srv, cli, other := mk("srvca"), mk("clica"), mk("otherca")
	f := tlsFixture{serverCA: srv.CertFile(), clientCA: cli.CertFile(), token: "s3cret-token-0123456789"}
	f.serverCert, f.serverKey = issue(srv, "server", []net.IP{net.ParseIP("127.0.0.1")})
	f.goodCert, f.goodKey = issue(cli, "alice", nil)
	f.badCert, f.badKey = issue(other, "mallory", nil)
	f.tokens = filepath.Join(dir, "tokens")
	if err := os.WriteFile(f.tokens, []byte("# API tokens\nci:"+f.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestTCPOnlyWithTLS: a half key pair is refused; with --tls-cert and
// --tls-key the API answers over TLS
// (not over plain HTTP) only to clients with a certificate of the client
// CA or a listed bearer token: everything else gets 401 with a JSON error.
// The unix socket is 0660 and needs no credentials.
func TestTCPOnlyWithTLS(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86): hangar serve cannot start")
	}
	ctx := context.Background()
	f := newTLSFixture(t)
	_, err := Start(ctx, Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", TLSCert: f.serverCert})
	if err == nil || !strings.Contains(err.Error(), "go together") {
		t.Fatalf("--tls-cert without --tls-key: err = %v", err)
	}
	loose := filepath.Join(t.TempDir(), "tokens")
	_ = os.WriteFile(loose, []byte(f.token+"\n"), 0o644)
	_, err = Start(ctx, Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", TLSCert: f.serverCert, TLSKey: f.serverKey, TokensFile: loose})
	if err == nil || !strings.Contains(err.Error(), "must not be readable by others") {
		t.Fatalf("world-readable tokens file: err = %v", err)
	}

	dir := t.TempDir()
	run, err := os.MkdirTemp("", "hgd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(run)
	d, err := Start(ctx, Config{DataDir: filepath.Join(dir, "data"), RunDir: run, Host: "tls", Listen: "127.0.0.1:0",
		TLSCert: f.serverCert, TLSKey: f.serverKey, ClientCA: f.clientCA, TokensFile: f.tokens, Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st, err := os.Stat(d.Socket)
	if err != nil || st.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, %v", st.Mode(), err)
	}
	if _, err := client.New(d.Socket).Hosts(ctx); err != nil {
		t.Fatalf("unix socket without credentials: %v", err)
	}
	url := "https://" + d.TCPAddr

	// No credentials, a wrong scheme, a bad token: 401 with a JSON body.
	roots := x509.NewCertPool()
	b, _ := os.ReadFile(f.serverCA)
	roots.AppendCertsFromPEM(b)
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}, Timeout: 10 * time.Second}
	for name, hdr := range map[string]string{"none": "", "bad token": "Bearer not-the-token-000000", "basic": "Basic YTpi"} {
		for _, method := range []string{"GET", "POST"} {
			req, _ := http.NewRequest(method, url+"/api/v1/vms", strings.NewReader(`{"name":"anon","memoryMiB":64}`))
			req.Header.Set("Content-Type", "application/json")
			if hdr != "" {
				req.Header.Set("Authorization", hdr)
			}
			resp, err := anon.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", name, method, err)
			}
			var er v1.ErrorResponse
			derr := json.NewDecoder(resp.Body).Decode(&er)
			resp.Body.Close()
			if resp.StatusCode != 401 || derr != nil || er.Error == nil || er.Error.Code != "unauthenticated" || er.Error.Message == "" ||
				resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("%s %s: %s, body %+v (%v), want 401 unauthenticated JSON", name, method, resp.Status, er.Error, derr)
			}
		}
	}
	if vms, err := client.New(d.Socket).VMs(ctx); err != nil || len(vms) != 0 {
		t.Fatalf("VMs after anonymous POSTs: %v %v", vms, err)
	}

	// A client certificate of another CA: refused in the handshake.
	bad, err := client.NewTLS(url, client.TLSOptions{CAFile: f.serverCA, CertFile: f.badCert, KeyFile: f.badKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Hosts(ctx); err == nil {
		t.Error("client certificate of an untrusted CA was accepted")
	} else {
		t.Logf("untrusted client certificate: %v", err)
	}
	badTok, _ := client.NewTLS(url, client.TLSOptions{CAFile: f.serverCA, Token: "wrong-token-0123456789"})
	if _, err := badTok.Hosts(ctx); err == nil {
		t.Error("bad token accepted")
	}

	// A good client certificate, a good token: 200.
	for name, o := range map[string]client.TLSOptions{
		"certificate": {CAFile: f.serverCA, CertFile: f.goodCert, KeyFile: f.goodKey},
		"token":       {CAFile: f.serverCA, Token: f.token},
	} {
		c, err := client.NewTLS(url, o)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := c.Hosts(ctx)
		if err != nil || len(hs) != 1 {
			t.Errorf("%s: hosts %v, %v", name, hs, err)
		}
		code, _, err := c.Raw(ctx, "GET", "/api/v1/hosts", nil)
		if err != nil || code != 200 {
			t.Errorf("%s: raw GET %d %v", name, code, err)
		}
	}

	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + d.TCPAddr + "/api/v1/hosts")
	if err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP answered on the TLS port")
	}
	if err == nil {
		resp.Body.Close()
	}
}

// TestListenerFromPoolCA: --listen alone serves the host certificate of the
// pool CA (its chain holds the CA; its SANs the listen IP), accepts client
// certificates of the pool CA and nothing else (no certificate: 401; a
// certificate of another CA: refused in the handshake), and the host facts
// publish the address and the etcd role.
func TestListenerFromPoolCA(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86): hangar serve cannot start")
	}
	ctx := context.Background()
	f := newTLSFixture(t)
	dir := t.TempDir()
	run, err := os.MkdirTemp("", "hgd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(run)
	data := filepath.Join(dir, "data")
	d, err := Start(ctx, Config{DataDir: data, RunDir: run, Host: "h1", Listen: "127.0.0.1:0", Accel: "tcg", VMUIDRange: "1879100000-1879100999"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ca, err := pki.OpenCA(filepath.Join(data, "pki"))
	if err != nil || !ca.HasKey() {
		t.Fatalf("pool CA: %v", err)
	}
	url := "https://" + d.TCPAddr

	// The chain: leaf for 127.0.0.1 issued by the pool CA, then the CA.
	conn, err := tls.Dial("tcp", d.TCPAddr, &tls.Config{RootCAs: ca.Pool()})
	if err != nil {
		t.Fatalf("TLS with the pool CA as root: %v", err)
	}
	chain := conn.ConnectionState().PeerCertificates
	conn.Close()
	if len(chain) != 2 || chain[1].Subject.CommonName != ca.Cert().Subject.CommonName || ca.FingerprintHex() == "" ||
		!chain[0].IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Fatalf("chain %d certificates: %v", len(chain), chain)
	}

	// No client certificate: 401; another CA's: refused.
	anon, _ := client.NewTLS(url, client.TLSOptions{CAFile: ca.CertFile()})
	if _, err := anon.Hosts(ctx); err == nil || !strings.Contains(err.Error(), "authentication required") {
		t.Errorf("without a pool certificate: %v", err)
	}
	bad, _ := client.NewTLS(url, client.TLSOptions{CAFile: ca.CertFile(), CertFile: f.badCert, KeyFile: f.badKey})
	if _, err := bad.Hosts(ctx); err == nil {
		t.Error("a client certificate of another CA was accepted")
	}
	// A client certificate of the pool CA (hangar pool credentials).
	cred, err := client.New(d.Socket).Credentials(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	cdir := filepath.Join(dir, "alice")
	if err := client.WriteCredentials(cdir, cred); err != nil {
		t.Fatal(err)
	}
	o, err := client.CredentialsOptions(cdir)
	if err != nil {
		t.Fatal(err)
	}
	good, err := client.NewTLS(url, o)
	if err != nil {
		t.Fatal(err)
	}
	var hosts []v1.Host
	for deadline := time.Now().Add(20 * time.Second); ; {
		hosts, err = good.Hosts(ctx)
		if err == nil && len(hosts) == 1 && hosts[0].Address != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hosts over TLS with pool credentials: %+v %v", hosts, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if hosts[0].Address != d.TCPAddr || hosts[0].Role != v1.RoleMember {
		t.Errorf("host facts address %q role %q, want %q member", hosts[0].Address, hosts[0].Role, d.TCPAddr)
	}
	p, err := good.PoolInfo(ctx)
	if err != nil || p.CAFingerprint != ca.FingerprintHex() || len(p.Members) != 1 || p.Members[0].Name != "h1" {
		t.Errorf("pool info %+v %v", p, err)
	}
	// The join route is open without a certificate, and refuses a bad token.
	code, body, err := anon.Raw(ctx, "POST", "/api/v1/pool/join", []byte(`{"token":"hgjoin1.nope","host":"h2","csr":"x","address":"127.0.0.2:8443"}`))
	if err != nil || code != 401 || !strings.Contains(string(body), "malformed") {
		t.Errorf("join with a bad token: %d %s %v", code, body, err)
	}
}

// TestExternalEtcd: --etcd-endpoints runs no embedded member (role
// external) on an etcd cluster the test started (TLS client URL, client
// certificate of its own CA); a second host joins it through the first
// with --etcd-endpoints too, gets the pool's CA and secrets key but not the
// CA key, and both see each other.
func TestExternalEtcd(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86): hangar serve cannot start")
	}
	ctx := context.Background()
	ecfg := etcdtest.Config(t, "ext")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "https://" + l.Addr().String()
	l.Close()
	ecfg.ClientURLs = []string{endpoint}
	m, err := etcdembed.Start(ctx, ecfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	etcdCA, err := pki.OpenCA(filepath.Dir(ecfg.TLS.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	kp, err := etcdCA.IssueHost("hangar", []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "etcd.crt"), filepath.Join(dir, "etcd.key")
	if err := kp.WriteFiles(cert, key); err != nil {
		t.Fatal(err)
	}
	freePort := func(ip string) string {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	ext := func(c Config) Config {
		c.EtcdEndpoints, c.EtcdCA, c.EtcdCert, c.EtcdKey, c.Accel = []string{endpoint}, ecfg.TLS.CAFile, cert, key, "tcg"
		return c
	}
	runDir := func() string {
		r, err := os.MkdirTemp("", "hgd")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(r) })
		return r
	}
	d1, err := Start(ctx, ext(Config{DataDir: filepath.Join(dir, "h1"), RunDir: runDir(), Host: "h1", Listen: "127.0.0.1:0", VMUIDRange: "1879101000-1879101999"}))
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	if d1.Role != v1.RoleExternal || d1.member != nil {
		t.Fatalf("role %s, member %v", d1.Role, d1.member)
	}
	if _, err := os.Stat(filepath.Join(dir, "h1", "etcd")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an embedded member's data dir with --etcd-endpoints: %v", err)
	}
	c1 := client.New(d1.Socket)
	tok, err := c1.JoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Joining without --etcd-endpoints is refused before anything is written.
	if _, err := Start(ctx, Config{DataDir: filepath.Join(dir, "bad"), RunDir: runDir(), Host: "h2", Listen: freePort("127.0.0.2"),
		Join: d1.TCPAddr, Token: tok.Token, EtcdPeerURL: "https://127.0.0.2:1", EtcdClientURL: "https://127.0.0.2:2", Accel: "tcg"}); err == nil ||
		!strings.Contains(err.Error(), "external etcd") {
		t.Fatalf("join of an external pool without --etcd-endpoints: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad", "pool.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused join left pool.json: %v", err)
	}
	d2, err := Start(ctx, ext(Config{DataDir: filepath.Join(dir, "h2"), RunDir: runDir(), Host: "h2", Listen: freePort("127.0.0.2"),
		Join: d1.TCPAddr, Token: tok.Token, VMUIDRange: "1879102000-1879102999"}))
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d2.Role != v1.RoleExternal {
		t.Errorf("joined role %s", d2.Role)
	}
	if _, err := os.Stat(filepath.Join(dir, "h2", "pki", "ca.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the joiner of an external pool got the CA key: %v", err)
	}
	k1, _ := os.ReadFile(filepath.Join(dir, "h1", "secrets.key"))
	k2, _ := os.ReadFile(filepath.Join(dir, "h2", "secrets.key"))
	if len(k1) != 32 || string(k1) != string(k2) {
		t.Errorf("secrets keys differ")
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		hs, err := client.New(d2.Socket).Hosts(ctx)
		if err == nil && len(hs) == 2 && hs[0].Role == v1.RoleExternal && hs[1].Role == v1.RoleExternal {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hosts seen by h2: %+v %v", hs, err)
		}
	}
	p, err := c1.PoolInfo(ctx)
	if err != nil || len(p.External) != 1 || p.External[0] != endpoint || len(p.Members) != 0 {
		t.Errorf("pool info %+v %v", p, err)
	}
}

// TestJoinRevertsAfterMemberAdd: a joiner whose etcd member cannot start
// (its peer port is taken) after the pool added it as a learner undoes the
// join: the learner and its host record are gone from the pool, nothing is
// left in its data dir, and a new token then joins it as a member.
func TestJoinRevertsAfterMemberAdd(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86): hangar serve cannot start")
	}
	ctx := context.Background()
	dir := t.TempDir()
	free := func(ip string) (string, net.Listener) {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		return l.Addr().String(), l
	}
	port := func(ip string) string {
		a, l := free(ip)
		l.Close()
		return a
	}
	runDir := func() string {
		r, err := os.MkdirTemp("", "hgd")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(r) })
		return r
	}
	d1, err := Start(ctx, Config{DataDir: filepath.Join(dir, "h1"), RunDir: runDir(), Host: "h1", Listen: port("127.0.0.1"),
		EtcdPeerURL: "https://" + port("127.0.0.1"), EtcdClientURL: "https://" + port("127.0.0.1"), Accel: "tcg", VMUIDRange: "1879103000-1879103999"})
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	c1 := client.New(d1.Socket)
	taken, hold := free("127.0.0.2")
	defer hold.Close()
	h2 := Config{DataDir: filepath.Join(dir, "h2"), RunDir: runDir(), Host: "h2", Listen: port("127.0.0.2"),
		EtcdPeerURL: "https://" + taken, EtcdClientURL: "https://" + port("127.0.0.2"), Accel: "tcg", VMUIDRange: "1879104000-1879104999"}
	tok, err := c1.JoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	h2.Join, h2.Token = d1.TCPAddr, tok.Token
	if _, err := Start(ctx, h2); err == nil {
		t.Fatal("a joiner whose etcd peer port is taken started")
	} else {
		t.Logf("join failed as it should: %v", err)
	}
	entries, _ := os.ReadDir(h2.DataDir)
	for _, e := range entries {
		t.Errorf("left in the joiner's data dir: %s", e.Name())
	}
	p, err := c1.PoolInfo(ctx)
	if err != nil || len(p.Members) != 1 {
		t.Fatalf("members after the failed join: %+v %v", p.Members, err)
	}
	if hs, err := c1.Hosts(ctx); err != nil || len(hs) != 1 {
		t.Fatalf("hosts after the failed join: %+v %v", hs, err)
	}
	hold.Close()
	tok, err = c1.JoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	h2.Token = tok.Token
	d2, err := Start(ctx, h2)
	if err != nil {
		t.Fatalf("join after the failed one: %v", err)
	}
	defer d2.Close()
	if p, err = c1.PoolInfo(ctx); err != nil || len(memberRoles(p)) != 2 || memberRoles(p)[1] != "h2=member" {
		t.Fatalf("members after the join: %+v %v", p.Members, err)
	}
}

func memberRoles(p v1.PoolInfo) []string {
	var out []string
	for _, m := range p.Members {
		out = append(out, m.Name+"="+m.Role)
	}
	slices.Sort(out)
	return out
}
