package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/daemon"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

// ManagerConfig is the manager-memory benchmark (issue 13): a throw-away
// `hangar serve` (a child process, so that its RSS is its own) whose etcd
// is filled with VMs records, listed and streamed.
type ManagerConfig struct {
	Hangar string // the hangar binary
	VMs    int
	// Streams is how many event streams are open at once at the end.
	Streams int
	Out     io.Writer
}

// ManagerResult is the serve's memory at each step.
type ManagerResult struct {
	Steps []MemStep
	// PeakRSS is the serve's VmHWM at the end (or the highest RSS of a
	// step, when the kernel has not counted that yet).
	PeakRSS int64
}

// MemStep is the serve's RSS after one step, and how long the step took.
type MemStep struct {
	Step string
	RSS  int64
	Took time.Duration
}

// Manager runs the benchmark and reports as it goes.
func Manager(ctx context.Context, cfg ManagerConfig) (_ ManagerResult, err error) {
	var res ManagerResult
	work, err := os.MkdirTemp("", "hgm")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(work)
	run, sock := filepath.Join(work, "run"), filepath.Join(work, "h.sock")
	logf, err := os.Create(filepath.Join(work, "serve.log"))
	if err != nil {
		return res, err
	}
	defer logf.Close()
	cmd := exec.Command(cfg.Hangar, "serve", "--data-dir", filepath.Join(work, "data"), "--run-dir", run, "--socket", sock,
		"--host", "bench", "--accel", "tcg", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if err != nil {
			b, _ := os.ReadFile(logf.Name())
			err = fmt.Errorf("%w\nserve log:\n%s", err, tailString(string(b), 3000))
		}
	}()
	c := client.New(sock)
	if err := waitServe(ctx, c); err != nil {
		return res, err
	}
	step := func(name string, start time.Time) error {
		took := time.Since(start)
		rss, _, err := procMem(cmd.Process.Pid)
		if err != nil {
			return err
		}
		s := MemStep{Step: name, RSS: rss, Took: took}
		res.Steps = append(res.Steps, s)
		// The Go heap as the serve's own /metrics says (the rest of the RSS:
		// stacks, the runtime, etcd's memory-mapped database).
		heap := "?"
		if text, err := c.Metrics(ctx); err == nil {
			if v, ok := metricValue(text, "go_memstats_heap_inuse_bytes"); ok {
				heap = fmt.Sprintf("%.1f MiB", v/(1<<20))
			}
		}
		fmt.Fprintf(cfg.Out, "%-44s RSS %7.1f MiB, Go heap in use %s  (%s)\n", name, float64(rss)/(1<<20), heap, took.Round(time.Millisecond))
		return nil
	}
	t0 := time.Now()
	if err := step("serve started, empty pool", t0); err != nil {
		return res, err
	}

	st, err := store.OpenEtcd(ctx, []string{"unix://" + daemon.EtcdSocket(run)})
	if err != nil {
		return res, err
	}
	defer st.Close()
	t0 = time.Now()
	if err := fill(ctx, st, cfg.VMs); err != nil {
		return res, err
	}
	time.Sleep(5 * time.Second) // let the watchers (master, agent) see them all
	if err := step(fmt.Sprintf("%d VM specs+statuses written to etcd", cfg.VMs), t0); err != nil {
		return res, err
	}
	t0 = time.Now()
	vms, err := c.VMs(ctx)
	if err != nil {
		return res, err
	}
	if len(vms) != cfg.VMs {
		return res, fmt.Errorf("listed %d VMs, want %d", len(vms), cfg.VMs)
	}
	vms = nil
	if err := step("GET /api/v1/vms (all listed)", t0); err != nil {
		return res, err
	}
	for i := 0; i < cfg.Streams; i++ {
		t0 = time.Now()
		es, err := c.Events(ctx, "")
		if err != nil {
			return res, err
		}
		defer es.Close()
		n := 0
		for {
			e, err := es.Next()
			if err != nil {
				return res, fmt.Errorf("events: %w after %d", err, n)
			}
			if e.Name == v1.EventSynced {
				break
			}
			n++
		}
		if n < cfg.VMs {
			return res, fmt.Errorf("events: %d before synced, want at least %d", n, cfg.VMs)
		}
		if err := step(fmt.Sprintf("event stream %d open, synced (%d events)", i+1, n), t0); err != nil {
			return res, err
		}
	}
	t0 = time.Now()
	time.Sleep(10 * time.Second)
	if err := step("10 s later, streams open", t0); err != nil {
		return res, err
	}
	_, res.PeakRSS, err = procMem(cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	for _, s := range res.Steps {
		res.PeakRSS = max(res.PeakRSS, s.RSS) // the kernel updates VmHWM lazily
	}
	last := res.Steps[len(res.Steps)-1].RSS
	fmt.Fprintf(cfg.Out, "manager RSS with %d VMs: %.1f MiB (peak %.1f MiB; target < 200 MiB)\n", cfg.VMs,
		float64(last)/(1<<20), float64(res.PeakRSS)/(1<<20))
	return res, nil
}

// fill writes n stopped VMs (spec and status) in transactions of 50 VMs.
func fill(ctx context.Context, st store.Store, n int) error {
	const batch = 50
	now := time.Now().UTC()
	for i := 0; i < n; i += batch {
		var ops []store.Op
		for j := i; j < i+batch && j < n; j++ {
			name := fmt.Sprintf("vm-%05d", j)
			spec := v1.VMSpec{Name: name, UUID: fmt.Sprintf("00000000-0000-4000-8000-%012d", j), CPUs: 1 + j%4, MemoryMiB: 256 << (j % 3),
				Machine: "q35", CPUModel: "qemu64", Power: v1.PowerStopped, Host: "bench", RestartPolicy: v1.RestartOnFailure,
				Tags:  []string{fmt.Sprintf("team-%d", j%20), "bench"},
				Disks: []v1.Disk{{Name: "disk0", SizeMiB: 10240, Bus: "virtio"}},
				NICs:  []v1.NIC{{Mode: v1.NICBridge, Bridge: "br0", MAC: fmt.Sprintf("52:54:00:%02x:%02x:%02x", j>>16&0xff, j>>8&0xff, j&0xff)}}}
			status := v1.VMStatus{State: v1.StateStopped, Host: "bench", UpdatedAt: now,
				Disks: []v1.DiskStatus{{Name: "disk0", Pool: "local-bench", Volume: name + "-disk0", Path: "/var/lib/hangar/pools/local-bench/" + name + "-disk0.qcow2", Format: "qcow2", Created: true}}}
			ops = append(ops, store.PutOp(inventory.VMKey(name), inventory.Marshal(spec), store.MustNotExist),
				store.PutOp(inventory.StatusKey(name), inventory.Marshal(status), store.AnyRevision))
		}
		if _, err := st.Txn(ctx, nil, ops...); err != nil {
			return fmt.Errorf("write vms %d..%d: %w", i, i+batch-1, err)
		}
	}
	return nil
}

func waitServe(ctx context.Context, c *client.Client) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.Hosts(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("hangar serve did not come up: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// procMem reads VmRSS and VmHWM of pid in bytes.
func procMem(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		k, v, ok := strings.Cut(string(line), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s %q", pid, k, v)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, err
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS")
	}
	return rss, hwm, nil
}

// metricValue is the value of an unlabelled metric in Prometheus text.
func metricValue(text, name string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
