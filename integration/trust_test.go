package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/pki"
)

// probeEnv, when set, makes the test binary run probeMain instead of the
// tests: TestNonRootLocked starts a copy of it as another user.
const probeEnv = "HANGAR_TRUST_PROBE"

// probeTarget is a listening socket of hangar serve.
type probeTarget struct {
	Network string `json:"network"` // "unix" or "tcp"
	Addr    string `json:"addr"`
}

// probeResult says whether one way of using a target worked.
type probeResult struct {
	Target probeTarget `json:"target"`
	How    string      `json:"how"`
	OK     bool        `json:"ok"`
	Err    string      `json:"err,omitempty"`
}

// probeMain tries to write etcd and to call the API through every target
// in $HANGAR_TRUST_PROBE (JSON) and prints the results as JSON.
func probeMain() int {
	var targets []probeTarget
	if err := json.Unmarshal([]byte(os.Getenv(probeEnv)), &targets); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		return 2
	}
	var out []probeResult
	add := func(t probeTarget, how string, err error) {
		r := probeResult{Target: t, How: how, OK: err == nil}
		if err != nil {
			r.Err = err.Error()
		}
		out = append(out, r)
	}
	for _, t := range targets {
		switch t.Network {
		case "unix":
			c, err := net.DialTimeout("unix", t.Addr, 3*time.Second)
			add(t, "connect", err)
			if err != nil {
				continue
			}
			c.Close()
			add(t, "etcd put", etcdPut("unix://"+t.Addr, nil))
			add(t, "api get", apiGet(&http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", t.Addr)
			}}, "http://hangar"))
		case "tcp":
			add(t, "etcd put plain", etcdPut("http://"+t.Addr, nil))
			add(t, "etcd put tls without client cert", etcdPut("https://"+t.Addr, &tls.Config{InsecureSkipVerify: true}))
			add(t, "api get plain", apiGet(&http.Transport{}, "http://"+t.Addr))
			add(t, "api get tls", apiGet(&http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, "https://"+t.Addr))
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 2
	}
	return 0
}

func etcdPut(endpoint string, tc *tls.Config) error {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 3 * time.Second, TLS: tc, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = c.Put(ctx, "/hangar-probe/"+strconv.Itoa(os.Getuid()), "written by uid "+strconv.Itoa(os.Getuid()))
	return err
}

func apiGet(tr *http.Transport, root string) error {
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	resp, err := hc.Get(root + "/api/v1/hosts")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// listeners returns every listening TCP and unix socket of process pid
// (read from /proc: its fds' socket inodes, matched in /proc/net).
func listeners(t *testing.T, pid int) []probeTarget {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []probeTarget
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" || !inodes[fs[9]] { // 0A: LISTEN
				continue
			}
			out = append(out, probeTarget{Network: "tcp", Addr: procAddr(t, fs[1])})
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		fs := strings.Fields(line)
		// Flags 00010000: __SO_ACCEPTCON, a listening socket.
		if len(fs) < 8 || fs[3] != "00010000" || !inodes[fs[6]] || !strings.HasPrefix(fs[7], "/") {
			continue
		}
		out = append(out, probeTarget{Network: "unix", Addr: fs[7]})
	}
	return out
}

