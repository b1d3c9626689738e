package manager

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	v1 "hangar/api/v1"
	"hangar/internal/authn"
	"hangar/internal/errdefs"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/hostapi"
	"hangar/internal/inventory"
	"hangar/internal/pki"
	"hangar/internal/storage"
	"hangar/internal/store"
)

// hostConsoles is one host's consoles: serial logs in its own directory
// and a console that answers "<host>:<what it read>".
type hostConsoles struct{ host, dir string }

func (c hostConsoles) SerialLogPath(name string) string { return filepath.Join(c.dir, name+".log") }
func (c hostConsoles) OpenConsole(ctx context.Context, name string) (net.Conn, error) {
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		br := bufio.NewReader(b)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(b, "%s:%s", c.host, line); err != nil {
				return
			}
		}
	}()
	return a, nil
}

// hostPools is one host's storage: ListVolumes names the host.
type hostPools struct {
	poolsAPI // nil: only ListVolumes is called
	host     string
}

type poolsAPI = Pools

func (p hostPools) ListVolumes(ctx context.Context, pool string) ([]v1.Volume, error) {
	return []v1.Volume{{Pool: pool, Name: "on-" + p.host, Format: "qcow2"}}, nil
}

func (p hostPools) CreateVolume(ctx context.Context, pool, name, format string, size int64) (v1.Volume, error) {
	return v1.Volume{Pool: pool, Name: name + "-made-on-" + p.host, Format: "qcow2", VirtualSize: size}, nil
}

// hostVolumes is one host's files: only /isos/<host>.iso exists there.
type hostVolumes struct {
	volumesAPI // nil: only CheckSource is called
	host, dir  string
}

type volumesAPI = Volumes

func (v hostVolumes) CheckSource(ctx context.Context, kind storage.SourceKind, path string) (storage.HostFile, error) {
	switch path {
	case "/isos/" + v.host + ".iso":
		return storage.HostFile{Path: path}, nil
	case "/imports/" + v.host + ".raw", filepath.Join(v.dir, v.host+".raw"): // a real file in the host's directory
		return storage.HostFile{Path: filepath.Join(v.dir, v.host+".raw")}, nil
	}
	return storage.HostFile{}, fmt.Errorf("%s: no such file on host %s: %w", path, v.host, errdefs.ErrNotFound)
}

type poolHost struct {
	name string
	url  string
	dir  string
}

