package pool_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/qemu"
)

// TestHostLocalWorkForwarded: every host's API answers for the guests on
// the other hosts. The serial log of each shared guest, asked from every
// host, is that guest's (its boot id, its hostname); the console of the
// guest on h2, attached through h1, is that guest's shell (it prints the
// guest's own boot id); h2's own pool listed through h1 holds h2's guest disk. The capacity overview on h1 counts every host's
// running guest and names the pool's fixed TCG CPU model, which the
// guests were given.
func TestHostLocalWorkForwarded(t *testing.T) {
	p := sharedPool(t)
	if !p.Joined {
		t.Skip("hosts are independent (this hangar has no serve --join): nothing to forward to")
	}
	guests := p.SharedGuests(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, g := range guests {
		for _, via := range p.Hosts {
			log, err := p.API(t, via.Name).ConsoleLog(ctx, g.Name)
			if err != nil {
				t.Fatalf("console log of %s (on %s) via %s: %v", g.Name, g.Host, via.Name, err)
			}
			want := fmt.Sprintf("HANGAR-GUEST-READY boot_id=%s hostname=%s", g.BootID, g.Name)
			if !strings.Contains(string(log), want) {
				t.Fatalf("console log of %s (on %s) via %s lacks %q:\n%s", g.Name, g.Host, via.Name, want, tail(log, 2000))
			}
		}
	}

	// Usage and history are read on the VM's (or the host's) own host,
	// whichever host is asked.
	for _, g := range guests {
		for _, via := range p.Hosts {
			u, err := p.API(t, via.Name).VMUsage(ctx, g.Name)
			if err != nil || u.CPUSeconds <= 0 || u.MemoryBytes <= 0 || u.DiskReadBytes <= 0 {
				t.Fatalf("usage of %s (on %s) via %s: %+v %v", g.Name, g.Host, via.Name, u, err)
			}
			if h, err := p.API(t, via.Name).VMHistory(ctx, g.Name); err != nil || h.Interval != 10 {
				t.Fatalf("history of %s (on %s) via %s: %+v %v", g.Name, g.Host, via.Name, h, err)
			}
		}
	}
	for _, h := range p.Hosts {
		if hh, err := p.API(t, "h1").HostHistory(ctx, h.Name); err != nil || hh.Interval != 10 {
			t.Fatalf("history of host %s via h1: %+v %v", h.Name, hh, err)
		}
	}

	var remote Guest
	for _, g := range guests {
		if g.Host != "h1" {
			remote = g
			break
		}
	}
	conn, err := p.API(t, "h1").Console(ctx, remote.Name)
	if err != nil {
		t.Fatalf("console of %s (on %s) via h1: %v", remote.Name, remote.Host, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(90 * time.Second))
	// The marker is computed by the guest's shell, so an echo of the typed
	// line cannot match it.
	if _, err := fmt.Fprintf(conn, "\necho fwd-$((6*7))-$(cat /proc/sys/kernel/random/boot_id)\n"); err != nil {
		t.Fatal(err)
	}
	want := "fwd-42-" + remote.BootID
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadString('\n')
		if strings.Contains(line, want) {
			break
		}
		if err != nil {
			t.Fatalf("console of %s via h1: no %q: %v", remote.Name, want, err)
		}
	}

	// A host's own pool, listed through h1: that host's guest disk, not h1's;
	// every host's own pool is in the pool list, with its host.
	pool := "local-" + remote.Host
	var vols []v1.Volume
	if out := p.CLI(t, "h1", "volume", "list", pool, "-o", "json"); json.Unmarshal([]byte(out), &vols) != nil {
		t.Fatalf("volume list %s: %s", pool, out)
	}
	var names []string
	for _, v := range vols {
		names = append(names, v.Pool+"/"+v.Name)
	}
	all := strings.Join(names, " ")
	if !strings.Contains(all, pool+"/vms/"+remote.Name+"/") || strings.Contains(all, "vms/g-h1/") {
		t.Fatalf("volume list %s via h1: %v, want %s's disk and not g-h1's", pool, names, remote.Name)
	}
	var pools []v1.StoragePool
	if out := p.CLI(t, "h1", "pool", "list", "-o", "json"); json.Unmarshal([]byte(out), &pools) != nil {
		t.Fatalf("pool list: %s", out)
	}
	own := map[string]string{}
	for _, sp := range pools {
		own[sp.Name] = sp.Host
	}
	for _, h := range p.Hosts {
		if own["local-"+h.Name] != h.Name {
			t.Errorf("pool list via h1: %+v, want local-%s of host %s", pools, h.Name, h.Name)
		}
	}

	out := p.CLI(t, "h1", "host", "list", "-o", "json")
	var capa v1.Capacity
	if err := json.Unmarshal([]byte(out), &capa); err != nil {
		t.Fatalf("host list -o json: %v\n%s", err, out)
	}
	if capa.Pool.CPUModel != qemu.TCGCPUModel || capa.Pool.HostsAlive != len(p.Hosts) || capa.Pool.VMStates[v1.StateRunning] < len(guests) {
		t.Fatalf("pool capacity: %+v", capa.Pool)
	}
	for _, h := range capa.Hosts {
		if h.VMStates[v1.StateRunning] < 1 || h.AllocatedCPUs < 1 || h.AllocatedMemoryMiB < 256 || len(h.Storage) == 0 {
			t.Errorf("host %s: running %d, booked %d vCPUs %d MiB, storage %v: want its guest counted", h.Name,
				h.VMStates[v1.StateRunning], h.AllocatedCPUs, h.AllocatedMemoryMiB, h.Storage)
		}
	}
	for _, g := range guests {
		v, err := p.API(t, "h1").VM(ctx, g.Name)
		if err != nil || v.Spec.CPUModel != qemu.TCGCPUModel {
			t.Errorf("guest %s cpu model %q (%v), want the pool's %s", g.Name, v.Spec.CPUModel, err, qemu.TCGCPUModel)
		}
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		return "…" + string(b[len(b)-n:])
	}
	return string(b)
}