// procAddr turns /proc/net/tcp's "0100007F:1F90" into "127.0.0.1:8080".
func procAddr(t *testing.T, s string) string {
	h, p, _ := strings.Cut(s, ":")
	raw, err := hex.DecodeString(h)
	if err != nil {
		t.Fatalf("parse %q: %v", s, err)
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 { // 32-bit words in host (little-endian) order
		binary.BigEndian.PutUint32(ip[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	if ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
		if len(raw) == 16 {
			ip = net.IPv6loopback
		}
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		t.Fatalf("parse %q: %v", s, err)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(int(port)))
}

// runProbe runs a copy of this test binary with probeMain as uid/gid (via
// setpriv; uid 0 runs it unchanged).
func runProbe(t *testing.T, uid int, targets []probeTarget) []probeResult {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary lives in a 0700 build directory: copy it somewhere
	// the other user can execute it.
	dir, err := os.MkdirTemp("", "hgprobe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "probe")
	src, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	tj, _ := json.Marshal(targets)
	argv := []string{bin}
	if uid != 0 {
		argv = []string{"setpriv", "--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(uid), "--clear-groups", "--", bin}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), probeEnv+"="+string(tj), "HOME="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("probe as uid %d: %v\n%s", uid, err, stderr.String())
	}
	var rs []probeResult
	if err := json.Unmarshal(out, &rs); err != nil {
		t.Fatalf("probe as uid %d: %v\n%s", uid, err, out)
	}
	return rs
}

// TestNonRootLocked: a local user other than root (nobody) can neither
// write to the embedded etcd nor call the API, through any socket hangar
// serve listens on. Root, with the same probe, can (so the probe works).
// The etcd client socket is in a 0700 root directory; etcd has no
// plain-TCP client port.
func TestNonRootLocked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: hangar serve and the probe as another user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) not installed: cannot run the probe as nobody")
	}
	tf := newAPITLS(t)
	s := newServerArgs(t, "", "--listen", tf.addr, "--tls-cert", tf.serverCert, "--tls-key", tf.serverKey,
		"--client-ca", tf.clientCA, "--tokens-file", tf.tokens)
	targets := listeners(t, s.cmd.Process.Pid)
	t.Logf("hangar serve listens on %v", targets)

	etcdSock := filepath.Join(s.runDir, "etcd", "client.sock")
	var haveEtcd, haveAPI bool
	for _, tg := range targets {
		haveEtcd = haveEtcd || (tg.Network == "unix" && tg.Addr == etcdSock)
		haveAPI = haveAPI || (tg.Network == "unix" && tg.Addr == s.socket)
	}
	haveTCP := false
	for _, tg := range targets {
		haveTCP = haveTCP || (tg.Network == "tcp" && tg.Addr == tf.addr)
	}
	if !haveEtcd || !haveAPI || !haveTCP {
		t.Fatalf("listeners %v: want the etcd socket %s, the API socket %s and the API on %s", targets, etcdSock, s.socket, tf.addr)
	}
	for path, want := range map[string]fs.FileMode{filepath.Dir(etcdSock): fs.ModeDir | 0o700, etcdSock: fs.ModeSocket | 0o600} {
		st, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want || st.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("%s: mode %v uid %d, want %v root", path, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, want)
		}
	}

	// Control: root reaches both sockets with the same probe.
	for _, r := range runProbe(t, 0, targets) {
		if r.Target.Network == "unix" && (r.Target.Addr == etcdSock && r.How == "etcd put" ||
			r.Target.Addr == s.socket && r.How == "api get") && !r.OK {
			t.Errorf("root probe %s on %s failed: %s (the probe cannot tell a locked socket from a broken one)", r.How, r.Target.Addr, r.Err)
		}
	}
	for _, r := range runProbe(t, 65534, targets) {
		if r.OK {
			t.Errorf("nobody: %s on %s %s worked", r.How, r.Target.Network, r.Target.Addr)
		} else {
			t.Logf("nobody: %s on %s %s: %s", r.How, r.Target.Network, r.Target.Addr, r.Err)
		}
	}
	// Nothing nobody could have written.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"unix://" + etcdSock}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Get(ctx, "/hangar-probe/65534")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Errorf("nobody wrote etcd: %s", resp.Kvs[0].Value)
	}
}

// apiTLS is the TLS material for `serve --listen`: a server certificate
// for 127.0.0.1, a client CA with a client certificate, a certificate of an
// unrelated CA, and a tokens file.
type apiTLS struct {
	addr                  string
	serverCert, serverKey string
	serverCA, clientCA    string
	goodCert, goodKey     string
	badCert, badKey       string
	tokens, token         string
}

