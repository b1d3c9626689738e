package netlab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// Dialer creates sockets inside a network namespace, from this process:
// the socket is made on an OS thread switched into the namespace (setns
// CLONE_NEWNET) and the thread is switched back at once. A socket keeps
// the namespace it was made in, so the connection lives there.
type Dialer struct {
	NS string // name under /run/netns
}

// Dialer for any namespace by name.
func NewDialer(ns string) *Dialer { return &Dialer{NS: ns} }

// inNS runs f on a thread inside d.NS. If the thread cannot be switched
// back it stays locked, and Go ends it with the goroutine.
func (d *Dialer) inNS(f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: current namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(d.NS)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: namespace %s: %w", d.NS, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: enter namespace %s: %w", d.NS, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("netlab: leave namespace %s: %w", d.NS, err) // thread stays locked: discarded
	}
	runtime.UnlockOSThread()
	return ferr
}

// DialContext connects to addr (an IP and port: no name lookups) from
// inside the namespace.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := d.inNS(func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen listens on addr inside the namespace.
func (d *Dialer) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := d.inNS(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// HTTPClient is an HTTP client whose connections start in the namespace,
// one connection a request (no keep-alive: each request shows whether the
// peer can be reached now), each request bounded by timeout.
func (d *Dialer) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}
