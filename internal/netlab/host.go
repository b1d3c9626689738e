package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"hangar/client"
)

// Host is a namespace with lo up, eth0 (its veth to the switch) enslaved
// to bridge br0, and br0 carrying the host's address. Each host has its own
// data, run and socket paths for `hangar serve`.
type Host struct {
	Name     string
	NS       string     // network namespace
	Index    int        // n of the address 10.99.k.n (1–9)
	IP       netip.Addr // on br0
	Dir      string     // the host's directory in the lab
	DataDir  string
	RunDir   string
	Socket   string // the API unix socket of its hangar serve (reachable from any namespace)
	ServeLog string

	lab   *Lab
	mu    sync.Mutex
	serve *Proc
}

// Bridge is the bridge guests' NICs go on in every host.
const Bridge = "br0"

// AddHost makes host name (lowercase letters, digits and '-', at most 12
// characters) at the next address .1, .2, … .9.
func (l *Lab) AddHost(ctx context.Context, name string) (*Host, error) {
	if !nameRE.MatchString(name) || len(name) > 12 || name == "sw" {
		return nil, fmt.Errorf("netlab: host name %q: want [a-z0-9-], at most 12 characters, not sw", name)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("netlab: lab is closed")
	}
	n := len(l.hosts) + 1
	for _, h := range l.hosts {
		if h.Name == name {
			l.mu.Unlock()
			return nil, fmt.Errorf("netlab: host %s exists", name)
		}
	}
	for _, c := range l.clients {
		if c.Name == name {
			l.mu.Unlock()
			return nil, fmt.Errorf("netlab: %s is a client", name)
		}
	}
	l.mu.Unlock()
	if n > 9 {
		return nil, errors.New("netlab: at most 9 hosts")
	}
	h := &Host{Name: name, NS: l.Prefix + "-" + name, Index: n, IP: l.Addr(n), lab: l, Dir: filepath.Join(l.Dir, name)}
	h.DataDir = filepath.Join(h.Dir, "data")
	h.RunDir = filepath.Join(h.Dir, "run")
	h.Socket = filepath.Join(h.RunDir, "h.sock")
	h.ServeLog = filepath.Join(h.Dir, "serve.log")
	for _, d := range []string{h.DataDir, h.RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("netlab: %w", err)
		}
	}
	if err := l.addNS(ctx, h.NS); err != nil {
		return nil, err
	}
	if err := l.plug(ctx, name, h.NS); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "add", Bridge, "type", "bridge"},
		{"link", "set", "eth0", "master", Bridge, "up"},
		{"addr", "add", h.IP.String() + "/24", "dev", Bridge},
		{"link", "set", Bridge, "up"},
	} {
		if err := l.ip(ctx, append([]string{"-n", h.NS}, args...)...); err != nil {
			return nil, err
		}
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	l.log.Info("host added", "host", name, "ns", h.NS, "ip", h.IP)
	return h, nil
}

// Host is the host named name, or nil.
func (l *Lab) Host(name string) *Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Client is the unix-socket API client of the host's hangar serve.
func (h *Host) Client() *client.Client { return client.New(h.Socket) }

// Dialer creates sockets inside the host's namespace.
func (h *Host) Dialer() *Dialer { return &Dialer{NS: h.NS} }

// Start runs argv in the host's namespace (ip netns exec NS argv…) with
// env added to this process's environment; its output goes to
// <host dir>/<base of argv[0]>.log. The lab kills it at Close.
func (h *Host) Start(ctx context.Context, argv, env []string) (*Proc, error) {
	if len(argv) == 0 {
		return nil, errors.New("netlab: start: empty argv")
	}
	return h.lab.start(ctx, h.NS, filepath.Join(h.Dir, filepath.Base(argv[0])+".log"), argv, env)
}

// Exec runs argv in the host's namespace and returns its combined output.
func (h *Host) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	return execIn(ctx, h.NS, argv...)
}

// ServeConfig is how Serve runs hangar serve.
type ServeConfig struct {
	Bin      string   // the hangar binary
	UIDRange string   // --vm-uid-range (see Lab.UIDRange); required
	Args     []string // more flags (--listen, --join, --accel, --import-dir …)
	Env      []string
	// Ready is how long Serve waits for the API to answer; default 60 s.
	Ready time.Duration
}

