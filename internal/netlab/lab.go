// Package netlab builds a test bed of several "hosts" on one machine: each
// host is a network namespace, joined by a veth pair to a bridge in a
// "switch" namespace, and carries a bridge br0 (its IP, its veth enslaved)
// for guests' taps, so every guest is on the switch's L2 and keeps its IP
// when it moves to another host. A client namespace runs the DHCP server
// (busybox udhcpd) for the guests and is where tests and benchmarks read
// the guests from (Dialer, Poll).
//
//	switch ns  hg<pid>-sw:  bridge "sw", ports h1 h2 … c1
//	host ns    hg<pid>-h1:  eth0 (veth, in br0), br0 10.99.k.1/24, guests' taps on br0
//	client ns  hg<pid>-c1:  eth0 10.99.k.200/24, udhcpd for .100–.199
//
// Everything a Lab makes (namespaces, processes, its directory) goes at
// Close, which is safe after a partial failure and idempotent. A power loss
// (PowerLoss) is kill -9 of every process in a host's namespace.
package netlab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config configures a Lab. The zero value is fine.
type Config struct {
	// Prefix starts every namespace name; default "hg<pid>" (with "l<n>"
	// added for the second and later labs of one process).
	Prefix string
	// Subnet is the lab's /24; default 10.99.<k>.0/24 with k not used by
	// another lab on this machine (a lock file held for the lab's life).
	Subnet netip.Prefix
	// Dir holds the lab's files (hosts' data, run dirs, logs, udhcpd
	// conf); default a new temporary directory, removed at Close.
	Dir string
	// Log receives the lab's own steps; default discards them.
	Log *slog.Logger
}

// Lab is one switch with the hosts and clients plugged into it.
type Lab struct {
	Prefix string
	Subnet netip.Prefix
	Dir    string
	Switch string // the switch namespace

	log     *slog.Logger
	ownDir  bool
	lock    *os.File
	slot    int // k of 10.99.k.0/24 when the lab picked it (-1 otherwise)
	mu      sync.Mutex
	nss     []string // namespaces made, in order
	hosts   []*Host
	clients []*Client
	procs   []*Proc
	closed  bool
}

var labs atomic.Int32

// ErrUnavailable is returned by Check and New when network namespaces
// cannot be used here (not root, iproute2 missing, no netns support).
var ErrUnavailable = errors.New("network namespaces unavailable")

// Check reports whether a Lab can work on this machine: root, ip
// (iproute2) and busybox (udhcpd), and a namespace that can be made.
func Check() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root (ip netns add)", ErrUnavailable)
	}
	for _, tool := range []string{"ip", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s not installed (iproute2, busybox-static)", ErrUnavailable, tool)
		}
	}
	ns := fmt.Sprintf("hg%d-check%d", os.Getpid(), labs.Load())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("%w: ip netns add: %v: %s", ErrUnavailable, err, strings.TrimSpace(string(out)))
	}
	_ = exec.Command("ip", "netns", "del", ns).Run()
	return nil
}

