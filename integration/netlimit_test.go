package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/network"
)

// fetchRate GETs path from the bridged guest's httpd inside ns and returns
// the body's size and its rate in Mbit/s, timed from the first byte of the
// body to the last: what the guest sends through its NIC.
func fetchRate(t *testing.T, ns, path string) (int64, float64) {
	t.Helper()
	conn, err := dialInNetns(ns, "10.77.0.10:80")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Minute))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: guest\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		if strings.HasPrefix(l, "HTTP/") && !strings.Contains(l, " 200 ") {
			t.Fatalf("GET %s: %s", path, l)
		}
		if l == "\r\n" || l == "\n" {
			break
		}
	}
	if _, err := r.Peek(1); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		t.Fatalf("GET %s after %d bytes: %v", path, n, err)
	}
	return n, float64(n*8) / time.Since(t0).Seconds() / 1e6
}

// serveInNetns listens on 10.77.0.1 (the test bridge) inside ns and answers
// one HTTP request with size bytes; it reports the rate in Mbit/s from the
// request to the guest's closing the connection (it closes once it has
// every byte): what the guest receives through its NIC, measured by when
// the guest got it, not by when the host's socket took it.
func serveInNetns(t *testing.T, ns string, size int64) (port int, rate <-chan float64) {
	t.Helper()
	var ln net.Listener
	if err := inNetns(ns, func() (err error) { ln, err = net.Listen("tcp", "10.77.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	out := make(chan float64, 1)
	go func() {
		defer ln.Close()
		defer close(out)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Minute))
		r := bufio.NewReader(conn)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if l == "\r\n" || l == "\n" {
				break
			}
		}
		t0 := time.Now()
		fmt.Fprintf(conn, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", size)
		if _, err := io.CopyN(conn, zeros{}, size); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, r) // until the guest closes
		out <- float64(size*8) / time.Since(t0).Seconds() / 1e6
	}()
	return ln.Addr().(*net.TCPAddr).Port, out
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestNetLimit: a bridge NIC limited to 8 Mbit/s each way. The host fetches
// 4 MiB from the guest's httpd (the guest sends) and the guest wgets 2 MiB
// from the host (it receives): both at no more than about the limit
// (measured by the receiving side). A live change to 3 Mbit/s of what the
// guest sends holds the next fetch at that, on the same QEMU; the IFB goes
// with the VM.
func TestNetLimit(t *testing.T) {
	const name, limit, lower = "netcap", 8.0, 3.0
	s, ns, _ := bootBridged(t, name, func(sp *v1.VMSpec) { sp.NICs[0].Limits = &v1.NICLimits{Mbps: limit} })
	guestStatusInNetns(t, ns)
	tap := network.TapName(name, 0)
	var shape network.Shape
	if err := inNetns(ns, func() (err error) { shape, err = network.TapShape(tap); return err }); err != nil {
		t.Fatal(err)
	}
	if shape != (network.Shape{RxBits: 8e6, TxBits: 8e6}) {
		t.Fatalf("tap %s shaped %+v, want 8 Mbit/s both ways", tap, shape)
	}
	v := s.waitState(name, 10*time.Second, v1.StateRunning)
	if b, err := os.ReadFile(s.log); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if i := strings.Index(l, "dur="); i >= 0 && strings.Contains(l, `msg="limits applied"`) {
				t.Logf("at start: %s", l[i:])
			}
		}
	}
	s.consoleExpect(name, "dd if=/dev/zero of=/www/big bs=64k count=64 2>/dev/null; [ $(wc -c </www/big) = 4194304 ] && echo BIG-$((40+2))", regexp.MustCompile(`BIG-42`))

	n, rate := fetchRate(t, ns, "/big")
	t.Logf("nic limit %.0f Mbit/s: the guest sent %d bytes at %.2f Mbit/s (%.2f of the limit)", limit, n, rate, rate/limit)
	if n != 4<<20 || rate > 1.2*limit {
		t.Errorf("limited to %.0f Mbit/s, the guest sent %d bytes at %.2f Mbit/s", limit, n, rate)
	}

	port, rx := serveInNetns(t, ns, 2<<20)
	s.consoleExpect(name, fmt.Sprintf("[ -e /tmp/rx ] || { touch /tmp/rx; wget -q -O /dev/null http://10.77.0.1:%d/z; r=$?; echo RX-$((40+2))-$r; }", port), regexp.MustCompile(`RX-42-0`))
	got, ok := <-rx
	t.Logf("nic limit %.0f Mbit/s: the guest received 2 MiB at %.2f Mbit/s (%.2f of the limit)", limit, got, got/limit)
	if !ok || got > 1.2*limit {
		t.Errorf("limited to %.0f Mbit/s, the guest received at %.2f Mbit/s (%v)", limit, got, ok)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tx := lower
	vv, err := s.c.PatchVM(ctx, name, v1.VMPatch{NICs: map[string]v1.NICPatch{"0": {TxMbps: &tx}}})
	if err != nil {
		t.Fatalf("live nic limit: %v", err)
	}
	if l := vv.Spec.NICs[0].Limits; l == nil || l.Rx() != limit || l.Tx() != lower {
		t.Errorf("nic limits %+v after the live change, want rx %g tx %g", l, limit, lower)
	}
	n, rate = fetchRate(t, ns, "/big")
	t.Logf("after the live change to %.0f Mbit/s: the guest sent %d bytes at %.2f Mbit/s (%.2f of the limit)", lower, n, rate, rate/lower)
	if n != 4<<20 || rate > 1.2*lower {
		t.Errorf("limited live to %.0f Mbit/s, the guest sent %d bytes at %.2f Mbit/s", lower, n, rate)
	}
	if v2 := s.waitState(name, 10*time.Second, v1.StateRunning); v2.Status.PID != v.Status.PID {
		t.Fatalf("pid %d after a live change, want %d: the vm restarted", v2.Status.PID, v.Status.PID)
	}
	// Lifted live: the tap is unshaped and its IFB gone; the rate the
	// guest reaches then shows the limits above were what held it.
	zero := 0.0
	if vv, err = s.c.PatchVM(ctx, name, v1.VMPatch{NICs: map[string]v1.NICPatch{"0": {Mbps: &zero, TxMbps: &zero}}}); err != nil || vv.Spec.NICs[0].Limits != nil {
		t.Fatalf("lift the nic limits: %v (%+v)", err, vv.Spec.NICs[0].Limits)
	}
	if err := inNetns(ns, func() (err error) { shape, err = network.TapShape(tap); return err }); err != nil || shape != (network.Shape{}) {
		t.Errorf("tap %s shaped %+v after the lift (%v)", tap, shape, err)
	}
	if err := exec.Command("ip", "netns", "exec", ns, "ip", "link", "show", network.IFBName(tap)).Run(); err == nil {
		t.Errorf("ifb %s left after the lift", network.IFBName(tap))
	}
	n, rate = fetchRate(t, ns, "/big")
	t.Logf("unlimited: the guest sent %d bytes at %.2f Mbit/s", n, rate)

	// A NIC the VM lacks: refused, naming the field.
	_, err = s.c.PatchVM(ctx, name, v1.VMPatch{NICs: map[string]v1.NICPatch{"1": {TxMbps: &tx}}})
	if err == nil || !strings.Contains(err.Error(), "nics.1") {
		t.Errorf("a limit on a NIC the vm lacks: %v, want an error naming nics.1", err)
	}

	op, err := s.c.DeleteVM(ctx, name, true, time.Minute)
	if err == nil {
		_, err = s.c.Wait(ctx, op, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "netns", "exec", ns, "ip", "link", "show", network.IFBName(tap)).Run(); err == nil {
		t.Errorf("ifb %s left after delete", network.IFBName(tap))
	}
}
