package pool_test

import (
	"context"
	"testing"
	"time"
)

// TestPowerLoss: a power loss of a guest's host (h3) kills its serve and the guest's QEMU (the guest stops
// answering the client), touches nothing of the other hosts, and the host
// comes back on its own data and is listed alive again.
func TestPowerLoss(t *testing.T) {
	p := sharedPool(t)
	g := p.BootGuest(t, "h3", "pl", nil)
	p.GuestStatus(t, g)
	victim := g.Host
	before := map[string]map[int]string{}
	for _, h := range p.Hosts {
		if h.Name == victim {
			continue
		}
		procs, err := h.Processes()
		if err != nil {
			t.Fatal(err)
		}
		before[h.Name] = procs
	}
	serve := p.Host(t, victim).ServeProc()
	p.PowerLoss(t, victim)
	if !serve.Exited() {
		t.Fatalf("%s's hangar serve survived its power loss", victim)
	}
	if q := p.QEMUs(t, victim); len(q) != 0 {
		t.Fatalf("QEMUs left on %s after its power loss: %v", victim, q)
	}
	hc := p.Client.Dialer().HTTPClient(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	if st, err := fetch(ctx, hc, g.URL); err == nil {
		t.Fatalf("guest on %s still answers after the power loss: %+v", victim, st)
	}
	cancel()
	for h, procs := range before {
		now, err := p.Host(t, h).Processes()
		if err != nil {
			t.Fatal(err)
		}
		for pid, cmd := range procs {
			if now[pid] != cmd {
				t.Errorf("power loss of %s ended %s's process %d (%s)", victim, h, pid, cmd)
			}
		}
	}
	p.Restart(t, victim) // waits until it lists itself alive
	if p.Joined {
		other := p.Hosts[0].Name
		if other == victim {
			other = p.Hosts[1].Name
		}
		deadline := time.Now().Add(time.Minute)
		for {
			hosts, err := p.API(t, other).Hosts(context.Background())
			alive := false
			for _, h := range hosts {
				alive = alive || (h.Name == victim && h.Alive)
			}
			if err == nil && alive {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not list %s alive after its restart: %+v %v", other, victim, hosts, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}