// Serve starts `hangar serve` in the host's namespace with the host's
// data, run dir and socket, --host <name>, debug logs appended to
// ServeLog, and waits until its API answers on the socket and lists the
// host alive (its agent has reported). After a
// PowerLoss or StopServe it starts again on the same state.
func (h *Host) Serve(ctx context.Context, cfg ServeConfig) (*Proc, error) {
	if cfg.Bin == "" || cfg.UIDRange == "" {
		return nil, errors.New("netlab: serve: Bin and UIDRange are required")
	}
	h.mu.Lock()
	if h.serve != nil && !h.serve.Exited() {
		h.mu.Unlock()
		return nil, fmt.Errorf("netlab: %s: hangar serve is running (pid %d)", h.Name, h.serve.Pid())
	}
	h.mu.Unlock()
	argv := append([]string{cfg.Bin, "serve", "--data-dir", h.DataDir, "--run-dir", h.RunDir, "--socket", h.Socket,
		"--host", h.Name, "--vm-uid-range", cfg.UIDRange, "--log-level", "debug"}, cfg.Args...)
	_ = os.Remove(h.Socket) // a power loss leaves the old one behind
	p, err := h.lab.start(ctx, h.NS, h.ServeLog, argv, cfg.Env)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.serve = p
	h.mu.Unlock()
	wait := cfg.Ready
	if wait == 0 {
		wait = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	c := h.Client()
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		hosts, err := c.Hosts(actx)
		acancel()
		if err == nil {
			for _, x := range hosts {
				if x.Name == h.Name && x.Alive {
					return p, nil
				}
			}
			err = fmt.Errorf("the API answers but does not list %s alive yet", h.Name)
		}
		select {
		case <-p.Done():
			return nil, fmt.Errorf("netlab: %s: hangar serve exited (%v) before its API answered:\n%s", h.Name, p.Err(), h.LogTail(3000))
		case <-ctx.Done():
			p.kill()
			return nil, fmt.Errorf("netlab: %s: hangar serve did not answer on %s: %v:\n%s", h.Name, h.Socket, err, h.LogTail(3000))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ServeProc is the host's current (or last) hangar serve, or nil.
func (h *Host) ServeProc() *Proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.serve
}

// StopServe ends hangar serve with SIGTERM (VMs keep running), SIGKILL
// after timeout.
func (h *Host) StopServe(timeout time.Duration) error {
	p := h.ServeProc()
	if p == nil {
		return nil
	}
	return p.Stop(timeout)
}

// PowerLoss is kill -9 of every process in the host's namespace (hangar
// serve, its QEMUs, anything started there) and only those; it returns
// once none is left and says how many it killed.
func (h *Host) PowerLoss() (int, error) {
	n, err := killNS(h.NS, 10*time.Second)
	if p := h.ServeProc(); p != nil {
		select {
		case <-p.Done():
		case <-time.After(5 * time.Second):
		}
	}
	h.lab.log.Info("power loss", "host", h.Name, "killed", n)
	return n, err
}

// AddTap makes tap device name on the host's br0 (for a QEMU the caller
// runs in the namespace itself, e.g. the raw-QEMU side of a benchmark:
// -netdev tap,ifname=NAME,script=no,downscript=no). It goes with the
// namespace at Close.
func (h *Host) AddTap(ctx context.Context, name string) error {
	if !nameRE.MatchString(name) || len(name) > 15 {
		return fmt.Errorf("netlab: tap name %q: want [a-z0-9-], at most 15 characters", name)
	}
	if err := h.lab.ip(ctx, "-n", h.NS, "tuntap", "add", "dev", name, "mode", "tap"); err != nil {
		return err
	}
	return h.lab.ip(ctx, "-n", h.NS, "link", "set", name, "master", Bridge, "up")
}

// Processes are the live processes in the host's namespace: pid → command
// line (arguments joined by spaces). Tests use it to look for leftovers
// (a QEMU that should be gone).
func (h *Host) Processes() (map[int]string, error) {
	pids, err := nsPids(h.NS)
	if err != nil {
		return nil, err
	}
	out := make(map[int]string, len(pids))
	for _, pid := range pids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
			out[pid] = strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out, nil
}

// PowerLoss is h.PowerLoss.
func (l *Lab) PowerLoss(h *Host) (int, error) { return h.PowerLoss() }

// LogTail is the last n bytes of the host's serve log.
func (h *Host) LogTail(n int) string { return fileTail(h.ServeLog, n) }

// SerialLog is where hangar serve on this host writes VM vm's serial
// console.
func (h *Host) SerialLog(vm string) string {
	return filepath.Join(h.DataDir, "logs", vm, "serial.log")
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

func execIn(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("netlab: in %s: %s: %v: %s", ns, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// CutManagement takes the host's address off br0: its management traffic
// (API, etcd, migrations) stops, while its guests' bridged traffic goes on
// through eth0 as before. RestoreManagement puts it back.
func (h *Host) CutManagement(ctx context.Context) error {
	return h.lab.ip(ctx, "-n", h.NS, "addr", "del", h.IP.String()+"/24", "dev", Bridge)
}

// RestoreManagement undoes CutManagement.
func (h *Host) RestoreManagement(ctx context.Context) error {
	return h.lab.ip(ctx, "-n", h.NS, "addr", "add", h.IP.String()+"/24", "dev", Bridge)
}

// SetFault switches test fault name on or off for a hangar serve started
// with --test-faults: a file of that name in <data dir>/test-faults (e.g.
// agent.HeartbeatCutFault).
func (h *Host) SetFault(name string, on bool) error {
	dir := filepath.Join(h.DataDir, "test-faults")
	if !on {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("netlab: %s: fault %s off: %w", h.Name, name, err)
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("netlab: %s: fault %s on: %w", h.Name, name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
		return fmt.Errorf("netlab: %s: fault %s on: %w", h.Name, name, err)
	}
	return nil
}
