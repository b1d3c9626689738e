package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/netlab"
	"hangar/internal/pki"
	"hangar/internal/qemu"
	"hangar/internal/qemu/config"
	"hangar/internal/qemu/migration"
	"hangar/internal/qemu/qmp"
	"hangar/internal/serial"
	"hangar/internal/vm"
)

// MigrateConfig configures `hangar bench migrate`.
type MigrateConfig struct {
	Image     string // the test guest image (the disk is a qcow2 overlay on it, on storage both hosts open)
	MemoryMiB int
	Runs      int // migrations of each kind
	WorkDir   string
	Caps      qemu.Capabilities
	Out       io.Writer
}

// MigrateRun is one migration.
type MigrateRun struct {
	Kind string // "hangar" or "raw"
	// Downtime is what the guest saw: from the source's STOP event to
	// the target's RESUME event (QMP timestamps, one clock: both hosts are
	// namespaces of this machine).
	Downtime time.Duration
	// QEMUDowntime is the source QEMU's own figure (query-migrate).
	QEMUDowntime time.Duration
	// Total is from the migrate command to the target's RESUME.
	Total time.Duration
}

// MigrateResult holds every run.
type MigrateResult struct{ Runs []MigrateRun }

func (r MigrateResult) of(kind string, f func(MigrateRun) time.Duration) []time.Duration {
	var out []time.Duration
	for _, x := range r.Runs {
		if x.Kind == kind {
			out = append(out, f(x))
		}
	}
	return out
}

// Report prints the medians; the last line is the ratio.
func (r MigrateResult) Report(w io.Writer) {
	down := func(x MigrateRun) time.Duration { return x.Downtime }
	tot := func(x MigrateRun) time.Duration { return x.Total }
	qd := func(x MigrateRun) time.Duration { return x.QEMUDowntime }
	hd, rd := Median(r.of("hangar", down)), Median(r.of("raw", down))
	fmt.Fprintf(w, "median total: hangar %s, raw %s\n", ms(Median(r.of("hangar", tot)))+" ms", ms(Median(r.of("raw", tot)))+" ms")
	fmt.Fprintf(w, "median qemu-reported downtime: hangar %s ms, raw %s ms\n", ms(Median(r.of("hangar", qd))), ms(Median(r.of("raw", qd))))
	fmt.Fprintf(w, "median downtime (source STOP to target RESUME): hangar %s ms, raw %s ms\n", ms(hd), ms(rd))
	ratio := 0.0
	if rd > 0 {
		ratio = float64(hd) / float64(rd)
	}
	fmt.Fprintf(w, "downtime ratio Hangar/raw %.2f\n", ratio)
}

// benchVM is one QEMU of the benchmark guest, run in a host's namespace.
type benchVM struct {
	host   *netlab.Host
	inst   *qemu.Instance
	runDir string
	logDir string
}