func newAPITLS(t *testing.T) apiTLS {
	t.Helper()
	dir := t.TempDir()
	ca := func(name string) *pki.CA {
		c, err := pki.LoadOrCreateCA(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	write := func(name string, kp *pki.KeyPair, err error) (string, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		c, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := kp.WriteFiles(c, k); err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	srv, cli, other := ca("srv"), ca("cli"), ca("other")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := apiTLS{addr: l.Addr().String(), serverCA: srv.CertFile(), clientCA: cli.CertFile(), token: "integration-token-0123456789"}
	l.Close()
	kp, err := srv.IssueHost("server", []net.IP{net.IPv4(127, 0, 0, 1)}, nil)
	f.serverCert, f.serverKey = write("server", kp, err)
	kp, err = cli.IssueClient("alice")
	f.goodCert, f.goodKey = write("alice", kp, err)
	kp, err = other.IssueClient("mallory")
	f.badCert, f.badKey = write("mallory", kp, err)
	f.tokens = filepath.Join(dir, "tokens")
	if err := os.WriteFile(f.tokens, []byte("ci:"+f.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestTCPAPIAuth: `hangar serve --listen` answers only clients with a
// certificate of --client-ca or a token of --tokens-file; anonymous and
// bad-token requests get 401 JSON, a certificate of another CA fails the
// handshake. --tls-cert without --tls-key, or a tokens file others can
// read, does not start. (--listen alone serves the pool CA's host
// certificate: TestListenerFromPoolCA in internal/daemon.)
func TestTCPAPIAuth(t *testing.T) {
	needQEMU(t)
	tf := newAPITLS(t)
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"half a key pair":      {[]string{"--listen", tf.addr, "--tls-cert", tf.serverCert}, "--tls-key go together"},
		"readable tokens file": {[]string{"--listen", tf.addr, "--tls-cert", tf.serverCert, "--tls-key", tf.serverKey, "--tokens-file", loosened(t, tf.tokens)}, "--tokens-file"},
	} {
		args := c.args
		run := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, hangarBin, append([]string{"serve", "--data-dir", filepath.Join(run, "d"),
			"--run-dir", filepath.Join(run, "r"), "--socket", filepath.Join(run, "s.sock"), "--accel", "tcg"}, args...)...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%s: serve started or said nothing useful: %v\n%s", name, err, out)
		}
	}

	s := newServerArgs(t, "", "--listen", tf.addr, "--tls-cert", tf.serverCert, "--tls-key", tf.serverKey,
		"--client-ca", tf.clientCA, "--tokens-file", tf.tokens)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := "https://" + tf.addr
	for name, o := range map[string]client.TLSOptions{
		"no credentials": {CAFile: tf.serverCA},
		"bad token":      {CAFile: tf.serverCA, Token: "not-the-token-0123456789"},
	} {
		c, err := client.NewTLS(url, o)
		if err != nil {
			t.Fatal(err)
		}
		code, body, err := c.Raw(ctx, "POST", "/api/v1/vms", []byte(`{"name":"anon","memoryMiB":64}`))
		var er v1.ErrorResponse
		if err != nil || code != 401 || json.Unmarshal(body, &er) != nil || er.Error == nil || er.Error.Code != "unauthenticated" {
			t.Errorf("%s: POST /vms = %d %s %v, want 401 unauthenticated", name, code, body, err)
		}
	}
	if vms, err := s.c.VMs(ctx); err != nil || len(vms) != 0 {
		t.Fatalf("VMs after refused POSTs: %v %v", vms, err)
	}
	bad, _ := client.NewTLS(url, client.TLSOptions{CAFile: tf.serverCA, CertFile: tf.badCert, KeyFile: tf.badKey})
	if _, err := bad.Hosts(ctx); err == nil {
		t.Error("client certificate of another CA accepted")
	}
	for name, o := range map[string]client.TLSOptions{
		"certificate": {CAFile: tf.serverCA, CertFile: tf.goodCert, KeyFile: tf.goodKey},
		"token":       {CAFile: tf.serverCA, Token: tf.token},
	} {
		c, err := client.NewTLS(url, o)
		if err != nil {
			t.Fatal(err)
		}
		if hs, err := c.Hosts(ctx); err != nil || len(hs) != 1 {
			t.Errorf("%s: hosts %v %v", name, hs, err)
		}
	}
}

// loosened copies a tokens file with mode 0644.
func loosened(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
