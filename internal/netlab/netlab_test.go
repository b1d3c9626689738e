package netlab

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func newLab(t *testing.T) *Lab {
	t.Helper()
	if err := Check(); err != nil {
		t.Skipf("SKIP: netlab cannot work here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := New(ctx, Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		assertGone(t, l)
	})
	return l
}

// assertGone checks that no namespace of the lab is left.
func assertGone(t *testing.T, l *Lab) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range l.Namespaces() {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == ns {
				t.Errorf("namespace %s left after Close", ns)
			}
		}
	}
	if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
		t.Errorf("lab dir %s left after Close: %v", l.Dir, err)
	}
}

// fakeGuest serves a test guest's /cgi-bin/status whose answers the test
// steers: counter (read when a request arrives), boot id, a pause (every
// request waits until it is over, as with a paused VM) and jitter (each
// answer is delayed by up to that much after its counter is read, so
// answers of overlapping requests arrive out of order).
type fakeGuest struct {
	mu         sync.Mutex
	counter    int
	bootID     string
	pauseUntil time.Time
	jitter     time.Duration
	zeroOnce   bool // the next answer says counter=0
	n          int
}

func (g *fakeGuest) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	wait := time.Until(g.pauseUntil)
	g.mu.Unlock()
	time.Sleep(wait)
	g.mu.Lock()
	g.counter++
	g.n++
	c, b := g.counter, g.bootID
	if g.zeroOnce {
		c, g.zeroOnce = 0, false
	}
	var delay time.Duration
	if g.jitter > 0 {
		delay = time.Duration(g.n*7919%97) * g.jitter / 97
	}
	g.mu.Unlock()
	time.Sleep(delay)
	fmt.Fprintf(w, "hostname=fake\nboot_id=%s\ncounter=%d\ndisk_counter=1\nmarker=\n", b, c)
}