// Migrate boots the test guest (idle, shared disk) on host h1 of a
// two-host lab and migrates it back and forth, alternately through
// Hangar's data plane (TLS from a pool CA, -incoming defer, capabilities
// and parameters, cont and announce-self on the target: what an agent
// does) and as raw QEMU would by default (plain TCP, the target started
// with -incoming tcp:… and no -S, so it resumes by itself), Runs times
// each, over the lab's switch.
func Migrate(ctx context.Context, cfg MigrateConfig) (res MigrateResult, err error) {
	if cfg.Runs < 1 {
		cfg.Runs = 1
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 256
	}
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		return res, fmt.Errorf("bench migrate: %w (iproute2)", err)
	}
	lab, err := netlab.New(ctx, netlab.Config{Dir: filepath.Join(cfg.WorkDir, "lab")})
	if err != nil {
		return res, fmt.Errorf("bench migrate: %w", err)
	}
	defer lab.Close()
	hosts := make([]*netlab.Host, 2)
	for i := range hosts {
		if hosts[i], err = lab.AddHost(ctx, fmt.Sprintf("h%d", i+1)); err != nil {
			return res, fmt.Errorf("bench migrate: %w", err)
		}
	}
	ca, err := pki.LoadOrCreateCA(filepath.Join(cfg.WorkDir, "ca"))
	if err != nil {
		return res, err
	}
	keys := make([]*pki.KeyPair, 2)
	for i, h := range hosts {
		if keys[i], err = ca.IssueHost(h.Name, []net.IP{net.IP(h.IP.AsSlice())}, nil); err != nil {
			return res, err
		}
	}
	disk := filepath.Join(cfg.WorkDir, "disk0.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", cfg.Image, "-F", "qcow2", disk).CombinedOutput(); err != nil {
		return res, fmt.Errorf("qemu-img: %s", out)
	}
	spec := v1.VMSpec{Name: "migbench", CPUs: 1, MemoryMiB: cfg.MemoryMiB, Disks: []v1.Disk{{Name: "disk0"}}, NICs: []v1.NIC{{Mode: v1.NICUser, MAC: "52:54:00:4d:49:47"}}}
	vm.Defaults(&spec, cfg.Caps.Accel)
	spec.Disks[0].Name, spec.Disks[0].Bus = "disk0", "virtio"
	if spec.CPUModel == "host" {
		spec.CPUModel = "max"
	}
	n := 0
	start := func(h *netlab.Host, extra string, raw bool) (*benchVM, error) {
		n++
		v := &benchVM{host: h, runDir: filepath.Join(cfg.WorkDir, fmt.Sprintf("r%d", n)), logDir: filepath.Join(cfg.WorkDir, fmt.Sprintf("l%d", n))}
		if err := os.MkdirAll(v.logDir, 0o700); err != nil {
			return nil, err
		}
		argv, err := config.Argv(config.Params{Spec: spec, Accel: cfg.Caps.Accel, RunDir: v.runDir, LogDir: v.logDir,
			Disks: []config.DiskFile{{Path: disk, Format: "qcow2"}}, Taps: []string{""}})
		if err != nil {
			return nil, err
		}
		if raw {
			argv = slices.DeleteFunc(argv, func(a string) bool { return a == "-S" })
		}
		if extra != "" {
			argv = append(argv, "-incoming", extra)
		}
		caps := cfg.Caps
		caps.Binary = ipBin
		inst, err := qemu.Start(ctx, caps, spec.Name, v.runDir, append([]string{"netns", "exec", h.NS, cfg.Caps.Binary}, argv...), slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, err
		}
		v.inst = inst
		return v, nil
	}
	kill := func(v *benchVM) {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = v.inst.Kill(kctx)
	}
	cur, err := start(hosts[0], "", false)
	if err != nil {
		return res, fmt.Errorf("bench migrate: boot: %w", err)
	}
	defer func() { kill(cur) }()
	if err := cur.inst.Mon.Cont(ctx); err != nil {
		return res, err
	}
	bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	m, _, err := serial.WaitFor(bctx, filepath.Join(cur.logDir, config.SerialLog), 0, serial.ReadyMarker)
	cancel()
	if err != nil {
		return res, fmt.Errorf("bench migrate: guest did not boot: %w", err)
	}
	bootID := m[1]
	fmt.Fprintf(cfg.Out, "guest booted on h1 (boot_id %s), %d MiB, idle; migrating over the lab switch\n", bootID, cfg.MemoryMiB)
	time.Sleep(2 * time.Second) // let the guest settle into idle
	from := 0
	for i := 0; i < 2*cfg.Runs; i++ {
		kind := "hangar"
		if i%2 == 1 {
			kind = "raw"
		}
		to := 1 - from
		src, dst := cur, hosts[to]
		port := 49152 + i
		var tgt *benchVM
		if kind == "hangar" {
			tgt, err = start(dst, "defer", false)
		} else {
			tgt, err = start(dst, fmt.Sprintf("tcp:%s:%d", dst.IP, port), true)
		}
		if err != nil {
			return res, fmt.Errorf("bench migrate: target: %w", err)
		}
		run, err := migrateOnce(ctx, kind, src, tgt, dst, port, ca, keys[from], keys[to])
		if err != nil {
			kill(tgt)
			return res, fmt.Errorf("bench migrate: %s run %d: %w", kind, i/2+1, err)
		}
		kill(src)
		cur, from = tgt, to
		res.Runs = append(res.Runs, run)
		fmt.Fprintf(cfg.Out, "%-6s %s→%s: downtime %s ms (qemu: %s ms), total %s ms\n", kind, hosts[1-to].Name, dst.Name,
			ms(run.Downtime), ms(run.QEMUDowntime), ms(run.Total))
	}
	// The guest is the one that booted first, and runs.
	st, err := cur.inst.Mon.QueryStatus(ctx)
	if err != nil || st.Status != "running" {
		return res, fmt.Errorf("bench migrate: guest after the runs: %+v %v", st, err)
	}
	return res, nil
}

