package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	v1 "hangar/api/v1"
)

// scrape reads /metrics, lints it with promlint and parses it.
func scrape(t *testing.T, s *server) map[string]*dto.MetricFamily {
	t.Helper()
	text, err := s.c.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	probs, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("lint /metrics: %v", err)
	}
	for _, p := range probs {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// sample returns the value of the family's metric whose labels include
// want, and whether there is one.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// TestVMMetrics: /metrics reports a running guest's CPU time, memory, disk
// reads and its NIC's traffic (which grows when the guest serves HTTP),
// every VM state (0 when empty), and the host's VM count drops as soon as
// the VM is deleted. The output passes promlint.
func TestVMMetrics(t *testing.T) {
	s, ns, bootID := bootBridged(t, "meter")
	ctx := context.Background()
	if body := guestStatusInNetns(t, ns); !strings.Contains(body, "boot_id="+bootID) {
		t.Fatalf("guest answered %q, want its boot id %s", body, bootID)
	}

	vmL := map[string]string{"vm": "meter"}
	disk := map[string]string{"vm": "meter", "disk": "disk0"} // the first disk's default name
	nic := map[string]string{"vm": "meter", "nic": "net0"}
	fams := scrape(t, s)
	for _, st := range []string{v1.StateRunning, v1.StateSuspended, v1.StateStopped, v1.StateCrashed, v1.StateError} {
		want := 0.0
		if st == v1.StateRunning {
			want = 1
		}
		if got, ok := sample(fams, "hangar_vms", map[string]string{"state": st}); !ok || got != want {
			t.Errorf("hangar_vms{state=%q} = %v (present %v), want %v", st, got, ok, want)
		}
	}
	if got, ok := sample(fams, "hangar_vm_cpu_seconds_total", vmL); !ok || got <= 0 {
		t.Errorf("cpu seconds of the guest = %v (present %v), want > 0", got, ok)
	}
	if got, ok := sample(fams, "hangar_vm_memory_resident_bytes", vmL); !ok || got < 16<<20 {
		t.Errorf("resident memory of the guest = %v (present %v), want > 16 MiB", got, ok)
	}
	if got, ok := sample(fams, "hangar_vm_disk_read_bytes_total", disk); !ok || got <= 0 {
		t.Errorf("disk read bytes after boot = %v (present %v), want > 0; families: %v", got, ok, fams["hangar_vm_disk_read_bytes_total"])
	}
	if got, ok := sample(fams, "hangar_vm_disk_reads_total", disk); !ok || got <= 0 {
		t.Errorf("disk reads after boot = %v (present %v), want > 0", got, ok)
	}
	if got, ok := sample(fams, "hangar_host_vms", map[string]string{"host": "testhost"}); !ok || got != 1 {
		t.Errorf("hangar_host_vms = %v (present %v), want 1", got, ok)
	}
	// The capacity overview: the running guest's vCPUs and memory are booked
	// on its host and on the pool; the host's storage is reported.
	v, err := s.c.VM(ctx, "meter")
	if err != nil {
		t.Fatal(err)
	}
	hostL := map[string]string{"host": "testhost"}
	if got, ok := sample(fams, "hangar_host_vcpus_allocated", hostL); !ok || got != float64(v.Spec.CPUs) {
		t.Errorf("hangar_host_vcpus_allocated = %v (present %v), want %d", got, ok, v.Spec.CPUs)
	}
	if got, ok := sample(fams, "hangar_pool_memory_allocated_bytes", nil); !ok || got != float64(v.Spec.MemoryMiB)*(1<<20) {
		t.Errorf("hangar_pool_memory_allocated_bytes = %v (present %v), want %d MiB", got, ok, v.Spec.MemoryMiB)
	}
	if got, ok := sample(fams, "hangar_host_state", map[string]string{"host": "testhost", "state": v1.HostAlive}); !ok || got != 1 {
		t.Errorf("hangar_host_state{alive} = %v (present %v), want 1", got, ok)
	}
	if got, ok := sample(fams, "hangar_host_vms_in_state", map[string]string{"host": "testhost", "state": v1.StateRunning}); !ok || got != 1 {
		t.Errorf("hangar_host_vms_in_state{running} = %v (present %v), want 1", got, ok)
	}
	if got, ok := sample(fams, "hangar_storage_pool_free_bytes", map[string]string{"pool": "local-testhost"}); !ok || got <= 0 {
		t.Errorf("hangar_storage_pool_free_bytes{default} = %v (present %v), want > 0", got, ok)
	}
	rx0, ok1 := sample(fams, "hangar_vm_network_receive_bytes_total", nic)
	tx0, ok2 := sample(fams, "hangar_vm_network_transmit_bytes_total", nic)
	if !ok1 || !ok2 {
		t.Fatalf("no network counters for the guest's NIC: %v", fams["hangar_vm_network_receive_bytes_total"])
	}
	rxp0, _ := sample(fams, "hangar_vm_network_receive_packets_total", nic)
	txp0, _ := sample(fams, "hangar_vm_network_transmit_packets_total", nic)
	const requests = 5
	for range requests {
		guestStatusInNetns(t, ns)
	}
	fams = scrape(t, s)
	rx1, _ := sample(fams, "hangar_vm_network_receive_bytes_total", nic)
	tx1, _ := sample(fams, "hangar_vm_network_transmit_bytes_total", nic)
	rxp1, _ := sample(fams, "hangar_vm_network_receive_packets_total", nic)
	txp1, _ := sample(fams, "hangar_vm_network_transmit_packets_total", nic)
	if rxp1-rxp0 < requests*3 || txp1-txp0 < requests*3 {
		t.Errorf("after %d HTTP requests the NIC's packet counters grew by rx %v tx %v, want >= %d each", requests, rxp1-rxp0, txp1-txp0, requests*3)
	}
	// Each request is at least a SYN, a GET line and a FIN in, and an
	// answer of ~100 bytes out.
	if rx1-rx0 < requests*100 || tx1-tx0 < requests*100 {
		t.Errorf("after %d HTTP requests the NIC's counters grew by rx %v tx %v bytes, want >= %d each", requests, rx1-rx0, tx1-tx0, requests*100)
	}
	if _, ok := sample(fams, "hangar_operation_duration_seconds", map[string]string{"kind": "create", "result": v1.OpSucceeded}); !ok {
		// histograms are neither counter nor gauge: look at the family
		f := fams["hangar_operation_duration_seconds"]
		found := false
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.Label {
				l[p.GetName()] = p.GetValue()
			}
			if l["kind"] == "create" && l["result"] == v1.OpSucceeded && m.Histogram.GetSampleCount() >= 1 {
				found = true
			}
		}
		if !found {
			t.Errorf("no create/succeeded observation in hangar_operation_duration_seconds: %v", f)
		}
	}

	op, err := s.c.DeleteVM(ctx, "meter", true, time.Minute)
	if err == nil {
		_, err = s.c.Wait(ctx, op, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	fams = scrape(t, s)
	if got, ok := sample(fams, "hangar_host_vms", map[string]string{"host": "testhost"}); !ok || got != 0 {
		t.Errorf("hangar_host_vms right after the delete = %v (present %v), want 0", got, ok)
	}
	if got, _ := sample(fams, "hangar_vms", map[string]string{"state": v1.StateRunning}); got != 0 {
		t.Errorf("hangar_vms{state=running} after the delete = %v, want 0", got)
	}
	if _, ok := sample(fams, "hangar_vm_cpu_seconds_total", vmL); ok {
		t.Errorf("a deleted VM still has CPU metrics")
	}
}
