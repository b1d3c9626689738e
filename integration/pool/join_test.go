package pool_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/netlab"
	"hangar/internal/pki"
)

// TestJoin runs a pool of its own (three hosts in their own lab, so the
// shared pool keeps its shape): the three hosts are the etcd members; a
// fourth host is refused with a wrong, an expired and a damaged token —
// each refusal leaving nothing behind, on the joiner or in the pool — then
// joins as an etcd client, and its token is refused when used again; a VM
// parked when h3 was evacuated (no room elsewhere) starts on h4 by itself. A
// host without a pool certificate can talk neither to an agent's TLS API
// nor to etcd. With one of the three members killed, the pool still reads
// and writes (a VM create succeeds); the member comes back with the flags
// it was first started with (no second join), and a stopped host is
// removed from the pool.
func TestJoin(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p, err := startPool(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.close(); err != nil {
			t.Errorf("close the join test's pool: %v", err)
		}
	})
	if !p.Joined {
		t.Fatal("hangar serve has no --join")
	}
	h1 := p.Hosts[0]

	// Three members, each host publishing its address and role.
	info := poolInfo(t, p, "h1")
	if names := memberNames(info, v1.RoleMember); !slices.Equal(names, []string{"h1", "h2", "h3"}) {
		t.Fatalf("etcd members %+v, want h1 h2 h3 voting", info.Members)
	}
	hosts := waitHosts(t, p, "h1", func(hs []v1.Host) bool { return len(hs) == 3 })
	for _, h := range hosts {
		if h.Role != v1.RoleMember || h.Address != listenAddr(p.Host(t, h.Name)) {
			t.Errorf("host %s: role %q address %q", h.Name, h.Role, h.Address)
		}
	}

	// Refused tokens, each leaving nothing behind.
	h4, err := p.Lab.AddHost(ctx, "h4")
	if err != nil {
		t.Fatal(err)
	}
	p.Hosts = append(p.Hosts, h4) // stopped and removed with the pool
	good, err := p.JoinToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	expiring := strings.TrimSpace(lastLine(p.CLI(t, "h1", "pool", "join-token", "--ttl", "1s")))
	time.Sleep(1500 * time.Millisecond)
	join4 := func(h *netlab.Host, token string) error {
		_, err := h.Serve(ctx, p.serveConfig(h, p.Lab.UIDRange(0), "--listen", listenAddr(h), "--join", listenAddr(h1), "--token", token))
		return err
	}
	for _, c := range []struct{ name, token, want string }{
		{"wrong secret", otherSecret(t, good), "its secret is wrong"},
		{"expired", expiring, "join token has expired"},
		{"damaged", good[:30] + flip(good[30]) + good[31:], "malformed or damaged"},
	} {
		err := join4(h4, c.token)
		if err == nil || !strings.Contains(h4.LogTail(4000), c.want) {
			t.Fatalf("%s token: serve %v, want a refusal saying %q:\n%s", c.name, err, c.want, h4.LogTail(2000))
		}
		t.Logf("%s token refused: %s", c.name, lastLine(strings.TrimSpace(h4.LogTail(600))))
		for _, f := range []string{"pki", "secrets.key", "pool.json", "etcd"} {
			if _, err := os.Lstat(filepath.Join(h4.DataDir, f)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s token: %s left on the joiner (%v)", c.name, f, err)
			}
		}
		if hs, _ := h1.Client().Hosts(ctx); len(hs) != 3 {
			t.Errorf("%s token: the pool lists %d hosts", c.name, len(hs))
		}
		if got := poolInfo(t, p, "h1"); len(got.Members) != 3 {
			t.Errorf("%s token: %d etcd members", c.name, len(got.Members))
		}
	}

	// Evacuating h3 with no room elsewhere parks its VM (anti-affinity):
	// when h4 joins, capacity is back and the VM starts there by itself.
	parked := parkOnEvacuation(ctx, t, p, "jpark", "jparked")

	// The good token: h4 joins, as an etcd client (three members already).
	if err := join4(h4, good); err != nil {
		t.Fatal(err)
	}
	if st := readState(t, h4); st.Role != v1.RoleClient || len(st.Endpoints) != 3 {
		t.Errorf("h4 pool.json %+v, want role client with the 3 members' endpoints", st)
	}
	if _, err := os.Lstat(filepath.Join(h4.DataDir, "pki", "ca.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a client host got the CA key: %v", err)
	}
	// Used again (by h5): refused.
	h5, err := p.Lab.AddHost(ctx, "h5")
	if err != nil {
		t.Fatal(err)
	}
	p.Hosts = append(p.Hosts, h5)
	if err := join4(h5, good); err == nil || !strings.Contains(h5.LogTail(4000), `already used`) || !strings.Contains(h5.LogTail(4000), `"h4"`) {
		t.Fatalf("reused token: %v\n%s", err, h5.LogTail(2000))
	}
	waitHosts(t, p, "h1", func(hs []v1.Host) bool { return len(hs) == 4 })
	if v := p.WaitVM(t, "h1", "jparked", "h4", 4*time.Minute, v1.StateRunning); v.Spec.Parked {
		t.Errorf("still parked while running on %s", v.Spec.Host)
	}
	if bootID, _ := p.WaitReady(t, "h4", "jparked", 0); bootID == "" || bootID == parked.BootID {
		t.Errorf("boot id %q on h4 after the join (it was %q on h3)", bootID, parked.BootID)
	}
	if _, err := p.CLIErr(t, "h1", "host", "maintenance", "h3", "--off"); err != nil {
		t.Fatal(err)
	}

	// A host without a pool certificate (the client namespace) is refused
	// by an agent's TLS API and by etcd; h4's own certificate passes both.
	ca, err := pki.OpenCA(filepath.Join(h1.DataDir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	stranger := strangerCert(t)
	h4cert, err := tls.LoadX509KeyPair(filepath.Join(h4.DataDir, "pki", "host.crt"), filepath.Join(h4.DataDir, "pki", "host.key"))
	if err != nil {
		t.Fatal(err)
	}
	api := "https://" + listenAddr(h1) + "/api/v1/hosts"
	etcd := netip.AddrPortFrom(h1.IP, 2379).String()
	for _, c := range []struct {
		name string
		d    *netlab.Dialer
		cert []tls.Certificate
		ok   bool
	}{
		{"no certificate", p.Client.Dialer(), nil, false},
		{"another CA's certificate", p.Client.Dialer(), []tls.Certificate{stranger}, false},
		{"h4's host certificate", h4.Dialer(), []tls.Certificate{h4cert}, true},
	} {
		tc := &tls.Config{RootCAs: ca.Pool(), Certificates: c.cert, MinVersion: tls.VersionTLS12}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: c.d.DialContext, TLSClientConfig: tc}}
		resp, err := hc.Get(api)
		status := 0
		if err == nil {
			status = resp.StatusCode
			resp.Body.Close()
		}
		if (status == 200) != c.ok || (!c.ok && err == nil && status != 401) {
			t.Errorf("%s: agent API %s: status %d, %v", c.name, api, status, err)
		}
		err = etcdTalk(ctx, c.d, etcd, tc)
		if (err == nil) != c.ok {
			t.Errorf("%s: etcd %s: %v", c.name, etcd, err)
		}
		t.Logf("%s: API %d, etcd %v", c.name, status, err)
	}

	// A remote CLI in the client namespace with credentials from a manager
	// host: --server/--credentials, and HANGAR_SERVER/HANGAR_CREDENTIALS.
	creds := filepath.Join(t.TempDir(), "alice")
	if out := p.CLI(t, "h2", "pool", "credentials", "--name", "alice", "--out", creds); !strings.Contains(out, "alice") {
		t.Errorf("pool credentials: %s", out)
	}
	for _, f := range []string{"ca.crt", "client.crt", "client.key"} {
		if fi, err := os.Stat(filepath.Join(creds, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("credentials %s: %v %v", f, fi, err)
		}
	}
	server := "https://" + listenAddr(p.Host(t, "h3"))
	for _, argv := range [][]string{
		{hangarBin, "--server", server, "--credentials", creds, "host", "list", "-o", "json"},
		{"env", "HANGAR_SERVER=" + server, "HANGAR_CREDENTIALS=" + creds, hangarBin, "host", "list", "-o", "json"},
	} {
		out, err := p.Client.Exec(ctx, argv...)
		if err != nil || !strings.Contains(string(out), `"h4"`) {
			t.Errorf("remote CLI %v: %v\n%s", argv[1:], err, out)
		}
	}
	if out, err := p.Client.Exec(ctx, "env", "HANGAR_CA="+filepath.Join(creds, "ca.crt"), hangarBin, "--server", server, "host", "list"); err == nil || !strings.Contains(string(out), "authentication required") {
		t.Errorf("remote CLI without credentials: %v\n%s", err, out)
	}

	// One of three members lost: reads and writes go on.
	p.PowerLoss(t, "h3")
	c := h1.Client()
	spec := v1.VMSpec{Name: "quorum", CPUs: 1, MemoryMiB: 64, Disks: []v1.Disk{{SizeMiB: 16}}}
	OnHost("h1")(&spec)
	op, err := c.CreateVM(ctx, spec, false, time.Minute)
	if err == nil {
		op, err = c.Wait(ctx, op, nil)
	}
	if err != nil || op.State != v1.OpSucceeded {
		t.Fatalf("create with h3 down: %+v %v\n%s", op, err, h1.LogTail(3000))
	}
	if _, err := p.API(t, "h4").VM(ctx, "quorum"); err != nil {
		t.Errorf("read the VM through the client host h4 with h3 down: %v", err)
	}
	if op, err := c.DeleteVM(ctx, "quorum", true, time.Minute); err != nil {
		t.Error(err)
	} else if _, err := c.Wait(ctx, op, nil); err != nil {
		t.Error(err)
	}
	// h3 comes back with its first flags (--join and a used token): it
	// does not join again.
	p.mu.Lock()
	cfg3 := p.serve["h3"]
	p.mu.Unlock()
	if _, err := p.Host(t, "h3").Serve(ctx, cfg3); err != nil {
		t.Fatalf("restart h3 with its first flags: %v", err)
	}
	if !strings.Contains(p.Host(t, "h3").LogTail(20000), "not used again") {
		t.Error("h3's restart does not say it kept its pool")
	}
	if names := memberNames(poolInfo(t, p, "h2"), v1.RoleMember); len(names) != 3 {
		t.Errorf("members after h3's restart: %v", names)
	}

	// Removal: not of the answering host; a live host is evacuated first
	// (its running guest, disk on a shared pool, migrates away keeping its
	// boot id), then refused as alive and left in maintenance; once
	// stopped it goes.
	if out, err := p.CLIErr(t, "h1", "host", "remove", "h1"); err == nil || !strings.Contains(out, "cannot remove itself") {
		t.Errorf("h1 removing itself: %v %s", err, out)
	}
	vol := sharedVolume(ctx, t, p, "rm", "rm.qcow2")
	g := p.BootGuest(t, "h4", "rm", func(s *v1.VMSpec) { s.Disks = []v1.Disk{{Volume: vol}} })
	out, err := p.CLIErr(t, "h1", "host", "remove", "h4")
	t.Logf("remove live h4:\n%s", out)
	if err == nil || !strings.Contains(out, "evacuate h4") || !strings.Contains(out, "alive") {
		t.Fatalf("removing live h4: %v, want its evacuation and then a refusal (alive)\n%s", err, out)
	}
	if v, err := c.VM(ctx, "rm"); err != nil || v.Spec.Host == "h4" || v.Status.State != v1.StateRunning {
		t.Fatalf("after removing h4 was asked: vm rm on %s, %s (%v)", v.Spec.Host, v.Status.State, err)
	}
	if pid := p.QEMUOf(t, "h4", "rm"); pid != 0 {
		t.Fatalf("QEMU of rm still on h4 (pid %d)", pid)
	}
	if st := p.GuestStatus(t, g); st.BootID != g.BootID {
		t.Fatalf("boot id %s after h4's evacuation, was %s", st.BootID, g.BootID)
	}
	if hs := waitHosts(t, p, "h1", func(hs []v1.Host) bool { return len(hs) == 4 }); !slices.ContainsFunc(hs, func(h v1.Host) bool { return h.Name == "h4" && h.Maintenance }) {
		t.Fatalf("h4 not in maintenance after its evacuation: %+v", hs)
	}
	if err := h4.StopServe(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(40 * time.Second)
	for {
		out, err := p.CLIErr(t, "h1", "host", "remove", "h4")
		if err == nil {
			break
		}
		if time.Now().After(deadline) || !strings.Contains(out, "alive") {
			t.Fatalf("remove stopped h4: %v %s", err, out)
		}
		time.Sleep(time.Second)
	}
	waitHosts(t, p, "h1", func(hs []v1.Host) bool { return len(hs) == 3 })
}

func poolInfo(t *testing.T, p *Pool, host string) v1.PoolInfo {
	t.Helper()
	var info v1.PoolInfo
	out := p.CLI(t, host, "pool", "show", "-o", "json")
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("pool show -o json: %v\n%s", err, out)
	}
	return info
}