func (g *fakeGuest) set(f func(*fakeGuest)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

// TestLab: hosts and a client on one switch reach each other; the
// client's udhcpd leases an address to a DHCP client on a host's br0; a
// poller in the client namespace reads a status server in a host
// namespace and records gaps, boot ids and counter decreases; a power
// loss kills exactly the host's processes; Close leaves nothing.
func TestLab(t *testing.T) {
	l := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h1, err := l.AddHost(ctx, "h1")
	if err != nil {
		t.Fatal(err)
	}
	h2, err := l.AddHost(ctx, "h2")
	if err != nil {
		t.Fatal(err)
	}
	c1, err := l.AddClient(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddHost(ctx, "h1"); err == nil {
		t.Error("a second host h1 was accepted")
	}
	if _, err := l.AddHost(ctx, "Bad_Name"); err == nil {
		t.Error("host name Bad_Name was accepted")
	}
	if h1.IP != l.Addr(1) || h2.IP != l.Addr(2) || c1.IP != l.Addr(200) {
		t.Fatalf("addresses %s %s %s, want .1 .2 .200 of %s", h1.IP, h2.IP, c1.IP, l.Subnet)
	}
	if !strings.HasPrefix(h1.NS, fmt.Sprintf("hg%d", os.Getpid())) {
		t.Errorf("namespace %s does not start with hg<pid>", h1.NS)
	}
	if out, err := h1.Exec(ctx, "ip", "-o", "link", "show", "eth0"); err != nil || !strings.Contains(string(out), "master br0") {
		t.Fatalf("h1's veth is not in br0: %v %s", err, out)
	}
	if out, err := h1.Exec(ctx, "ip", "-o", "-4", "addr", "show", "br0"); err != nil || !strings.Contains(string(out), h1.IP.String()+"/24") {
		t.Fatalf("br0 of h1 does not carry %s: %v %s", h1.IP, err, out)
	}
	if err := h2.AddTap(ctx, "tap-x"); err != nil {
		t.Fatal(err)
	}
	if out, err := h2.Exec(ctx, "ip", "-o", "link", "show", "tap-x"); err != nil || !strings.Contains(string(out), "master br0") {
		t.Fatalf("tap-x is not on h2's br0: %v %s", err, out)
	}
	// L2 between hosts and the client through the switch.
	if out, err := h1.Exec(ctx, "busybox", "ping", "-c", "1", "-W", "5", h2.IP.String()); err != nil {
		t.Fatalf("h1 cannot reach h2: %v %s", err, out)
	}
	if out, err := c1.Exec(ctx, "busybox", "ping", "-c", "1", "-W", "5", h1.IP.String()); err != nil {
		t.Fatalf("c1 cannot reach h1: %v %s", err, out)
	}
	t.Run("dhcp", func(t *testing.T) {
		// A DHCP client on h1's br0, as a guest's tap on it would be.
		if out, err := h1.Exec(ctx, "busybox", "udhcpc", "-i", "br0", "-n", "-q", "-t", "5", "-T", "1",
			"-x", "hostname:probe", "-s", "/bin/true"); err != nil {
			t.Fatalf("udhcpc on h1: %v\n%s\nudhcpd log: %s", err, out, fileTail(c1.DHCPServer().Log, 2000))
		}
		wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
		defer wcancel()
		ip, err := c1.WaitLease(wctx, "probe", "")
		if err != nil {
			t.Fatal(err)
		}
		if b := ip.As4(); !l.Subnet.Contains(ip) || b[3] < DHCPFirst || b[3] > DHCPLast {
			t.Fatalf("lease %s outside %s .%d–.%d", ip, l.Subnet, DHCPFirst, DHCPLast)
		}
	})

	t.Run("poll", func(t *testing.T) {
		g := &fakeGuest{bootID: "boot-a"}
		ln, err := h2.Dialer().Listen("tcp", netip.AddrPortFrom(h2.IP, 8080).String())
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: g}
		go srv.Serve(ln)
		defer srv.Close()
		url := fmt.Sprintf("http://%s:8080/cgi-bin/status", h2.IP)
		st, err := FetchStatus(ctx, c1.Dialer().HTTPClient(time.Second), url)
		if err != nil || st.BootID != "boot-a" || st.Hostname != "fake" {
			t.Fatalf("fetch from the client: %+v %v", st, err)
		}
		// Answers out of order (overlapping requests): no false decrease.
		g.set(func(g *fakeGuest) { g.jitter = 80 * time.Millisecond })
		p := Poll(ctx, c1.Dialer(), url, 20*time.Millisecond)
		if err := p.WaitOK(ctx, 30); err != nil {
			t.Fatal(err)
		}
		if r := p.Result(); len(r.Decreases) != 0 || r.Failures != 0 {
			t.Fatalf("jittered answers: %s: decreases %+v", r, r.Decreases)
		}
		// A torn read of the guest's counter file (counter=0, same boot):
		// counted apart, no decrease.
		g.set(func(g *fakeGuest) { g.zeroOnce = true })
		if err := p.WaitOK(ctx, p.Result().OK+3); err != nil {
			t.Fatal(err)
		}
		if r := p.Result(); r.TornReads != 1 || len(r.Decreases) != 0 {
			t.Fatalf("torn read: %s: %d torn, decreases %+v", r, r.TornReads, r.Decreases)
		}
		// A 400 ms pause: the longest gap is the pause (give or take a tick).
		g.set(func(g *fakeGuest) { g.jitter = 0 })
		time.Sleep(150 * time.Millisecond) // the jittered answers are in
		g.set(func(g *fakeGuest) { g.pauseUntil = time.Now().Add(400 * time.Millisecond) })
		time.Sleep(600 * time.Millisecond)
		// A step back of the counter, and another boot.
		g.set(func(g *fakeGuest) { g.counter = 0; g.bootID = "boot-b" })
		if err := p.WaitOK(ctx, p.Result().OK+5); err != nil {
			t.Fatal(err)
		}
		r := p.Stop()
		t.Log(r)
		if r.LongestGap < 380*time.Millisecond || r.LongestGap > 700*time.Millisecond {
			t.Errorf("longest gap %s, want about the 400 ms pause", r.LongestGap)
		}
		if r.LongestGapStart.Before(r.Started) || r.LongestGapStart.After(r.Ended) {
			t.Errorf("gap start %s outside the poll", r.LongestGapStart)
		}
		if len(r.Decreases) != 1 || r.Decreases[0].To != 1 {
			t.Errorf("decreases %+v, want one to 1", r.Decreases)
		}
		if len(r.BootIDs) != 2 || r.BootIDs[0] != "boot-a" || r.BootIDs[1] != "boot-b" {
			t.Errorf("boot ids %v, want [boot-a boot-b]", r.BootIDs)
		}
		if r.Failures != 0 {
			t.Errorf("%d failures: %s", r.Failures, r.FirstErr)
		}
		// A peer that stops answering: failures, and the gap runs to the end.
		srv.Close()
		p = PollWith(ctx, c1.Dialer(), url, PollOptions{Every: 20 * time.Millisecond, Timeout: 200 * time.Millisecond})
		time.Sleep(300 * time.Millisecond)
		if r := p.Stop(); r.OK != 0 || r.Failures == 0 {
			t.Errorf("poll of a closed server: %s", r)
		}
	})

	t.Run("powerloss", func(t *testing.T) {
		p1, err := h1.Start(ctx, []string{"sh", "-c", "sleep 600 & sleep 600 & wait"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		p2, err := h2.Start(ctx, []string{"sleep", "600"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		outside := exec.Command("sleep", "600") // in the test's own namespace
		if err := outside.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = outside.Process.Kill(); _ = outside.Wait() }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			pids, err := nsPids(h1.NS)
			if err != nil {
				t.Fatal(err)
			}
			if len(pids) == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("h1 has processes %v, want sh and two sleeps", pids)
			}
			time.Sleep(20 * time.Millisecond)
		}
		procs, err := h1.Processes()
		if err != nil || len(procs) != 3 || procs[p1.Pid()] != "sh -c sleep 600 & sleep 600 & wait" {
			t.Fatalf("processes of h1: %v %v", procs, err)
		}
		n, err := h1.PowerLoss()
		if err != nil || n != 3 {
			t.Fatalf("power loss killed %d (%v), want 3", n, err)
		}
		if pids, _ := nsPids(h1.NS); len(pids) != 0 {
			t.Fatalf("processes %v left in h1", pids)
		}
		select {
		case <-p1.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("h1's process not reaped")
		}
		if p2.Exited() || syscall.Kill(outside.Process.Pid, 0) != nil {
			t.Fatal("power loss of h1 killed a process outside h1")
		}
		if err := p2.Stop(5 * time.Second); err != nil {
			t.Error(err)
		}
	})

	t.Run("close", func(t *testing.T) {
		p, err := h2.Start(ctx, []string{"sleep", "600"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if !p.Exited() {
			t.Error("a process of the lab outlived Close")
		}
		assertGone(t, l)
		if _, err := l.AddHost(ctx, "h9"); err == nil {
			t.Error("AddHost on a closed lab")
		}
	})
}

// TestLabsApart: two labs of one process get distinct prefixes, subnets
// and uid ranges; a bad config fails and leaves nothing.
func TestLabsApart(t *testing.T) {
	a, b := newLab(t), newLab(t)
	if a.Prefix == b.Prefix || a.Subnet == b.Subnet || a.UIDRange(0) == b.UIDRange(0) || a.UIDRange(0) == a.UIDRange(1) {
		t.Fatalf("labs share names: %s %s, %s %s, %s %s %s", a.Prefix, b.Prefix, a.Subnet, b.Subnet, a.UIDRange(0), b.UIDRange(0), a.UIDRange(1))
	}
	ctx := context.Background()
	if _, err := New(ctx, Config{Subnet: a.Subnet}); err == nil {
		t.Errorf("a second lab on %s was accepted", a.Subnet)
	}
	if _, err := New(ctx, Config{Prefix: "Bad Prefix"}); err == nil {
		t.Error("prefix with a space was accepted")
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), "Bad Prefix") {
		t.Error("a failed New left a namespace")
	}
}

func TestParseLeases(t *testing.T) {
	out := "Mac Address       IP Address      Host Name           Expires in\n" +
		"52:54:00:ab:cd:ef 10.99.3.100     web                 00:59:58\n" +
		"52:54:00:ab:cd:f0 10.99.3.101                         00:59:59\n"
	ls, err := parseLeases(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []Lease{{MAC: "52:54:00:ab:cd:ef", IP: netip.MustParseAddr("10.99.3.100"), Hostname: "web"},
		{MAC: "52:54:00:ab:cd:f0", IP: netip.MustParseAddr("10.99.3.101")}}
	if fmt.Sprint(ls) != fmt.Sprint(want) {
		t.Fatalf("leases %v, want %v", ls, want)
	}
	if _, err := parseLeases("header\nxx not-an-ip host 00:00:01\n"); err == nil {
		t.Error("a bad address was accepted")
	}
}

func TestParseStatus(t *testing.T) {
	st, err := parseStatus(map[string]string{"hostname": "web", "boot_id": "b1", "counter": "12", "disk_counter": "3"})
	if err != nil || st != (GuestStatus{Hostname: "web", BootID: "b1", Counter: 12, DiskCounter: 3}) {
		t.Fatalf("%+v %v", st, err)
	}
	for _, kv := range []map[string]string{{"boot_id": "b", "counter": "x"}, {"counter": "1"}} {
		if _, err := parseStatus(kv); err == nil {
			t.Errorf("status %v accepted", kv)
		}
	}
}

// TestPollerCounters: both counters are compared only with answers that
// completed before a request started; a step back is one decrease, a disk
// counter of 0 (none read) is not compared.
func TestPollerCounters(t *testing.T) {
	p := &Poller{floor: -1, dfloor: -1, keep: 2 * time.Second}
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	for _, a := range []struct {
		start, end    int
		counter, disk int
	}{
		{0, 10, 5, 2},
		{20, 30, 6, 3},
		{25, 40, 5, 2}, // started before the answer of 6/3 completed: no decrease
		{50, 60, 7, 0}, // no disk counter read
		{70, 80, 8, 1}, // the disk counter went back
		{90, 100, 9, 2},
		{110, 120, 4, 3}, // the counter went back
		{130, 140, 5, 4},
	} {
		p.record(at(a.start), at(a.end), GuestStatus{BootID: "b", Counter: a.counter, DiskCounter: a.disk}, nil)
	}
	r := p.Result()
	if len(r.Decreases) != 1 || r.Decreases[0].From != 9 || r.Decreases[0].To != 4 {
		t.Errorf("counter decreases %+v, want one 9→4", r.Decreases)
	}
	if len(r.DiskDecreases) != 1 || r.DiskDecreases[0].From != 3 || r.DiskDecreases[0].To != 1 {
		t.Errorf("disk counter decreases %+v, want one 3→1", r.DiskDecreases)
	}
	if r.FirstDiskCounter != 2 || r.LastDiskCounter != 4 {
		t.Errorf("disk counter %d→%d, want 2→4", r.FirstDiskCounter, r.LastDiskCounter)
	}
}
