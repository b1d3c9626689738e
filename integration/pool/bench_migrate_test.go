package pool_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/netlab"
	"hangar/internal/qemu"
	"hangar/internal/qemu/config"
	"hangar/internal/serial"
)

// BenchmarkMigrate: live migration through the whole of Hangar (vm
// migrate: the master's record, the agents, TLS, switch-over, cont and
// announce-self) against raw QEMU's migration (plain TCP, the target
// resumes by itself) of the same guest image between the same two
// namespaced hosts, in one run, alternately. The downtime is what a
// client sees: the longest gap of a client in the client namespace that
// reads the guest's HTTP every 10 ms over its bridged IP. The last line
// reads "downtime ratio Hangar/raw X.XX".
//
//	cd integration/pool && go test -run '^$' -bench Migrate -benchtime 1x .
func BenchmarkMigrate(b *testing.B) {
	runs := 3
	p := sharedPool(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	vol := sharedVolume(ctx, b, p, "mbench", "mb.qcow2")
	g := p.BootGuest(b, "h1", "mb", func(s *v1.VMSpec) { s.Disks = []v1.Disk{{Volume: vol}} })
	raw := newRawGuest(ctx, b, p, "rawmb")
	hosts := []string{"h2", "h1"}
	var hangarGaps, rawGaps, hangarTotals, rawTotals []time.Duration
	for i := 0; i < 2*runs; i++ {
		to := hosts[(i/2)%2]
		guest := g
		if i%2 == 1 {
			guest = raw.guest
		}
		poll := netlab.Poll(ctx, p.Client.Dialer(), guest.URL, 10*time.Millisecond)
		time.Sleep(time.Second)
		start := time.Now()
		if i%2 == 0 {
			p.CLI(b, "h1", "vm", "migrate", "mb", "--to", to)
			p.WaitVM(b, "h1", "mb", to, 2*time.Minute, v1.StateRunning)
		} else {
			raw.migrate(ctx, b, p.Host(b, to))
		}
		total := time.Since(start)
		time.Sleep(time.Second)
		r := poll.Stop()
		if len(r.BootIDs) != 1 || r.BootIDs[0] != guest.BootID || len(r.Decreases) != 0 {
			b.Fatalf("%s: boot ids %v (want %s), decreases %v", guest.Name, r.BootIDs, guest.BootID, r.Decreases)
		}
		kind := "hangar"
		if i%2 == 0 {
			hangarGaps, hangarTotals = append(hangarGaps, r.LongestGap), append(hangarTotals, total)
		} else {
			kind = "raw"
			rawGaps, rawTotals = append(rawGaps, r.LongestGap), append(rawTotals, total)
		}
		fmt.Printf("%-6s → %s: longest client gap %v, total %v\n", kind, to, r.LongestGap.Round(time.Millisecond), total.Round(time.Millisecond))
	}
	hg, rg := median(hangarGaps), median(rawGaps)
	b.ReportMetric(float64(hg.Milliseconds()), "hangar-gap-ms")
	b.ReportMetric(float64(rg.Milliseconds()), "raw-gap-ms")
	fmt.Printf("median total: hangar %v, raw %v\n", median(hangarTotals).Round(time.Millisecond), median(rawTotals).Round(time.Millisecond))
	fmt.Printf("median downtime (longest client gap, 10 ms reads): hangar %v, raw %v\n", hg.Round(time.Millisecond), rg.Round(time.Millisecond))
	fmt.Printf("downtime ratio Hangar/raw %.2f\n", float64(hg)/float64(rg))
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// rawGuest is the test guest run by raw QEMU in a host's namespace, its
// NIC a tap on that host's br0, its disk an overlay beside the lab.
type rawGuest struct {
	spec  v1.VMSpec
	disk  string
	dir   string
	n     int
	on    *netlab.Host
	inst  *qemu.Instance
	guest Guest
}

func newRawGuest(ctx context.Context, b testing.TB, p *Pool, name string) *rawGuest {
	dir, err := os.MkdirTemp("", "rawmb") // short: socket paths
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	r := &rawGuest{dir: dir, disk: filepath.Join(dir, "disk0.qcow2"),
		spec: v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: 256, Machine: "q35", CPUModel: qemu.TCGCPUModel,
			Disks: []v1.Disk{{Name: "disk0", Bus: "virtio"}}, NICs: []v1.NIC{{Mode: v1.NICBridge, Bridge: netlab.Bridge, MAC: "52:54:00:72:61:77"}}}}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", guestImage, r.disk).CombinedOutput(); err != nil {
		b.Fatalf("qemu-img: %v %s", err, out)
	}
	r.on = p.Host(b, "h1")
	r.inst = r.start(ctx, b, r.on, "")
	if err := r.inst.Mon.Cont(ctx); err != nil {
		b.Fatal(err)
	}
	m, _, err := serial.WaitFor(ctx, filepath.Join(r.dir, fmt.Sprint(r.n), config.SerialLog), 0, serial.ReadyMarker)
	if err != nil {
		b.Fatalf("raw guest did not boot: %v", err)
	}
	ip := p.GuestIP(b, name)
	r.guest = Guest{Name: name, Host: "h1", BootID: m[1], IP: ip, URL: StatusURL(ip)}
	return r
}

