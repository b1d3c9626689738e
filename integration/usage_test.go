package integration

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/client"
)

// TestVMUsage: a booted guest's usage (GET /vms/{name}/usage) shows CPU
// time, memory and disk reads, its CPU time grows, and the numbers agree
// with the VM's cgroup file and /metrics read between two usage reads; the
// host samples the guest's history (a 1 s interval here) and its own, and
// `hangar vm show` prints the usage.
func TestVMUsage(t *testing.T) {
	s := newServerArgs(t, "", "--history-interval", "1s")
	s.createGuest("usage", nil)
	s.waitReady("usage", 0)
	ctx := context.Background()

	u1, err := s.c.VMUsage(ctx, "usage")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("usage: %+v", u1)
	if u1.CPUSeconds <= 0 || u1.MemoryBytes <= 0 || u1.DiskReadBytes <= 0 || u1.DiskReadOps <= 0 {
		t.Fatalf("usage of a booted guest: %+v, want CPU, memory and disk reads > 0", u1)
	}
	fams := scrape(t, s)
	cg := cgroupFile("usage", "cpuacct", "cpuacct.usage", "cpu.stat") != ""
	var cgCPU float64
	if cg {
		cgCPU = float64(cpuNanos(t, "usage")) / 1e9
	}
	time.Sleep(3 * time.Second) // the guest's counter ticks every 100 ms: its CPU time grows
	u2, err := s.c.VMUsage(ctx, "usage")
	if err != nil {
		t.Fatal(err)
	}
	if u2.CPUSeconds <= u1.CPUSeconds || !u2.At.After(u1.At) {
		t.Errorf("CPU time did not grow: %v then %v", u1.CPUSeconds, u2.CPUSeconds)
	}
	disk := map[string]string{"vm": "usage", "disk": "disk0"}
	if m, ok := sample(fams, "hangar_vm_disk_read_bytes_total", disk); !ok || m < float64(u1.DiskReadBytes) || m > float64(u2.DiskReadBytes) {
		t.Errorf("/metrics disk read bytes %v (present %v), want between the usage reads %d and %d", m, ok, u1.DiskReadBytes, u2.DiskReadBytes)
	}
	if cg {
		if u1.Source != v1.UsageCgroup {
			t.Errorf("source %q with a cgroup, want cgroup", u1.Source)
		}
		if cgCPU < u1.CPUSeconds || cgCPU > u2.CPUSeconds {
			t.Errorf("cgroup CPU time %v s, want between the usage reads %v and %v", cgCPU, u1.CPUSeconds, u2.CPUSeconds)
		}
		if m, ok := sample(fams, "hangar_vm_cgroup_cpu_seconds_total", map[string]string{"vm": "usage"}); !ok || m < u1.CPUSeconds || m > u2.CPUSeconds {
			t.Errorf("/metrics cgroup CPU %v (present %v), want between %v and %v", m, ok, u1.CPUSeconds, u2.CPUSeconds)
		}
	} else {
		t.Logf("no cgroup for the VM here: CPU and memory from its process (source %q)", u1.Source)
	}

	// History: samples every second (the machine may be slow: wait long).
	var h v1.History
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if h, err = s.c.VMHistory(ctx, "usage"); err != nil {
			t.Fatal(err)
		}
		if len(h.Samples) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("history after 2 min: %+v", h)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if h.Interval != 1 {
		t.Errorf("interval %v, want 1", h.Interval)
	}
	busy := false
	for i, smp := range h.Samples {
		busy = busy || smp.CPUCores > 0
		if smp.MemoryBytes <= 0 || (i > 0 && smp.T < h.Samples[i-1].T) {
			t.Errorf("sample %d: %+v (previous %+v)", i, smp, h.Samples[max(i-1, 0)])
		}
	}
	if !busy {
		t.Errorf("no sample shows CPU use: %+v", h.Samples)
	}
	hh, err := s.c.HostHistory(ctx, "testhost")
	if err != nil {
		t.Fatal(err)
	}
	if len(hh.Samples) == 0 || hh.Samples[len(hh.Samples)-1].MemoryBytes <= 0 {
		t.Errorf("host history: %+v", hh)
	}
	var ae *v1.Error
	if _, err := s.c.HostHistory(ctx, "nosuchhost"); !errors.As(err, &ae) || ae.Code != v1.CodeNotFound {
		t.Errorf("history of an unknown host: %v, want not_found", err)
	}

	// The answers match openapi.yaml.
	s.getSpec(t, "GET", "/api/v1/vms/usage/usage", nil, 200)
	s.getSpec(t, "GET", "/api/v1/vms/usage/history", nil, 200)
	s.getSpec(t, "GET", "/api/v1/hosts/testhost/history", nil, 200)

	out := s.ok("vm", "show", "usage").stdout
	if !strings.Contains(out, "Usage:") || !strings.Contains(out, "Disk read:") {
		t.Errorf("vm show prints no usage:\n%s", out)
	}
	if out := s.ok("events", "--until-synced").stdout; !strings.Contains(out, "\nvm ") && !strings.HasPrefix(out, "vm ") || !strings.Contains(out, "synced ") || !strings.Contains(out, `"name":"usage"`) ||
		!strings.Contains(out, "\nhost ") || !strings.Contains(out, "\npool ") || !strings.Contains(out, `"master":"testhost"`) {
		t.Errorf("hangar events --until-synced:\n%s", out)
	}
	if out := s.ok("alerts").stdout; !strings.HasPrefix(out, "SEVERITY") {
		t.Errorf("hangar alerts:\n%s", out)
	}

	// The event stream through the real server's edge: the state with
	// the running VM, synced, then its stop as it happens.
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	es, err := s.c.Events(sctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	sawRunning := false
	for {
		e, err := es.Next()
		if err != nil {
			t.Fatalf("events before synced: %v", err)
		}
		if e.Name == v1.EventSynced {
			break
		}
		var v v1.VM
		if e.Name == v1.EventVM && json.Unmarshal(e.Data, &v) == nil && v.Spec.Name == "usage" {
			sawRunning = v.Status.State == v1.StateRunning
		}
	}
	if !sawRunning {
		t.Errorf("the stream's state lacks the running VM")
	}

	// A stopped VM has no usage: 412 naming it.
	s.action("usage", "stop", v1.StopArgs{Force: true})
	for {
		e, err := es.Next()
		if err != nil {
			t.Fatalf("events after the stop: %v", err)
		}
		var v v1.VM
		if e.Name == v1.EventVM && json.Unmarshal(e.Data, &v) == nil && v.Spec.Name == "usage" && v.Status.State == v1.StateStopped {
			break
		}
	}
	if _, err := s.c.VMUsage(ctx, "usage"); !errors.As(err, &ae) || ae.Code != v1.CodeFailedPrecondition || !strings.Contains(ae.Message, "usage") {
		t.Errorf("usage of a stopped VM: %v, want failed_precondition", err)
	}
}

// TestVMUsageBridged: a bridged guest in a network namespace (where the
// host may have no cgroups: then CPU and memory come from the QEMU
// process) reports CPU, memory, disk and its tap's traffic, which grows
// with HTTP requests to the guest and agrees with /metrics.
func TestVMUsageBridged(t *testing.T) {
	s, ns, _ := bootBridged(t, "tapuse")
	ctx := context.Background()
	guestStatusInNetns(t, ns)
	u1, err := s.c.VMUsage(ctx, "tapuse")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("usage in a netns: %+v", u1)
	if u1.CPUSeconds <= 0 || u1.MemoryBytes <= 0 || u1.DiskReadBytes <= 0 || u1.NetRxBytes <= 0 || u1.NetTxBytes <= 0 {
		t.Fatalf("usage: %+v, want CPU, memory, disk reads and network traffic > 0", u1)
	}
	if u1.Source != v1.UsageCgroup && u1.Source != v1.UsageProcess {
		t.Errorf("source %q", u1.Source)
	}
	for range 5 {
		guestStatusInNetns(t, ns)
	}
	fams := scrape(t, s)
	u2, err := s.c.VMUsage(ctx, "tapuse")
	if err != nil {
		t.Fatal(err)
	}
	nic := map[string]string{"vm": "tapuse", "nic": "net0"}
	rx, ok1 := sample(fams, "hangar_vm_network_receive_bytes_total", nic)
	tx, ok2 := sample(fams, "hangar_vm_network_transmit_bytes_total", nic)
	if !ok1 || !ok2 || rx <= float64(u1.NetRxBytes) || rx > float64(u2.NetRxBytes) || tx <= float64(u1.NetTxBytes) || tx > float64(u2.NetTxBytes) {
		t.Errorf("/metrics rx %v tx %v (present %v %v), want above the first usage read (%d, %d) and at most the second (%d, %d)",
			rx, tx, ok1, ok2, u1.NetRxBytes, u1.NetTxBytes, u2.NetRxBytes, u2.NetTxBytes)
	}
}

// TestCrashAlert: a guest whose QEMU is killed outside Hangar (restart
// policy never) raises a vm-crashed alert, in GET /alerts and on the event
// stream, which a start clears.
func TestCrashAlert(t *testing.T) {
	s := newServer(t)
	s.createGuest("dodo", func(sp *v1.VMSpec) { sp.RestartPolicy = v1.RestartNever })
	s.waitReady("dodo", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	es, err := s.c.Events(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	next := func(what string, ok func(e client.Event) bool) {
		t.Helper()
		for {
			e, err := es.Next()
			if err != nil {
				t.Fatalf("events, waiting for %s: %v", what, err)
			}
			if ok(e) {
				return
			}
		}
	}
	next("synced", func(e client.Event) bool { return e.Name == v1.EventSynced })
	v := s.waitState("dodo", 30*time.Second, v1.StateRunning)
	if err := syscall.Kill(v.Status.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	next("the crash alert", func(e client.Event) bool {
		var a v1.Alert
		return e.Name == v1.EventAlert && json.Unmarshal(e.Data, &a) == nil && a.ID == "vm-crashed/dodo" && a.Severity == v1.SeverityCritical
	})
	al, err := s.c.Alerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range al.Alerts {
		found = found || (a.ID == "vm-crashed/dodo" && a.Kind == v1.AlertVMCrashed && a.Target == "dodo" && strings.Contains(a.Message, "died"))
	}
	if !found {
		t.Errorf("alerts after the crash: %+v", al)
	}
	s.action("dodo", "start", nil)
	next("the alert cleared", func(e client.Event) bool {
		return e.Name == v1.EventAlertCleared && string(e.Data) == `{"id":"vm-crashed/dodo"}`
	})
	al, err = s.c.Alerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range al.Alerts {
		if a.Kind != v1.AlertStorageLow { // the machine's own disk may be low
			t.Errorf("alert after the start: %+v", a)
		}
	}
}