// TestForwardToTheVMsHost: two hosts' API servers on one store, each on
// its TLS listener with its host certificate from the pool CA. A VM placed
// on h2: its serial log and console asked from h1 are h2's (forwarded over
// mutual TLS), a host's volumes with ?host=; a request forged with the
// forwarding marker but without a pool host certificate is refused, and
// so is a host certificate naming another host.
func TestForwardToTheVMsHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	st := store.NewEtcd(etcdtest.Start(t).Client())
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	roots := ca.Pool()
	loopback := []net.IP{net.ParseIP("127.0.0.1")}
	hosts := map[string]*poolHost{}
	certs := map[string]tls.Certificate{}
	for _, name := range []string{"h1", "h2"} {
		kp, err := ca.IssueHost(name, loopback, []string{"localhost"})
		if err != nil {
			t.Fatal(err)
		}
		cert, err := kp.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		certs[name] = cert
		h := &poolHost{name: name, dir: t.TempDir()}
		api := New(Config{Store: st, Log: slog.New(slog.DiscardHandler), Consoles: hostConsoles{host: name, dir: h.dir},
			Pools: hostPools{host: name}, Volumes: hostVolumes{host: name, dir: h.dir}, Forward: hostapi.New(name, roots, cert, hostapi.StoreResolver(st), slog.New(slog.DiscardHandler))})
		srv := httptest.NewUnstartedServer(api.Logged(func(next http.Handler) http.Handler {
			return authn.Require(authn.ClientCert{Roots: roots}, next)
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: roots}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		h.url = srv.URL
		hosts[name] = h
		addr := strings.TrimPrefix(srv.URL, "https://")
		mem := 1024
		if _, err := st.Put(ctx, inventory.HostInfoKey(name), inventory.Marshal(v1.Host{Name: name, CPUs: 2, MemoryMiB: mem, Accelerator: "tcg", Address: addr}), store.AnyRevision); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Put(ctx, inventory.HostKey(name), []byte("{}"), store.AnyRevision); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(h.dir, "web.log"), []byte("serial of web on "+name+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(h.dir, name+".raw"), make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Put(ctx, inventory.VMKey("web"), inventory.Marshal(v1.VMSpec{Name: "web", Host: "h2", CPUs: 1, MemoryMiB: 64}), store.MustNotExist); err != nil {
		t.Fatal(err)
	}

	alice, err := ca.IssueClient("alice") // a user's certificate (pool credentials): client only
	if err != nil {
		t.Fatal(err)
	}
	aliceCert, err := alice.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	client := func(cert tls.Certificate) *http.Client {
		return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			Certificates: []tls.Certificate{cert}, RootCAs: roots, ServerName: "localhost"}}}
	}
	get := func(c *http.Client, url string, hdr ...string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Add(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	user := client(aliceCert)

	// The serial log of a VM on h2, asked from h1 and from h2: h2's file.
	for _, via := range []string{"h1", "h2"} {
		req, _ := http.NewRequestWithContext(ctx, "GET", hosts[via].url+"/api/v1/vms/web/console/log", nil)
		if resp, err := user.Do(req); err != nil {
			t.Fatal(err)
		} else if resp.Body.Close(); len(resp.Header.Values("Content-Security-Policy")) != 1 || len(resp.Header.Values("X-Frame-Options")) != 1 {
			t.Errorf("via %s: security headers %v, want one of each", via, resp.Header)
		}
		if code, body := get(user, hosts[via].url+"/api/v1/vms/web/console/log"); code != 200 || body != "serial of web on h2\n" {
			t.Fatalf("console log via %s: %d %q", via, code, body)
		}
	}
	// The owner record, when there is one, says where the VM runs.
	if _, err := st.Put(ctx, inventory.OwnerKey("web"), inventory.Marshal(inventory.Owner{Host: "h1", Epoch: 2}), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	if code, body := get(user, hosts["h2"].url+"/api/v1/vms/web/console/log"); code != 200 || body != "serial of web on h1\n" {
		t.Fatalf("console log of a vm owned by h1, via h2: %d %q", code, body)
	}
	if err := st.Delete(ctx, inventory.OwnerKey("web"), store.AnyRevision); err != nil {
		t.Fatal(err)
	}

	// The console stream (an HTTP upgrade) of the VM on h2, via h1: with a
	// ticket h1 issues and takes (h2 takes h1's word for it).
	treq, _ := http.NewRequestWithContext(ctx, "POST", hosts["h1"].url+"/api/v1/vms/web/console/ticket", nil)
	tresp, err := user.Do(treq)
	if err != nil {
		t.Fatal(err)
	}
	var ticket v1.ConsoleTicket
	if err := json.NewDecoder(tresp.Body).Decode(&ticket); err != nil || tresp.StatusCode != 201 {
		t.Fatalf("console ticket: %d %v", tresp.StatusCode, err)
	}
	tresp.Body.Close()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(hosts["h1"].url, "https://"), &tls.Config{
		Certificates: []tls.Certificate{aliceCert}, RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "GET /api/v1/vms/web/console?ticket=%s HTTP/1.1\r\nHost: hangar\r\nConnection: Upgrade\r\nUpgrade: hangar-console\r\n\r\n", ticket.Ticket)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("console via h1: %v %v", resp, err)
	}
	fmt.Fprintf(conn, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "h2:ping\n" {
		t.Fatalf("console via h1 answered %q (%v), want h2's console", line, err)
	}
	// The browser's websocket console, via h1, is h2's too: h1 checks the
	// origin and the ticket, h2 accepts the websocket.
	if tresp, err = user.Do(treq.Clone(ctx)); err != nil {
		t.Fatal(err)
	}
	if err := json.NewDecoder(tresp.Body).Decode(&ticket); err != nil || tresp.StatusCode != 201 {
		t.Fatalf("console ticket: %d %v", tresp.StatusCode, err)
	}
	tresp.Body.Close()
	wsURL := strings.Replace(hosts["h1"].url, "https://", "wss://", 1) + "/api/v1/vms/web/console?ticket=" + url.QueryEscape(ticket.Ticket)
	ws, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPClient: user,
		HTTPHeader: http.Header{"Origin": {hosts["h1"].url}}})
	if err != nil {
		t.Fatalf("websocket console via h1: %v", err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageBinary, []byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if wsGot := readLine(t, ctx, ws); wsGot != "h2:ping\n" {
		t.Fatalf("websocket console via h1 answered %q, want h2's console", wsGot)
	}

	// A host's own volumes: the pool's name says which host has them.
	if code, body := get(user, hosts["h1"].url+"/api/v1/pools/local-h2/volumes"); code != 200 || !strings.Contains(body, `"on-h2"`) {
		t.Fatalf("volumes of h2 via h1: %d %s", code, body)
	}
	if code, body := get(user, hosts["h1"].url+"/api/v1/pools/local-h1/volumes"); code != 200 || !strings.Contains(body, `"on-h1"`) {
		t.Fatalf("volumes of h1: %d %s", code, body)
	}
	if code, body := get(user, hosts["h1"].url+"/api/v1/pools/local-ghost/volumes"); code != 404 || !strings.Contains(body, `"field": "pool"`) {
		t.Fatalf("volumes of an unknown host: %d %s", code, body)
	}
	if code, body := get(user, hosts["h1"].url+"/api/v1/pools/local-h2/volumes?host=h1"); code != 400 || !strings.Contains(body, `"field": "host"`) {
		t.Fatalf("h2's pool asked of host h1: %d %s", code, body)
	}
	// A recorded pool every host has: ?host= names the host.
	if code, body := get(user, hosts["h1"].url+"/api/v1/pools/fast/volumes?host=h2"); code != 200 || !strings.Contains(body, `"on-h2"`) {
		t.Fatalf("volumes of h2's pool fast via h1: %d %s", code, body)
	}
	if code, body := get(user, hosts["h1"].url+"/api/v1/pools/fast/volumes?host=ghost"); code != 404 {
		t.Fatalf("volumes of an unknown host: %d %s", code, body)
	}

	// A create through h1 of a VM placed on h2: its cdrom's file is checked
	// on h2 (where it exists; h1 has no such file), an error keeps its field.
	post := func(c *http.Client, url, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(user, hosts["h1"].url+"/api/v1/vms", `{"name":"cd1","memoryMiB":64,"placement":"manual","preferredHosts":["h2"],"disks":[{"media":"cdrom","image":"/isos/h2.iso"}]}`); code != 202 {
		t.Fatalf("create with h2's iso via h1: %d %s", code, body)
	}
	code, body := post(user, hosts["h1"].url+"/api/v1/vms", `{"name":"cd2","memoryMiB":64,"placement":"manual","preferredHosts":["h2"],"disks":[{"media":"cdrom","image":"/isos/h1.iso"}]}`)
	var er v1.ErrorResponse
	if code != 404 || json.Unmarshal([]byte(body), &er) != nil || er.Error == nil || er.Error.Field != "disks[0].image" || !strings.Contains(er.Error.Message, "host h2") {
		t.Fatalf("create with a file h2 does not have, via h1: %d %s", code, body)
	}
	// The host API answers for a host asked directly too.
	if code, body := post(user, hosts["h1"].url+"/api/v1/hosts/h2/check-sources", `{"name":"x","memoryMiB":64,"disks":[{"media":"cdrom","image":"/isos/h2.iso"}]}`); code != 204 {
		t.Fatalf("check-sources of h2 via h1: %d %s", code, body)
	}
	if code, body := post(user, hosts["h2"].url+"/api/v1/hosts/h1/check-sources", `{"name":"x","memoryMiB":64,"disks":[{"media":"cdrom","image":"/isos/h2.iso"}]}`); code != 404 {
		t.Fatalf("check-sources of h1 via h2 (h1 lacks the file): %d %s", code, body)
	}
	// A media change of cd1 (placed on h2, as the master would) through h1
	// is checked on h2.
	inv := inventory.Inventory{S: st}
	sp, rev, err := inv.Spec(ctx, "cd1")
	if err != nil {
		t.Fatal(err)
	}
	sp.Host = "h2"
	if _, err := st.Put(ctx, inventory.VMKey("cd1"), inventory.Marshal(sp), rev); err != nil {
		t.Fatal(err)
	}
	if code, body := post(user, hosts["h1"].url+"/api/v1/vms/cd1/media", `{"disk":"disk0","image":"/isos/h1.iso"}`); code != 404 || !strings.Contains(body, "host h2") {
		t.Fatalf("media change with a file h2 lacks, via h1: %d %s", code, body)
	}

	// An import of a file on h2, asked of h1 with ?host=h2: read on h2, and
	// the VM is created there (its create is pinned to h2).
	if code, body := post(user, hosts["h1"].url+"/api/v1/imports?host=h2", `{"path":"/imports/h2.raw","name":"imp1"}`); code != 202 {
		t.Fatalf("import of h2's file via h1: %d %s", code, body)
	} else {
		var op v1.Operation
		var args v1.CreateArgs
		if json.Unmarshal([]byte(body), &op) != nil || json.Unmarshal(op.Args, &args) != nil || args.Host != "h2" {
			t.Fatalf("import of h2's file: op %s, want its create pinned to h2", body)
		}
	}
	if code, body := post(user, hosts["h1"].url+"/api/v1/imports", `{"path":"/imports/h2.raw","name":"imp2"}`); code != 404 || !strings.Contains(body, "host h1") {
		t.Fatalf("import of h2's file without ?host, via h1: %d %s, want h1's refusal", code, body)
	}
	if code, body := post(user, hosts["h1"].url+"/api/v1/imports", `{"path":"https://example.com/a.ova"}`); code != 400 ||
		!strings.Contains(body, `"field": "path"`) || !strings.Contains(body, "importing from a URL is out of scope") {
		t.Fatalf("import of a URL: %d %s, want a 400 saying URLs are out of scope", code, body)
	}

	// A volume written in a host's own pool: made there.
	if code, body := post(user, hosts["h1"].url+"/api/v1/pools/local-h2/volumes", `{"name":"images/a.qcow2","sizeMiB":8}`); code != 201 || !strings.Contains(body, "made-on-h2") {
		t.Fatalf("create a volume in h2's pool via h1: %d %s", code, body)
	}
	if code, body := post(user, hosts["h1"].url+"/api/v1/pools/local-h1/volumes", `{"name":"images/a.qcow2","sizeMiB":8}`); code != 201 || !strings.Contains(body, "made-on-h1") {
		t.Fatalf("create a volume in h1's pool: %d %s", code, body)
	}

	// Forged: the marker with a user's certificate, on either host (on h1
	// it would otherwise read h1's own file); the marker with a host
	// certificate that is another host's; two markers.
	for _, c := range []struct {
		name   string
		client *http.Client
		via    string
		hdr    []string
	}{
		{"user cert claiming h2", user, "h1", []string{hostapi.Header, "h2"}},
		{"user cert claiming h1", user, "h2", []string{hostapi.Header, "h1"}},
		{"h1's cert claiming h2", client(certs["h1"]), "h2", []string{hostapi.Header, "h2"}},
		{"two markers", client(certs["h1"]), "h2", []string{hostapi.Header, "h1", hostapi.Header, "h1"}},
	} {
		code, body := get(c.client, hosts[c.via].url+"/api/v1/vms/web/console/log", c.hdr...)
		var er v1.ErrorResponse
		if code != 401 || json.Unmarshal([]byte(body), &er) != nil || er.Error == nil || strings.Contains(body, "serial of") {
			t.Errorf("%s: %d %s, want 401 and no log", c.name, code, body)
		}
	}
	// A genuine forward (h1's certificate, marked h1) is served where it
	// lands, never forwarded again: h1's own file even though web is h2's.
	if code, body := get(client(certs["h1"]), hosts["h1"].url+"/api/v1/vms/web/console/log", hostapi.Header, "h1"); code != 200 || body != "serial of web on h1\n" {
		t.Fatalf("forwarded request served locally: %d %q", code, body)
	}
	// Over the unix socket (no TLS) the marker is refused too.
	ts := &testServer{t: t, s: New(Config{Store: st, Log: slog.New(slog.DiscardHandler), Consoles: hostConsoles{host: "h1", dir: hosts["h1"].dir}}), st: st}
	if code, _, body := ts.do("GET", "/api/v1/vms/web/console/log", "", "", hostapi.Header, "h2"); code != 401 {
		t.Fatalf("marker without tls: %d %s", code, body)
	}

	// A host that cannot be reached: 503 naming it, not this host's file.
	if _, err := st.Put(ctx, inventory.HostInfoKey("h2"), inventory.Marshal(v1.Host{Name: "h2", Address: "127.0.0.1:1"}), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	if code, body := get(user, hosts["h1"].url+"/api/v1/vms/web/console/log"); code != 503 || !strings.Contains(body, "h2") {
		t.Fatalf("unreachable host: %d %s", code, body)
	}
}

// listedPools answers Pools with a dir and a shared pool.
type listedPools struct{ poolsAPI }

func (listedPools) Pools(ctx context.Context) ([]v1.StoragePool, error) {
	return []v1.StoragePool{{Name: "default", Type: "dir"}, {Name: "nfs", Type: "shared"}}, nil
}

// TestIOHost: a volume job on a shared pool runs on the freest live host
// that reaches it (its facts report the pool's storage), not on the last
// host of a list; on a host's own pool, on the host asked.
func TestIOHost(t *testing.T) {
	ts := newTestServer(t) // h1: 4096 MiB, no storage facts (assumed to reach every pool)
	ts.s.cfg.Pools = listedPools{}
	ctx := t.Context()
	for _, h := range []v1.Host{
		{Name: "h2", CPUs: 4, MemoryMiB: 8192, Storage: []v1.StorageUsage{{Pool: "default", Type: "dir"}, {Pool: "nfs", Type: "shared"}}},
		{Name: "h3", CPUs: 4, MemoryMiB: 16384, Storage: []v1.StorageUsage{{Pool: "default", Type: "dir"}}}, // no nfs mounted
		{Name: "h4", CPUs: 4, MemoryMiB: 32768, Storage: []v1.StorageUsage{{Pool: "nfs", Type: "shared"}}},  // down
	} {
		if _, err := ts.st.Put(ctx, inventory.HostInfoKey(h.Name), inventory.Marshal(h), store.AnyRevision); err != nil {
			t.Fatal(err)
		}
		if h.Name != "h4" {
			if _, err := ts.st.Put(ctx, inventory.HostKey(h.Name), []byte("{}"), store.AnyRevision); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, err := ts.s.ioHost(ctx, "nfs"); err != nil || got != "h2" {
		t.Fatalf("io host of the shared pool = %q, %v; want h2 (h3 does not reach it, h4 is down)", got, err)
	}
	ts.s.cfg.Forward = hostapi.New("h1", nil, tls.Certificate{}, nil, nil)
	if got, err := ts.s.ioHost(ctx, "default"); err != nil || got != "h1" {
		t.Fatalf("io host of a host's own pool = %q, %v; want the host asked", got, err)
	}
}