// New makes the switch namespace and its bridge.
func New(ctx context.Context, cfg Config) (_ *Lab, err error) {
	if err := Check(); err != nil {
		return nil, err
	}
	n := labs.Add(1)
	l := &Lab{Prefix: cfg.Prefix, Subnet: cfg.Subnet, Dir: cfg.Dir, log: cfg.Log, slot: -1}
	if l.log == nil {
		l.log = slog.New(slog.NewTextHandler(discard{}, nil))
	}
	defer func() {
		if err != nil {
			_ = l.Close()
		}
	}()
	if l.Prefix == "" {
		l.Prefix = fmt.Sprintf("hg%d", os.Getpid())
		if n > 1 {
			l.Prefix += fmt.Sprintf("l%d", n)
		}
	}
	if !nameRE.MatchString(l.Prefix) || len(l.Prefix) > 40 {
		return nil, fmt.Errorf("netlab: prefix %q: want [a-z0-9-], at most 40 characters", l.Prefix)
	}
	if err := l.pickSubnet(); err != nil {
		return nil, err
	}
	if l.Dir == "" {
		if l.Dir, err = os.MkdirTemp("", "hgl"); err != nil {
			return nil, fmt.Errorf("netlab: %w", err)
		}
		l.ownDir = true
	} else if err := os.MkdirAll(l.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	l.Switch = l.Prefix + "-sw"
	if err := l.addNS(ctx, l.Switch); err != nil {
		return nil, err
	}
	if err := l.ip(ctx, "-n", l.Switch, "link", "add", "sw", "type", "bridge"); err != nil {
		return nil, err
	}
	if err := l.ip(ctx, "-n", l.Switch, "link", "set", "sw", "up"); err != nil {
		return nil, err
	}
	l.log.Info("lab made", "prefix", l.Prefix, "subnet", l.Subnet, "dir", l.Dir)
	return l, nil
}

// nameRE is what host, client and prefix names may be: they become
// namespace and interface names.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// pickSubnet takes cfg.Subnet or the first free 10.99.k.0/24, holding a
// lock on k so that parallel test processes never share a subnet (or the
// uid ranges derived from it).
func (l *Lab) pickSubnet() error {
	dir := filepath.Join(os.TempDir(), "hangar-netlab")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	try := func(k int) (bool, error) {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", k)), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return false, fmt.Errorf("netlab: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			return false, nil
		}
		l.lock, l.slot = f, k
		return true, nil
	}
	if l.Subnet.IsValid() {
		if l.Subnet.Bits() != 24 || !l.Subnet.Addr().Is4() || l.Subnet.Masked() != l.Subnet {
			return fmt.Errorf("netlab: subnet %s: want an IPv4 /24 like 10.99.3.0/24", l.Subnet)
		}
		k := int(l.Subnet.Addr().As4()[2])
		if l.Subnet.Addr().As4()[0] == 10 && l.Subnet.Addr().As4()[1] == 99 {
			if ok, err := try(k); err != nil || !ok {
				return errors.Join(err, fmt.Errorf("netlab: subnet %s is used by another lab", l.Subnet))
			}
		}
		return nil
	}
	start := os.Getpid() % 250
	for i := 0; i < 250; i++ {
		k := (start + i) % 250
		ok, err := try(k)
		if err != nil {
			return err
		}
		if ok {
			l.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte(k), 0}), 24)
			return nil
		}
	}
	return errors.New("netlab: every 10.99.k.0/24 is used by another lab")
}

// Addr is the lab's address .n (1–254).
func (l *Lab) Addr(n int) netip.Addr {
	a := l.Subnet.Addr().As4()
	a[3] = byte(n)
	return netip.AddrFrom4(a)
}

// UIDRange is a --vm-uid-range for slot (0–15) of this lab, disjoint from
// every other lab's and slot's (and from inventory.DefaultIDRange).
// Independent hosts need one slot each (each has its own etcd, so each
// would hand out the same lowest uid); the hosts of one pool share a slot
// (the pool's etcd keeps ids unique, and a VM keeps its uid when it
// moves).
func (l *Lab) UIDRange(slot int) string {
	k := l.slot
	if k < 0 {
		k = int(l.Subnet.Addr().As4()[2])
	}
	first := 1_500_000_000 + (k*16+slot%16)*4096
	return fmt.Sprintf("%d-%d", first, first+4095)
}

// addNS makes a namespace and records it for Close.
func (l *Lab) addNS(ctx context.Context, ns string) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errors.New("netlab: lab is closed")
	}
	l.mu.Unlock()
	if err := l.ip(ctx, "netns", "add", ns); err != nil {
		return err
	}
	l.mu.Lock()
	l.nss = append(l.nss, ns)
	l.mu.Unlock()
	return l.ip(ctx, "-n", ns, "link", "set", "lo", "up")
}

// plug makes a veth pair: port in the switch (a port of bridge sw) and
// eth0 in ns.
func (l *Lab) plug(ctx context.Context, port, ns string) error {
	if err := l.ip(ctx, "-n", l.Switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns); err != nil {
		return err
	}
	return l.ip(ctx, "-n", l.Switch, "link", "set", port, "master", "sw", "up")
}

func (l *Lab) ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Hosts are the lab's hosts in the order added.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// Namespaces are the namespaces the lab made (and Close removes).
func (l *Lab) Namespaces() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.nss...)
}

// Close kills every process in the lab's namespaces, removes the
// namespaces and the lab's directory (when it made it) and frees its
// subnet. It is safe after a partial New and more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	nss, procs := l.nss, l.procs
	l.mu.Unlock()
	var errs []error
	for _, p := range procs {
		p.kill()
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if _, err := killNS(nss[i], 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Errorf("netlab: %s (pid %d) did not exit", p.Name, p.Pid()))
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if out, err := exec.Command("ip", "netns", "del", nss[i]).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("netlab: ip netns del %s: %v: %s", nss[i], err, strings.TrimSpace(string(out))))
		}
	}
	if l.ownDir && l.Dir != "" {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("netlab: %w", err))
		}
	}
	if l.lock != nil {
		l.lock.Close() // frees the flock
	}
	l.log.Info("lab closed", "prefix", l.Prefix, "namespaces", len(nss), "errors", len(errs))
	return errors.Join(errs...)
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }
