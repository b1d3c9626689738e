package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/qemu"
	"hangar/internal/qemu/qmp"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and ") " in it must not shift the fields.
	stat := []byte("4242 (qemu) x (y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5 0 100 1000 200 18446744073709551615")
	got, err := parseStatCPU(stat)
	if err != nil || got != 3.0 {
		t.Fatalf("parseStatCPU = %v, %v; want 3 s (250+50 ticks)", got, err)
	}
	for _, bad := range []string{"", "4242 qemu S 1", "4242 (q) S 1 2 3 4 5 6 7 8 9 10 x y"} {
		if _, err := parseStatCPU([]byte(bad)); err == nil {
			t.Errorf("parseStatCPU(%q) accepted", bad)
		}
	}
}

func TestParseStatusRSS(t *testing.T) {
	got, err := parseStatusRSS([]byte("Name:\tqemu\nVmPeak:\t 999 kB\nVmRSS:\t  2048 kB\nThreads: 5\n"))
	if err != nil || got != 2048<<10 {
		t.Fatalf("parseStatusRSS = %v, %v; want 2 MiB", got, err)
	}
	for _, bad := range []string{"Name: x\n", "VmRSS: 12 MB\n", "VmRSS: -1 kB\n", "VmRSS: x kB\n"} {
		if _, err := parseStatusRSS([]byte(bad)); err == nil {
			t.Errorf("parseStatusRSS(%q) accepted", bad)
		}
	}
}

func TestIsQEMUOf(t *testing.T) {
	cmd := []byte("qemu-system-x86_64\x00-name\x00guest=web10,debug-threads=on\x00-S\x00")
	if !isQEMUOf(cmd, "web10") {
		t.Error("web10's own command line not recognised")
	}
	for _, other := range []string{"web1", "web", "eb10"} {
		if isQEMUOf(cmd, other) {
			t.Errorf("web10's QEMU taken for %q's", other)
		}
	}
	if isQEMUOf([]byte("sleep\x00guest=web10,\x00"), "web10") {
		t.Error("a process without -name taken for a QEMU")
	}
}

func TestDiskStats(t *testing.T) {
	spec := v1.VMSpec{Disks: []v1.Disk{{Name: "disk0"}, {Name: "data"}}}
	var bs []blockStats
	add := func(qdev string, rd uint64) {
		var b blockStats
		b.QDev, b.Stats.RdBytes, b.Stats.RdOperations = qdev, rd, 1
		bs = append(bs, b)
	}
	add("/machine/peripheral/dev-disk0/virtio-backend", 100)
	add("dev-data", 200)
	add("dev-other", 300)             // no disk of the spec
	add("/machine/unattached/x", 400) // not ours
	add("dev-data", 500)              // a second entry for the same disk is ignored
	got := diskStats(spec, bs)
	if len(got) != 2 || got[0].Disk != "disk0" || got[0].ReadBytes != 100 || got[1].Disk != "data" || got[1].ReadBytes != 200 {
		t.Fatalf("diskStats = %+v", got)
	}
}

// fakeQMP serves QMP on a unix socket: it answers qmp_capabilities, and
// query-blockstats with stats unless hang is set, in which case it never
// answers (a hung QEMU).
func fakeQMP(t *testing.T, hang bool) *qmp.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "q.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintln(c, `{"QMP":{"version":{"qemu":{"major":7,"minor":2,"micro":0},"package":""},"capabilities":[]}}`)
		dec := json.NewDecoder(c)
		for {
			var req struct {
				Execute string `json:"execute"`
				ID      uint64 `json:"id"`
			}
			if dec.Decode(&req) != nil {
				return
			}
			switch {
			case req.Execute == "qmp_capabilities":
				fmt.Fprintf(c, `{"return":{},"id":%d}`+"\n", req.ID)
			case req.Execute == "query-blockstats" && !hang:
				fmt.Fprintf(c, `{"return":[{"device":"","qdev":"/machine/peripheral/dev-disk0/virtio-backend","stats":{"rd_bytes":4096,"wr_bytes":512,"rd_operations":8,"wr_operations":1}}],"id":%d}`+"\n", req.ID)
			}
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	mon, err := qmp.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	return mon
}

// TestVMStatsHungVM: one VM whose QEMU does not answer QMP costs the
// scrape at most its deadline (+1 s) and only that VM's disk figures; the
// other VM's disks are reported. Neither process is really its VM's QEMU
// (the test's own pid), so neither gets CPU or memory figures.
func TestVMStatsHungVM(t *testing.T) {
	ta := startAgent(t)
	for _, n := range []string{"fast", "hung"} {
		ta.put(t, inventory.VMKey(n), validSpec(n))
		ta.a.live.set(n, &qemu.Instance{Name: n, PID: os.Getpid(), Mon: fakeQMP(t, n == "hung")})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	stats := ta.a.VMStats(ctx)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("VMStats took %v with one hung VM", d)
	}
	by := map[string]VMStats{}
	for _, s := range stats {
		by[s.VM] = s
	}
	if len(by) != 2 {
		t.Fatalf("stats of %d VMs, want 2: %+v", len(by), stats)
	}
	if f := by["fast"]; f.DiskErr != nil || len(f.Disks) != 1 || f.Disks[0] != (DiskStats{Disk: "disk0", ReadBytes: 4096, WrittenBytes: 512, Reads: 8, Writes: 1}) {
		t.Errorf("fast VM: %+v", f)
	}
	if h := by["hung"]; h.DiskErr == nil || len(h.Disks) != 0 {
		t.Errorf("hung VM: %+v, want a disk error and no disks", h)
	}
	for _, s := range stats {
		if s.ProcErr == nil || !strings.Contains(s.ProcErr.Error(), "is not its qemu") {
			t.Errorf("%s: the test process taken for its QEMU: %v", s.VM, s.ProcErr)
		}
	}
}
