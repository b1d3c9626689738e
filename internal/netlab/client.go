package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Client is a namespace on the switch (eth0 at .200, .201, …) from which
// tests reach guests. The first client also runs the guests' DHCP server,
// busybox udhcpd, handing out .100–.199.
type Client struct {
	Name string
	NS   string
	IP   netip.Addr
	Dir  string

	lab    *Lab
	dhcpd  *Proc // nil on clients after the first
	leases string
}

// AddClient makes client name (like AddHost's names).
func (l *Lab) AddClient(ctx context.Context, name string) (*Client, error) {
	if !nameRE.MatchString(name) || len(name) > 12 || name == "sw" {
		return nil, fmt.Errorf("netlab: client name %q: want [a-z0-9-], at most 12 characters, not sw", name)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("netlab: lab is closed")
	}
	n := len(l.clients)
	for _, h := range l.hosts {
		if h.Name == name {
			l.mu.Unlock()
			return nil, fmt.Errorf("netlab: %s is a host", name)
		}
	}
	for _, c := range l.clients {
		if c.Name == name {
			l.mu.Unlock()
			return nil, fmt.Errorf("netlab: client %s exists", name)
		}
	}
	l.mu.Unlock()
	if n > 9 {
		return nil, errors.New("netlab: at most 10 clients")
	}
	c := &Client{Name: name, NS: l.Prefix + "-" + name, IP: l.Addr(200 + n), lab: l, Dir: filepath.Join(l.Dir, name)}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	if err := l.addNS(ctx, c.NS); err != nil {
		return nil, err
	}
	if err := l.plug(ctx, name, c.NS); err != nil {
		return nil, err
	}
	if err := l.ip(ctx, "-n", c.NS, "addr", "add", c.IP.String()+"/24", "dev", "eth0"); err != nil {
		return nil, err
	}
	if err := l.ip(ctx, "-n", c.NS, "link", "set", "eth0", "up"); err != nil {
		return nil, err
	}
	if n == 0 {
		if err := c.startDHCP(ctx); err != nil {
			return nil, err
		}
	}
	l.mu.Lock()
	l.clients = append(l.clients, c)
	l.mu.Unlock()
	l.log.Info("client added", "client", name, "ns", c.NS, "ip", c.IP, "dhcp", n == 0)
	return c, nil
}

// DHCP range of every lab: .100–.199.
const (
	DHCPFirst = 100
	DHCPLast  = 199
)

func (c *Client) startDHCP(ctx context.Context) error {
	l := c.lab
	c.leases = filepath.Join(c.Dir, "udhcpd.leases")
	conf := filepath.Join(c.Dir, "udhcpd.conf")
	body := fmt.Sprintf(`interface eth0
start %s
end %s
max_leases %d
option subnet 255.255.255.0
option lease 3600
auto_time 1
lease_file %s
pidfile %s
`, l.Addr(DHCPFirst), l.Addr(DHCPLast), DHCPLast-DHCPFirst+1, c.leases, filepath.Join(c.Dir, "udhcpd.pid"))
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	if err := os.WriteFile(c.leases, nil, 0o600); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	// -a 100: the ARP probe before an offer waits 100 ms, not 2 s (the
	// switch is one hop; the guest waits ~2 s for a lease at boot).
	p, err := l.start(ctx, c.NS, filepath.Join(c.Dir, "udhcpd.log"), []string{"busybox", "udhcpd", "-f", "-a", "100", conf}, nil)
	if err != nil {
		return err
	}
	c.dhcpd = p
	select {
	case <-p.Done():
		return fmt.Errorf("netlab: udhcpd exited at once (%v): %s", p.Err(), fileTail(p.Log, 2000))
	case <-time.After(100 * time.Millisecond):
		return nil
	}
}

// DHCPServer is the client's udhcpd (nil on clients without it).
func (c *Client) DHCPServer() *Proc { return c.dhcpd }

// Dialer creates sockets inside the client's namespace.
func (c *Client) Dialer() *Dialer { return &Dialer{NS: c.NS} }

// Exec runs argv in the client's namespace and returns its output.
func (c *Client) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	return execIn(ctx, c.NS, argv...)
}

// Lease is one DHCP lease of udhcpd.
type Lease struct {
	MAC      string
	IP       netip.Addr
	Hostname string // what the DHCP client sent (the test guest sends its own)
}

// Leases are udhcpd's current leases (it writes them out first).
func (c *Client) Leases(ctx context.Context) ([]Lease, error) {
	if c.dhcpd == nil {
		return nil, fmt.Errorf("netlab: client %s runs no DHCP server", c.Name)
	}
	if c.dhcpd.Exited() {
		return nil, fmt.Errorf("netlab: udhcpd exited (%v): %s", c.dhcpd.Err(), fileTail(c.dhcpd.Log, 2000))
	}
	before, _ := os.Stat(c.leases)
	_ = c.dhcpd.Signal(syscall.SIGUSR1) // write the lease file now
	for i := 0; i < 10; i++ {           // until rewritten (or 100 ms)
		if st, err := os.Stat(c.leases); err == nil && (before == nil || !st.ModTime().Equal(before.ModTime())) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// udhcpd rewrites the file in place: a read in the middle of it fails
	// ("dumpleases: short read"); read again.
	var out []byte
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if out, err = execIn(ctx, c.NS, "busybox", "dumpleases", "-f", c.leases); err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	return parseLeases(string(out))
}

// parseLeases reads dumpleases' table: a header, then
// "MAC IP [HOSTNAME] EXPIRES" lines.
func parseLeases(s string) ([]Lease, error) {
	var out []Lease
	for i, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 3 {
			continue
		}
		ip, err := netip.ParseAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("netlab: dumpleases line %q: %w", line, err)
		}
		l := Lease{MAC: strings.ToLower(f[0]), IP: ip}
		if len(f) >= 4 {
			l.Hostname = f[2]
		}
		out = append(out, l)
	}
	return out, nil
}

// WaitLease waits until udhcpd holds a lease for hostname (and mac, when
// not ""; the last such lease when several) and returns its address.
func (c *Client) WaitLease(ctx context.Context, hostname, mac string) (netip.Addr, error) {
	mac = strings.ToLower(mac)
	for {
		leases, err := c.Leases(ctx)
		if err != nil {
			return netip.Addr{}, err
		}
		var found netip.Addr
		for _, l := range leases {
			if l.Hostname == hostname && (mac == "" || l.MAC == mac) {
				found = l.IP
			}
		}
		if found.IsValid() {
			return found, nil
		}
		select {
		case <-ctx.Done():
			return netip.Addr{}, fmt.Errorf("netlab: no DHCP lease for %s (mac %q): %w; leases %v", hostname, mac, ctx.Err(), leases)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