// migrateOnce migrates src to tgt (on host dst) one way and measures it.
func migrateOnce(ctx context.Context, kind string, src, tgt *benchVM, dst *netlab.Host, port int, ca *pki.CA, srcKey, dstKey *pki.KeyPair) (MigrateRun, error) {
	run := MigrateRun{Kind: kind}
	sev, stopS := src.inst.Mon.Subscribe()
	defer stopS()
	tev, stopT := tgt.inst.Mon.Subscribe()
	defer stopT()
	var began time.Time
	if kind == "hangar" {
		t := migration.Target{IP: dst.IP.String(), Port: port,
			TLS: &migration.TLS{Dir: filepath.Join(tgt.runDir, "tls"), CA: ca.CertPEM(), Cert: dstKey.CertPEM, Key: dstKey.KeyPEM, UID: os.Getuid(), GID: os.Getgid()}}
		if err := migration.PrepareTarget(ctx, tgt.inst.Mon, t); err != nil {
			return run, err
		}
		s := migration.Source{TargetHost: dst.Name, IP: t.IP, Port: port, DowntimeLimit: 300 * time.Millisecond,
			TLS:      &migration.TLS{Dir: filepath.Join(src.runDir, "tls"), CA: ca.CertPEM(), Cert: srcKey.CertPEM, Key: srcKey.KeyPEM, UID: os.Getuid(), GID: os.Getgid()},
			Watchdog: migration.Watchdog{Timeout: time.Minute, Max: 5 * time.Minute}}
		began = time.Now()
		r, err := migration.Migrate(ctx, src.inst.Mon, s)
		if err != nil {
			return run, err
		}
		run.QEMUDowntime = r.Downtime
		if err := migration.WaitIncoming(ctx, tgt.inst.Mon); err != nil {
			return run, err
		}
		if err := migration.Resume(ctx, tgt.inst.Mon); err != nil {
			return run, err
		}
	} else {
		// QEMU's defaults, no TLS; only events on so STOP is seen.
		caps := map[string]any{"capabilities": []map[string]any{{"capability": "events", "state": true}}}
		if err := src.inst.Mon.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
			return run, err
		}
		if err := src.inst.Mon.Execute(ctx, "migrate-set-parameters", map[string]any{"tls-creds": "", "tls-hostname": ""}, nil); err != nil {
			return run, err
		}
		began = time.Now()
		if err := src.inst.Mon.Execute(ctx, "migrate", map[string]string{"uri": fmt.Sprintf("tcp:%s:%d", dst.IP, port)}, nil); err != nil {
			return run, err
		}
		for {
			var mi struct {
				Status    string `json:"status"`
				Downtime  int64  `json:"downtime"`
				ErrorDesc string `json:"error-desc"`
			}
			if err := src.inst.Mon.Execute(ctx, "query-migrate", nil, &mi); err != nil {
				return run, err
			}
			if mi.Status == "completed" {
				run.QEMUDowntime = time.Duration(mi.Downtime) * time.Millisecond
				break
			}
			if mi.Status == "failed" || mi.Status == "cancelled" {
				return run, fmt.Errorf("raw migration %s: %s", mi.Status, mi.ErrorDesc)
			}
			select {
			case <-ctx.Done():
				return run, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	stopAt, err := eventTime(ctx, sev, "STOP")
	if err != nil {
		return run, fmt.Errorf("source STOP: %w", err)
	}
	resumeAt, err := eventTime(ctx, tev, "RESUME")
	if err != nil {
		return run, fmt.Errorf("target RESUME: %w", err)
	}
	run.Downtime = resumeAt.Sub(stopAt)
	run.Total = resumeAt.Sub(began)
	return run, nil
}

func eventTime(ctx context.Context, ev <-chan qmp.Event, name string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		select {
		case e, ok := <-ev:
			if !ok {
				return time.Time{}, errors.New("monitor closed")
			}
			if e.Name == name {
				return e.Timestamp, nil
			}
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}
