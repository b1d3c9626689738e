package pool_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/netlab"
	"hangar/internal/serial"
)

// Pool is the shared multi-host fixture: a lab with hosts h1, h2, … (each
// a `hangar serve` in its own namespace) and a client namespace c1 that
// runs the guests' DHCP server and reads the guests.
type Pool struct {
	Lab    *netlab.Lab
	Hosts  []*netlab.Host // h1 first
	Client *netlab.Client
	// Joined: h2… joined h1's pool (one etcd cluster, one master); else
	// every host is a pool of its own (each VM stays on the host whose API
	// created it).
	Joined bool

	mu     sync.Mutex
	serve  map[string]netlab.ServeConfig // how each host was started (Restart uses it again)
	pinned map[string]string             // VM → the one host its spec allows (placement manual)

	guestsMu sync.Mutex
	guests   []Guest         // SharedGuests, once booted
	lost     map[string]bool // hosts that lost power since: their shared guest is booted again
}

// startPool makes the lab and starts n hosts.
func startPool(ctx context.Context, n int) (_ *Pool, err error) {
	// HANGAR_POOL_DIR keeps the hosts' data and logs there after the run.
	lab, err := netlab.New(ctx, netlab.Config{Dir: os.Getenv("HANGAR_POOL_DIR")})
	if err != nil {
		return nil, err
	}
	p := &Pool{Lab: lab, serve: map[string]netlab.ServeConfig{}, pinned: map[string]string{}}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, p.dump(3000))
			_ = p.close()
		}
	}()
	if p.Client, err = lab.AddClient(ctx, "c1"); err != nil {
		return nil, err
	}
	for i := 1; i <= n; i++ {
		h, err := lab.AddHost(ctx, fmt.Sprintf("h%d", i))
		if err != nil {
			return nil, err
		}
		p.Hosts = append(p.Hosts, h)
	}
	p.Joined, err = serveHasJoin(ctx)
	if err != nil {
		return nil, err
	}
	if !p.Joined {
		// Independent hosts, each with its own uid range: started together.
		errs := make(chan error, n)
		for i, h := range p.Hosts {
			go func() { errs <- p.startHost(ctx, h, p.serveConfig(h, lab.UIDRange(i))) }()
		}
		for range p.Hosts {
			err = errors.Join(err, <-errs)
		}
		return p, err
	}
	// One pool: h1 creates it, the others join one after the other with a
	// token each (one uid range: the pool's etcd keeps uids unique).
	uids := lab.UIDRange(0)
	h1 := p.Hosts[0]
	if err := p.startHost(ctx, h1, p.serveConfig(h1, uids, "--listen", listenAddr(h1))); err != nil {
		return nil, err
	}
	for _, h := range p.Hosts[1:] {
		for attempt := 1; ; attempt++ {
			token, err := p.JoinToken(ctx)
			if err != nil {
				return nil, err
			}
			err = p.startHost(ctx, h, p.serveConfig(h, uids, "--listen", listenAddr(h), "--join", listenAddr(h1), "--token", token))
			if err == nil {
				break
			}
			// etcd refuses a member change until every member has been
			// connected for a while ("unhealthy cluster") just after the
			// previous join; a refused join leaves nothing behind.
			if attempt == 5 || !strings.Contains(err.Error(), "unhealthy cluster") {
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "pool: join of %s refused (attempt %d): etcd cluster not healthy yet; retrying\n", h.Name, attempt)
			time.Sleep(2 * time.Second)
		}
	}
	return p, nil
}

// serveHasJoin reports whether this hangar can join pools (serve --join).
// Until it can, the fixture starts independent hosts.
func serveHasJoin(ctx context.Context) (bool, error) {
	out, err := exec.CommandContext(ctx, hangarBin, "serve", "--help").CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("hangar serve --help: %v: %s", err, out)
	}
	return strings.Contains(string(out), "--join"), nil
}

func listenAddr(h *netlab.Host) string { return netip.AddrPortFrom(h.IP, 8443).String() }

