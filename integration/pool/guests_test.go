package pool_test

import (
	"context"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/netlab"
)

// TestBridgedGuests: a guest on each host's br0 takes an address from the
// client namespace's DHCP server through the switch, and the client reads
// its HTTP server there: the hostname and boot id it printed on its own
// serial console, and a counter that moves on.
func TestBridgedGuests(t *testing.T) {
	p := sharedPool(t)
	guests := p.SharedGuests(t)
	if len(guests) != len(p.Hosts) {
		t.Fatalf("%d shared guests for %d hosts", len(guests), len(p.Hosts))
	}
	seen := map[string]string{}
	for i, g := range guests {
		if g.Host != p.Hosts[i].Name {
			t.Errorf("guest %s runs on %s, want %s", g.Name, g.Host, p.Hosts[i].Name)
		}
		if b := g.IP.As4(); !p.Lab.Subnet.Contains(g.IP) || b[3] < netlab.DHCPFirst || b[3] > netlab.DHCPLast {
			t.Errorf("guest %s leased %s, outside the DHCP range of %s", g.Name, g.IP, p.Lab.Subnet)
		}
		if other, dup := seen[g.IP.String()]; dup {
			t.Errorf("guests %s and %s share %s", other, g.Name, g.IP)
		}
		seen[g.IP.String()] = g.Name
		for _, h := range p.Hosts { // its QEMU runs in its host's namespace, and only there
			if pid := p.QEMUOf(t, h.Name, g.Name); (pid != 0) != (h.Name == g.Host) {
				t.Errorf("QEMU of %s in %s: pid %d (the guest runs on %s)", g.Name, h.NS, pid, g.Host)
			}
		}
		p.WaitVM(t, g.Host, g.Name, g.Host, 10*time.Second, v1.StateRunning)
		st := p.GuestStatus(t, g)
		if st.Hostname != g.Name || st.BootID != g.BootID {
			t.Fatalf("guest at %s answered hostname=%s boot_id=%s, want %s %s (from its serial console)", g.IP, st.Hostname, st.BootID, g.Name, g.BootID)
		}
	}
	// From the client namespace every 20 ms: every answer comes, the
	// counter only goes up, the boot id stays.
	g := guests[len(guests)-1]
	poller := p.Poll(t, g)
	time.Sleep(1500 * time.Millisecond) // the counter moves on meanwhile
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := poller.WaitOK(ctx, 10); err != nil { // answers are slow on a busy machine: count, don't time
		t.Fatal(err)
	}
	r := poller.Stop()
	t.Log(r)
	if len(r.BootIDs) != 1 || r.BootIDs[0] != g.BootID || len(r.Decreases) != 0 || r.LastCounter <= r.FirstCounter {
		t.Fatalf("poll of %s: %s", g.Name, r)
	}
}

// TestPollerSeesPause: the poller in the client namespace measures a
// guest's pause (vm pause, 1.5 s, vm resume through another host's API)
// as its longest gap, and sees the same boot and a counter that went on.
func TestPollerSeesPause(t *testing.T) {
	p := sharedPool(t)
	g := p.SharedGuests(t)[1]
	other := p.Hosts[0].Name
	poller := p.Poll(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := poller.WaitOK(ctx, 5); err != nil {
		t.Fatal(err)
	}
	p.CLI(t, other, "vm", "pause", g.Name)
	paused := time.Now()
	time.Sleep(1500 * time.Millisecond)
	p.CLI(t, other, "vm", "resume", g.Name)
	resumed := time.Now()
	if err := poller.WaitOK(ctx, poller.Result().OK+5); err != nil {
		t.Fatal(err)
	}
	r := poller.Stop()
	t.Log(r)
	if r.LongestGap < 1500*time.Millisecond || r.LongestGap > resumed.Sub(paused)+2*time.Second {
		t.Errorf("longest gap %s, want the pause (%s between pause and resume returning)", r.LongestGap, resumed.Sub(paused).Round(time.Millisecond))
	}
	if r.LongestGapStart.After(paused) {
		t.Errorf("longest gap starts at %s, after the pause at %s", r.LongestGapStart, paused)
	}
	if len(r.BootIDs) != 1 || r.BootIDs[0] != g.BootID || len(r.Decreases) != 0 || r.LastCounter <= r.FirstCounter {
		t.Fatalf("poll of %s across a pause: %s", g.Name, r)
	}
}