// start runs one QEMU of the raw guest on host h (paused; with incoming,
// waiting for a migration, which resumes it by itself).
func (r *rawGuest) start(ctx context.Context, b testing.TB, h *netlab.Host, incoming string) *qemu.Instance {
	r.n++
	dir := filepath.Join(r.dir, fmt.Sprint(r.n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	tap := fmt.Sprintf("rawmb%d", r.n)
	if err := h.AddTap(ctx, tap); err != nil {
		b.Fatal(err)
	}
	argv, err := config.Argv(config.Params{Spec: r.spec, Accel: "tcg", RunDir: dir, LogDir: dir,
		Disks: []config.DiskFile{{Path: r.disk, Format: "qcow2"}}, Taps: []string{tap}})
	if err != nil {
		b.Fatal(err)
	}
	if incoming != "" {
		argv = append(slices.DeleteFunc(argv, func(a string) bool { return a == "-S" }), "-incoming", incoming)
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		b.Fatal(err)
	}
	qemuBin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		b.Fatal(err)
	}
	inst, err := qemu.Start(ctx, qemu.Capabilities{Binary: ip, Accel: "tcg"}, r.spec.Name, dir,
		append([]string{"netns", "exec", h.NS, qemuBin}, argv...), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = inst.Kill(kctx)
	})
	return inst
}

// migrate moves the raw guest to host to as QEMU does by default.
func (r *rawGuest) migrate(ctx context.Context, b testing.TB, to *netlab.Host) {
	port := 49000 + r.n
	tgt := r.start(ctx, b, to, fmt.Sprintf("tcp:%s:%d", to.IP, port))
	migrate := func() {
		if err := r.inst.Mon.Execute(ctx, "migrate", map[string]string{"uri": fmt.Sprintf("tcp:%s:%d", to.IP, port)}, nil); err != nil {
			b.Fatal(err)
		}
	}
	migrate()
	for {
		var mi struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := r.inst.Mon.Execute(ctx, "query-migrate", nil, &mi); err != nil {
			b.Fatal(err)
		}
		if mi.Status == "completed" {
			break
		}
		if mi.Status == "failed" || mi.Status == "cancelled" {
			if strings.Contains(mi.ErrorDesc, "Connection refused") { // the target listens once its QEMU is up
				time.Sleep(50 * time.Millisecond)
				migrate()
				continue
			}
			b.Fatalf("raw migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for {
		st, err := tgt.Mon.QueryStatus(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if st.Running {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = r.inst.Kill(kctx)
	r.inst, r.on = tgt, to
}