func (p *Pool) serveConfig(h *netlab.Host, uids string, args ...string) netlab.ServeConfig {
	accel := os.Getenv("HANGAR_TEST_ACCEL")
	if accel == "" {
		accel = "auto"
	}
	return netlab.ServeConfig{Bin: hangarBin, UIDRange: uids,
		Args: append([]string{"--accel", accel, "--stop-timeout", "30s", "--test-faults", "--import-dir", filepath.Dir(guestImage),
			"--fence-agent", p.fenceAgent()}, args...)}
}

// fenceAgent is the pool's fence-agent command (serve --fence-agent): a
// script in the lab that logs the host it is asked to fence and succeeds,
// after sleeping while the file fence-slow exists in the lab (a failover
// the test wants to catch while it runs).
func (p *Pool) fenceAgent() string {
	path := filepath.Join(p.Lab.Dir, "fence-agent.sh")
	script := "#!/bin/sh\nwhile [ -e " + filepath.Join(p.Lab.Dir, "fence-slow") + " ]; do sleep 0.2; done\n" +
		"echo \"$(date +%s.%N) fenced $1\" >>" + filepath.Join(p.Lab.Dir, "fenced.log") + "\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		panic(err) // the lab directory is this process's
	}
	return path
}

func (p *Pool) startHost(ctx context.Context, h *netlab.Host, cfg netlab.ServeConfig) error {
	p.mu.Lock()
	p.serve[h.Name] = cfg
	p.mu.Unlock()
	_, err := h.Serve(ctx, cfg)
	return err
}

// JoinToken asks h1 for a join token (`hangar pool join-token --ttl 10m`,
// the token is the last line of its output).
func (p *Pool) JoinToken(ctx context.Context) (string, error) {
	out, err := p.run(ctx, p.Hosts[0], "pool", "join-token", "--ttl", "10m")
	if err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	tok := strings.TrimSpace(lines[len(lines)-1])
	if tok == "" || strings.ContainsAny(tok, " \t") {
		return "", fmt.Errorf("pool join-token printed %q: no token on its last line", out)
	}
	return tok, nil
}

// close deletes every VM (so QEMUs stop through Hangar), stops the
// hosts and removes the lab.
func (p *Pool) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, h := range p.Hosts {
		if sp := h.ServeProc(); sp == nil || sp.Exited() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := h.Client()
			vms, _ := c.VMs(ctx)
			for _, v := range vms {
				if v.Status.Host != "" && v.Status.Host != h.Name {
					continue // its own host deletes it
				}
				if op, err := c.DeleteVM(ctx, v.Spec.Name, true, 30*time.Second); err == nil {
					_, _ = c.Wait(ctx, op, nil)
				}
			}
		}()
	}
	wg.Wait()
	// All at once: a member stopped last would wait for a quorum that is
	// gone. One that does not stop in time is killed (with a note: the
	// fixture is no test of graceful shutdown).
	for _, h := range p.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.StopServe(20 * time.Second); err != nil {
				fmt.Fprintf(os.Stderr, "pool: %s: %v\n", h.Name, err)
			}
		}()
	}
	wg.Wait()
	var errs []error
	for _, h := range p.Hosts {
		if b, err := os.ReadFile(h.ServeLog); err == nil && strings.Contains(string(b), "WARNING: DATA RACE") {
			errs = append(errs, fmt.Errorf("hangar serve on %s reported a data race:\n%s", h.Name, h.LogTail(8000)))
		}
	}
	return errors.Join(append(errs, p.Lab.Close())...)
}

// Host is host name (h1, h2, …); it fails the test if there is none.
func (p *Pool) Host(t testing.TB, name string) *netlab.Host {
	t.Helper()
	for _, h := range p.Hosts {
		if h.Name == name {
			return h
		}
	}
	t.Fatalf("no host %s in the pool", name)
	return nil
}

// API is the unix-socket API client of host name.
func (p *Pool) API(t testing.TB, name string) *client.Client { return p.Host(t, name).Client() }