func memberNames(info v1.PoolInfo, role string) []string {
	var out []string
	for _, m := range info.Members {
		if m.Role == role {
			out = append(out, m.Name)
		}
	}
	slices.Sort(out)
	return out
}

// waitHosts waits until host's API lists hosts that ok accepts.
func waitHosts(t *testing.T, p *Pool, host string, ok func([]v1.Host) bool) []v1.Host {
	t.Helper()
	deadline := time.Now().Add(40 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		hs, err := p.API(t, host).Hosts(ctx)
		cancel()
		if err == nil && ok(hs) {
			return hs
		}
		if time.Now().After(deadline) {
			t.Fatalf("hosts on %s: %+v %v", host, hs, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

type poolState struct {
	Role      string   `json:"role"`
	Endpoints []string `json:"endpoints"`
}

func readState(t *testing.T, h *netlab.Host) poolState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.DataDir, "pool.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st poolState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func flip(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}

// otherSecret is token with another secret but a valid check sum: the
// layout is "hgjoin1." + base64url(id 12 | secret 32 | fingerprint 32 |
// check 4), check = SHA-256 of the rest.
func otherSecret(t *testing.T, token string) string {
	t.Helper()
	body, ok := strings.CutPrefix(token, "hgjoin1.")
	raw, err := base64.RawURLEncoding.DecodeString(body)
	if !ok || err != nil || len(raw) != 80 {
		t.Fatalf("token %q: %v", token, err)
	}
	raw[20] ^= 0xff
	sum := sha256.Sum256(raw[:76])
	copy(raw[76:], sum[:4])
	return "hgjoin1." + base64.RawURLEncoding.EncodeToString(raw)
}

// strangerCert is a host certificate of a CA that is not the pool's.
func strangerCert(t *testing.T) tls.Certificate {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.IssueHost("stranger", []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kp.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// etcdTalk opens TLS to etcd's client port from d's namespace and says
// hello in HTTP/2 (gRPC's transport): nil when etcd answers with its
// SETTINGS frame, an error when it refuses the client (a TLS alert).
func etcdTalk(ctx context.Context, d *netlab.Dialer, addr string, tc *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer raw.Close()
	tc = tc.Clone()
	tc.NextProtos = []string{"h2"}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		tc.ServerName = host
	}
	conn := tls.Client(raw, tc)
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := conn.HandshakeContext(ctx); err != nil {
		return err
	}
	preface := append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0) // + empty SETTINGS
	if _, err := conn.Write(preface); err != nil {
		return err
	}
	hdr := make([]byte, 9)
	if _, err := conn.Read(hdr); err != nil {
		return err
	}
	if hdr[3] != 4 { // frame type SETTINGS
		return errors.New("etcd answered something other than SETTINGS")
	}
	return nil
}
