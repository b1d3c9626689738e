package pool_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// TestHostList: `hangar host list -o json` on h1 lists every host of the
// pool, alive, each with the address of its --listen (a joined pool); an
// independent host lists only itself.
func TestHostList(t *testing.T) {
	p := sharedPool(t)
	want := []string{"h1"}
	if p.Joined {
		want = nil
		for _, h := range p.Hosts {
			want = append(want, h.Name)
		}
	}
	var hosts []v1.Host
	deadline := time.Now().Add(30 * time.Second) // a joined host's first facts may lag its start
	for {
		out := p.CLI(t, "h1", "host", "list", "-o", "json")
		var capacity v1.Capacity
		if err := json.Unmarshal([]byte(out), &capacity); err != nil {
			t.Fatalf("host list -o json: %v\n%s", err, out)
		}
		hosts = capacity.Hosts
		var alive []string
		for _, h := range hosts {
			if h.Alive {
				alive = append(alive, h.Name)
			}
		}
		slices.Sort(alive)
		if slices.Equal(alive, want) && len(hosts) == len(want) && capacity.Pool.HostsAlive == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host list on h1: %+v, want %v alive (joined %v)", hosts, want, p.Joined)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !p.Joined {
		t.Log("hosts are independent (this hangar has no serve --join): each lists only itself")
		return
	}
	for _, h := range hosts {
		if want := listenAddr(p.Host(t, h.Name)); h.Address != want {
			t.Errorf("host %s address %q, want %q", h.Name, h.Address, want)
		}
	}
}