// run runs the hangar CLI against host h's socket (in the test's own
// namespace: the socket is on the shared file system).
func (p *Pool) run(ctx context.Context, h *netlab.Host, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, hangarBin, append([]string{"--socket", h.Socket}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("hangar %s (on %s): %v\n%s", strings.Join(args, " "), h.Name, err, out)
	}
	return string(out), nil
}

// CLI runs `hangar --socket <host's socket> args…` and returns its output;
// a failure fails the test.
func (p *Pool) CLI(t testing.TB, host string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := p.run(ctx, p.Host(t, host), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// CLIErr is CLI for commands expected to fail: their output and error.
func (p *Pool) CLIErr(t testing.TB, host string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return p.run(ctx, p.Host(t, host), args...)
}

// PowerLoss kills -9 every process of host name (serve and its QEMUs).
func (p *Pool) PowerLoss(t testing.TB, name string) {
	t.Helper()
	p.guestsMu.Lock()
	if p.lost == nil {
		p.lost = map[string]bool{}
	}
	p.lost[name] = true
	p.guestsMu.Unlock()
	n, err := p.Host(t, name).PowerLoss()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("power loss of %s: %d processes killed", name, n)
}

// Restart starts host name's hangar serve again, as it was first started
// (after a PowerLoss or StopServe).
func (p *Pool) Restart(t testing.TB, name string) {
	t.Helper()
	h := p.Host(t, name)
	p.mu.Lock()
	cfg, ok := p.serve[h.Name]
	p.mu.Unlock()
	if !ok {
		t.Fatalf("host %s was never started", name)
	}
	// A joined host comes back from its own data (no second join).
	var args []string
	for i := 0; i < len(cfg.Args); i++ {
		if cfg.Args[i] == "--join" || cfg.Args[i] == "--token" {
			i++
			continue
		}
		args = append(args, cfg.Args[i])
	}
	cfg.Args = args
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := h.Serve(ctx, cfg); err != nil {
		t.Fatal(err)
	}
}

// Guest is a booted test guest on a bridge.
type Guest struct {
	Name   string
	Host   string     // where it runs (after boot)
	BootID string     // from its serial console
	IP     netip.Addr // its DHCP lease
	URL    string     // its /cgi-bin/status
}

// SharedGuests are one guest per host, "g-h1" on h1 and so on, booted
// together at the first call and kept until the pool closes (a guest whose
// host lost power meanwhile is booted again). Tests that only read guests
// share them; a test that moves, stops or changes a guest boots its own
// (BootGuest).
func (p *Pool) SharedGuests(t testing.TB) []Guest {
	t.Helper()
	p.guestsMu.Lock()
	defer p.guestsMu.Unlock()
	var todo []*netlab.Host
	for i, h := range p.Hosts {
		if i >= len(p.guests) || p.lost[h.Name] {
			todo = append(todo, h)
		}
	}
	for _, h := range todo {
		spec := GuestSpec("g-" + h.Name)
		OnHost(h.Name)(&spec)
		if p.lost[h.Name] {
			p.DeleteVM(t, h.Name, spec.Name)
		}
		if err := p.createGuest(h, spec); err != nil {
			t.Fatalf("shared guests: %v", err)
		}
	}
	for _, h := range todo {
		g, err := p.waitGuest(h, "g-"+h.Name)
		if err != nil {
			t.Fatalf("shared guests: %v", err)
		}
		if i := slices.IndexFunc(p.guests, func(x Guest) bool { return x.Name == g.Name }); i >= 0 {
			p.guests[i] = g
		} else {
			p.guests = append(p.guests, g)
		}
		delete(p.lost, h.Name)
	}
	return slices.Clone(p.guests)
}

// GuestSpec is the test guest with one NIC on br0.
func GuestSpec(name string) v1.VMSpec {
	return v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: 256, Disks: []v1.Disk{{Image: guestImage}},
		NICs: []v1.NIC{{Mode: v1.NICBridge, Bridge: netlab.Bridge}}}
}

// OnHost places a VM on host and nowhere else (placement manual).
func OnHost(host string) func(*v1.VMSpec) {
	return func(s *v1.VMSpec) {
		s.Placement, s.PreferredHosts = v1.PlacementManual, []string{host}
	}
}

// BootGuest creates and starts VM name on host (OnHost), through host's
// API, with one NIC on br0, waits for its ready marker (the boot id it
// prints) and its DHCP lease, and deletes it when the test ends. mutate
// may change the spec; while it leaves placement manual on host, a guest
// that runs elsewhere fails the test.
func (p *Pool) BootGuest(t testing.TB, host, name string, mutate func(*v1.VMSpec)) Guest {
	t.Helper()
	p.CreateGuest(t, host, name, mutate)
	return p.WaitGuest(t, host, name)
}

// CreateGuest creates and starts VM name (GuestSpec, OnHost(host), then
// mutate) through host's API without waiting for its boot; the VM is deleted when the
// test ends. Create several, then WaitGuest each: they boot together.
func (p *Pool) CreateGuest(t testing.TB, host, name string, mutate func(*v1.VMSpec)) {
	t.Helper()
	spec := GuestSpec(name)
	OnHost(host)(&spec)
	if mutate != nil {
		mutate(&spec)
	}
	t.Cleanup(func() { p.DeleteVM(t, host, name) })
	if err := p.createGuest(p.Host(t, host), spec); err != nil {
		t.Fatal(err)
	}
}

// WaitGuest waits for guest name (created through host's API) to be ready
// and to hold a DHCP lease.
func (p *Pool) WaitGuest(t testing.TB, host, name string) Guest {
	t.Helper()
	g, err := p.waitGuest(p.Host(t, host), name)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func (p *Pool) createGuest(h *netlab.Host, spec v1.VMSpec) error {
	p.mu.Lock()
	delete(p.pinned, spec.Name)
	if spec.Placement == v1.PlacementManual && len(spec.PreferredHosts) == 1 {
		p.pinned[spec.Name] = spec.PreferredHosts[0]
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := h.Client()
	op, err := c.CreateVM(ctx, spec, true, time.Minute)
	if err == nil {
		op, err = c.Wait(ctx, op, nil)
	}
	if err != nil {
		return fmt.Errorf("create %s on %s: %w (%+v)", spec.Name, h.Name, err, op.Error)
	}
	return nil
}

func (p *Pool) waitGuest(h *netlab.Host, name string) (Guest, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, err := h.Client().VM(ctx, name)
	if err != nil {
		return Guest{}, fmt.Errorf("vm %s: %w", name, err)
	}
	on := p.hostOf(v, h)
	m, _, err := serial.WaitFor(ctx, on.SerialLog(name), 0, serial.ReadyMarker)
	if err != nil {
		return Guest{}, fmt.Errorf("guest %s on %s not ready: %w\nserial log:\n%s", name, on.Name, err, fileTail(on.SerialLog(name), 3000))
	}
	if m[2] != name {
		return Guest{}, fmt.Errorf("guest %s reports hostname %q", name, m[2])
	}
	p.mu.Lock()
	pinned := p.pinned[name]
	p.mu.Unlock()
	if pinned != "" && on.Name != pinned {
		return Guest{}, fmt.Errorf("guest %s, placement manual on %s, runs on %s", name, pinned, on.Name)
	}
	g := Guest{Name: name, Host: on.Name, BootID: m[1]}
	lctx, lcancel := context.WithTimeout(ctx, 90*time.Second)
	defer lcancel()
	if g.IP, err = p.Client.WaitLease(lctx, name, ""); err != nil {
		return g, err
	}
	g.URL = StatusURL(g.IP)
	return g, nil
}

// hostOf is the lab host a VM runs on (its status, else its spec), h when
// neither names one of the lab's hosts.
func (p *Pool) hostOf(v v1.VM, h *netlab.Host) *netlab.Host {
	for _, name := range []string{v.Status.Host, v.Spec.Host} {
		for _, x := range p.Hosts {
			if x.Name == name {
				return x
			}
		}
	}
	return h
}

// DeleteVM deletes VM name through host's API (force: QEMU is killed if
// it does not stop), if it exists.
func (p *Pool) DeleteVM(t testing.TB, host, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := p.API(t, host)
	if sp := p.Host(t, host).ServeProc(); sp == nil || sp.Exited() {
		return // host is down; the lab's Close kills what is left
	}
	op, err := c.DeleteVM(ctx, name, true, 30*time.Second)
	if err == nil {
		_, err = c.Wait(ctx, op, nil)
	}
	if err != nil && !strings.Contains(err.Error(), "not found") {
		t.Errorf("delete %s: %v", name, err)
	}
}

// VMHost is the host VM name runs on, as host's API reports it.
func (p *Pool) VMHost(t testing.TB, host, name string) string {
	t.Helper()
	h := p.Host(t, host)
	v, err := h.Client().VM(context.Background(), name)
	if err != nil {
		t.Fatalf("vm %s: %v", name, err)
	}
	return p.hostOf(v, h).Name
}

// WaitReady waits for the ready marker in VM name's serial log on host
// after byte offset and returns the boot id the guest printed and the
// offset past the marker.
func (p *Pool) WaitReady(t testing.TB, host, name string, offset int64) (bootID string, next int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	path := p.Host(t, host).SerialLog(name)
	m, next, err := serial.WaitFor(ctx, path, offset, serial.ReadyMarker)
	if err != nil {
		t.Fatalf("guest %s on %s not ready: %v\nserial log:\n%s", name, host, err, fileTail(path, 3000))
	}
	if m[2] != name {
		t.Errorf("guest reports hostname %q, want %q", m[2], name)
	}
	return m[1], next
}

// GuestIP waits for the DHCP lease of guest name (the test guest sends its
// hostname, the VM's name, with its DHCP request).
func (p *Pool) GuestIP(t testing.TB, name string) netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ip, err := p.Client.WaitLease(ctx, name, "")
	if err != nil {
		t.Fatal(err)
	}
	return ip
}

// StatusURL is the test guest's status page at ip.
func StatusURL(ip netip.Addr) string { return "http://" + ip.String() + "/cgi-bin/status" }

// GuestStatus reads guest g's status from the client namespace, retrying
// for up to a minute (its HTTP server may answer just after the lease).
func (p *Pool) GuestStatus(t testing.TB, g Guest) netlab.GuestStatus {
	t.Helper()
	hc := p.Client.Dialer().HTTPClient(5 * time.Second)
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := fetch(context.Background(), hc, g.URL)
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest %s at %s does not answer from %s: %v", g.Name, g.IP, p.Client.NS, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Poll reads guest g's status from the client namespace every 20 ms until
// Stop (or the test's end).
func (p *Pool) Poll(t testing.TB, g Guest) *netlab.Poller {
	ctx, cancel := context.WithCancel(context.Background())
	poller := netlab.Poll(ctx, p.Client.Dialer(), g.URL, 20*time.Millisecond)
	t.Cleanup(func() { poller.Stop(); cancel() })
	return poller
}

// StopPollOnce stops poller (Poll of guest g) and fails the test unless
// the client saw only g's boot id and its counter never went backwards
// across what (a migration, say); the gaps are logged.
func StopPollOnce(t testing.TB, poller *netlab.Poller, g Guest, what string) netlab.PollResult {
	t.Helper()
	r := poller.Stop()
	t.Logf("client saw boot ids %v, %d failures, longest gap %v at %v", r.BootIDs, r.Failures, r.LongestGap, r.LongestGapStart)
	if len(r.BootIDs) != 1 || r.BootIDs[0] != g.BootID {
		t.Fatalf("boot ids %v across %s, want only %s", r.BootIDs, what, g.BootID)
	}
	if len(r.Decreases) != 0 {
		t.Fatalf("the guest's counter went backwards across %s: %v", what, r.Decreases)
	}
	return r
}

// dump is every host's serve log tail and the tail of every guest serial
// log found on it.
func (p *Pool) dump(n int) string {
	var b strings.Builder
	for _, h := range p.Hosts {
		state := "not started"
		if sp := h.ServeProc(); sp != nil {
			state = fmt.Sprintf("pid %d", sp.Pid())
			if sp.Exited() {
				state += fmt.Sprintf(", exited: %v", sp.Err())
			}
		}
		fmt.Fprintf(&b, "===== %s (%s, ns %s, %s): %s\n%s\n", h.Name, h.IP, h.NS, state, h.ServeLog, h.LogTail(n))
		logs, _ := filepath.Glob(filepath.Join(h.DataDir, "logs", "*", "serial.log"))
		sort.Strings(logs)
		for _, l := range logs {
			fmt.Fprintf(&b, "----- %s serial log of %s:\n%s\n", h.Name, filepath.Base(filepath.Dir(l)), fileTail(l, 1500))
		}
	}
	if p.Client != nil && p.Client.DHCPServer() != nil {
		if leases, err := p.Client.Leases(context.Background()); err == nil {
			fmt.Fprintf(&b, "===== DHCP leases: %v\n", leases)
		}
	}
	return b.String()
}

func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > n {
		return "…" + string(b[len(b)-n:])
	}
	return string(b)
}

// QEMUs are the QEMU processes running in host's namespace (pid →
// command line), for leftover checks: a VM's QEMU has "guest=<name>," in
// its -name argument.
func (p *Pool) QEMUs(t testing.TB, host string) map[int]string {
	t.Helper()
	procs, err := p.Host(t, host).Processes()
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for pid, cmd := range procs {
		if strings.Contains(cmd, "qemu-system") {
			out[pid] = cmd
		}
	}
	return out
}

// QEMUOf is the pid of VM name's QEMU in host's namespace, 0 if none.
func (p *Pool) QEMUOf(t testing.TB, host, name string) int {
	t.Helper()
	for pid, cmd := range p.QEMUs(t, host) {
		if strings.Contains(cmd, "guest="+name+",") {
			return pid
		}
	}
	return 0
}

// WaitQEMUGone waits until no QEMU of VM name runs in host's namespace:
// a migrated VM's source QEMU goes in the cleaning phase, after the
// switch-over that ends the operation a caller waited for.
func (p *Pool) WaitQEMUGone(t testing.TB, host, name string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for pid := p.QEMUOf(t, host, name); pid != 0; pid = p.QEMUOf(t, host, name) {
		if time.Now().After(deadline) {
			t.Fatalf("a QEMU of %s still runs on %s after %v (pid %d)", name, host, d, pid)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// WaitVM polls host's API until VM name's observed state is one of states
// (and, when on != "", it runs on host on) and returns it.
func (p *Pool) WaitVM(t testing.TB, host, name, on string, d time.Duration, states ...string) v1.VM {
	t.Helper()
	return p.WaitVMUntil(t, host, name, d, fmt.Sprintf("one of %v on %q", states, on), func(v v1.VM) bool {
		return (on == "" || v.Status.Host == on) && slices.Contains(states, v.Status.State)
	})
}

// WaitVMUntil polls host's API every 50 ms until ok holds for VM name and
// returns it; want says what ok waits for (in the failure).
func (p *Pool) WaitVMUntil(t testing.TB, host, name string, d time.Duration, want string, ok func(v1.VM) bool) v1.VM {
	t.Helper()
	c := p.API(t, host)
	deadline := time.Now().Add(d)
	var last v1.VM
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		v, err := c.VM(ctx, name)
		cancel()
		last, lastErr = v, err
		if err == nil && ok(v) {
			return v
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("vm %s (asked %s): spec host %q, state %q on %q after %s, want %s (reason %q, err %v)",
		name, host, last.Spec.Host, last.Status.State, last.Status.Host, d, want, last.Status.Reason, lastErr)
	return last
}

var fetch = netlab.FetchStatus
