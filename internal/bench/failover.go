package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/netlab"
	"hangar/internal/serial"
)

// FailoverConfig configures `hangar bench failover`.
type FailoverConfig struct {
	Bin       string // the hangar binary the lab's hosts run
	Image     string // the test guest image (copied onto the lab's shared pool each run)
	MemoryMiB int
	Runs      int
	Accel     string
	WorkDir   string
	Out       io.Writer
}

// FailoverRun is one host kill, every time on this machine's clock (the
// hosts are namespaces of it).
type FailoverRun struct {
	Victim, To string
	// Ready is from the kill to the guest's ready marker on To.
	Ready time.Duration
	// Boot is the restarted guest's own boot: its QEMU's start to its
	// ready marker.
	Boot time.Duration
	// LeaseGone is from the kill to the API listing the host without a
	// lease; Dead to the master declaring it dead (the failover recorded).
	LeaseGone, Dead time.Duration
	// FirstBoot is the guest's boot on the victim before the kill.
	FirstBoot time.Duration
}

// Failover is Ready − Boot: what Hangar adds to the guest's boot.
func (r FailoverRun) Failover() time.Duration { return r.Ready - r.Boot }

// FailoverResult holds every run.
type FailoverResult struct{ Runs []FailoverRun }

func (r FailoverResult) med(f func(FailoverRun) time.Duration) time.Duration {
	var d []time.Duration
	for _, x := range r.Runs {
		d = append(d, f(x))
	}
	return Median(d)
}

// Report prints the medians; the last line starts with the failover time
// beyond the guest's boot ("failover X.X s (…)").
func (r FailoverResult) Report(w io.Writer) {
	s := func(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }
	fmt.Fprintf(w, "medians of %d runs: kill → lease gone %s, → dead %s (fencing wait %s), → guest ready elsewhere %s; its boot there %s (first boot %s)\n",
		len(r.Runs), s(r.med(func(x FailoverRun) time.Duration { return x.LeaseGone })), s(r.med(func(x FailoverRun) time.Duration { return x.Dead })),
		s(r.med(func(x FailoverRun) time.Duration { return x.Dead - x.LeaseGone })), s(r.med(func(x FailoverRun) time.Duration { return x.Ready })),
		s(r.med(func(x FailoverRun) time.Duration { return x.Boot })), s(r.med(func(x FailoverRun) time.Duration { return x.FirstBoot })))
	fmt.Fprintf(w, "failover %s (beyond the guest's boot; detection %s = lease expiry seen %s + fencing wait %s; restart %s: dead → QEMU started elsewhere; median of %d runs)\n",
		s(r.med(FailoverRun.Failover)), s(r.med(func(x FailoverRun) time.Duration { return x.Dead })),
		s(r.med(func(x FailoverRun) time.Duration { return x.LeaseGone })), s(r.med(func(x FailoverRun) time.Duration { return x.Dead - x.LeaseGone })),
		s(r.med(func(x FailoverRun) time.Duration { return x.Failover() - x.Dead })), len(r.Runs))
}

// Failover builds a lab of three hosts (one pool, a shared storage pool
// on a directory all see) and, --runs times, boots the test guest with HA
// on a host that is not the master, kills that host (every process of its
// namespace, SIGKILL) and times the guest's way back: the lease seen gone,
// the host declared dead, the guest's ready marker on another host, and
// that guest's own boot (its QEMU's start to the marker). The killed host
// is started again before the next run.
func Failover(ctx context.Context, cfg FailoverConfig) (FailoverResult, error) {
	var res FailoverResult
	lab, err := netlab.New(ctx, netlab.Config{Dir: filepath.Join(cfg.WorkDir, "lab")})
	if err != nil {
		return res, err
	}
	defer lab.Close()
	uids := lab.UIDRange(0)
	base := []string{"--accel", cfg.Accel, "--stop-timeout", "10s", "--import-dir", filepath.Dir(cfg.Image), "--log-level", "info"}
	serve := map[string]netlab.ServeConfig{}
	var hosts []*netlab.Host
	for i := 1; i <= 3; i++ {
		h, err := lab.AddHost(ctx, fmt.Sprintf("h%d", i))
		if err != nil {
			return res, err
		}
		listen := netip.AddrPortFrom(h.IP, 8443).String()
		sc := netlab.ServeConfig{Bin: cfg.Bin, UIDRange: uids, Args: append(append([]string{}, base...), "--listen", listen)}
		serve[h.Name] = sc
		if i > 1 {
			tok, err := hosts[0].Client().JoinToken(ctx, 10*time.Minute)
			if err != nil {
				return res, err
			}
			sc.Args = append(sc.Args, "--join", netip.AddrPortFrom(hosts[0].IP, 8443).String(), "--token", tok.Token)
		}
		if err := serveJoin(ctx, h, sc); err != nil {
			return res, err
		}
		hosts = append(hosts, h)
	}
	c := hosts[0].Client()
	shared := filepath.Join(lab.Dir, "shared")
	if err := os.MkdirAll(shared, 0o755); err != nil {
		return res, err
	}
	if err := c.AddPool(ctx, v1.StoragePool{Name: "shared", Type: "shared", Path: shared}); err != nil {
		return res, err
	}
	fmt.Fprintf(cfg.Out, "failover benchmark: %d runs, 3 hosts (one pool), guest %d MiB on a shared pool\n", cfg.Runs, cfg.MemoryMiB)
	for i := 1; i <= cfg.Runs; i++ {
		r, err := failoverRun(ctx, cfg, lab, hosts, serve, shared, i)
		if err != nil {
			return res, fmt.Errorf("run %d: %w", i, err)
		}
		fmt.Fprintf(cfg.Out, "run %d: %s killed → lease gone %.1f s, dead %.1f s, guest ready on %s %.1f s (its boot %.1f s): failover %.1f s\n",
			i, r.Victim, r.LeaseGone.Seconds(), r.Dead.Seconds(), r.To, r.Ready.Seconds(), r.Boot.Seconds(), r.Failover().Seconds())
		res.Runs = append(res.Runs, r)
	}
	return res, nil
}

// serveJoin starts a host's serve, retrying a join etcd refuses while the
// cluster is not yet healthy after the previous one.
func serveJoin(ctx context.Context, h *netlab.Host, sc netlab.ServeConfig) error {
	for attempt := 1; ; attempt++ {
		_, err := h.Serve(ctx, sc)
		if err == nil || attempt == 5 || !strings.Contains(err.Error(), "unhealthy cluster") {
			return err
		}
		time.Sleep(2 * time.Second)
	}
}

func failoverRun(ctx context.Context, cfg FailoverConfig, lab *netlab.Lab, hosts []*netlab.Host, serve map[string]netlab.ServeConfig, shared string, i int) (FailoverRun, error) {
	var r FailoverRun
	// Ask a host that stays: the master, which is never the victim.
	info, err := hosts[0].Client().PoolInfo(ctx)
	if err != nil {
		return r, err
	}
	var ask, victim *netlab.Host
	for _, h := range hosts {
		if h.Name == info.Master {
			ask = h
		} else if victim == nil {
			victim = h
		}
	}
	if ask == nil || victim == nil {
		return r, fmt.Errorf("pool master %q is not one of the lab's hosts", info.Master)
	}
	r.Victim = victim.Name
	c := ask.Client()
	name := fmt.Sprintf("fo%d", i)
	file := name + ".qcow2"
	if err := copyImage(cfg.Image, filepath.Join(shared, file)); err != nil {
		return r, err
	}
	defer os.Remove(filepath.Join(shared, file))
	spec := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: cfg.MemoryMiB, Disks: []v1.Disk{{Volume: "shared/" + file}},
		Placement: v1.PlacementPreferred, PreferredHosts: []string{victim.Name}, HA: &v1.HA{Enabled: true}}
	op, err := c.CreateVM(ctx, spec, true, time.Minute)
	if err == nil {
		op, err = c.Wait(ctx, op, nil)
	}
	if err != nil || op.State != v1.OpSucceeded {
		return r, fmt.Errorf("create %s: %v %+v", name, err, op.Error)
	}
	first, err := readyAfterStart(ctx, c, hosts, victim, name, "")
	if err != nil {
		return r, err
	}
	r.FirstBoot = first.boot
	kill := time.Now()
	if _, err := victim.PowerLoss(); err != nil {
		return r, err
	}
	// Watch the host list and the VM from the master's API.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for r.Dead == 0 {
		hs, err := c.Hosts(wctx)
		if err != nil {
			return r, err
		}
		for _, h := range hs {
			if h.Name != victim.Name {
				continue
			}
			if !h.Alive && r.LeaseGone == 0 {
				r.LeaseGone = time.Since(kill)
			}
			if h.State == v1.HostDead {
				r.Dead = time.Since(kill)
			}
		}
		if wctx.Err() != nil {
			return r, fmt.Errorf("%s not declared dead: %w", victim.Name, wctx.Err())
		}
		time.Sleep(20 * time.Millisecond)
	}
	after, err := readyAfterStart(wctx, c, hosts, nil, name, victim.Name)
	if err != nil {
		return r, err
	}
	r.To, r.Boot = after.host.Name, after.boot
	r.Ready = after.ready.Sub(kill)
	if op, err := c.DeleteVM(ctx, name, true, time.Minute); err == nil {
		_, _ = c.Wait(ctx, op, nil)
	}
	sc := serve[victim.Name]
	if err := serveJoin(ctx, victim, sc); err != nil {
		return r, err
	}
	return r, nil
}

type ready struct {
	host  *netlab.Host
	ready time.Time
	boot  time.Duration
}

// readyAfterStart waits until VM name runs (on on, or on any host but
// not when on is nil) and its guest prints the ready marker there; boot
// is from its QEMU's start (status startedAt) to the marker.
func readyAfterStart(ctx context.Context, c interface {
	VM(context.Context, string) (v1.VM, error)
}, hosts []*netlab.Host, on *netlab.Host, name, not string) (ready, error) {
	var v v1.VM
	for {
		var err error
		v, err = c.VM(ctx, name)
		if err != nil {
			return ready{}, err
		}
		if v.Status.State == v1.StateRunning && v.Status.StartedAt != nil && v.Spec.Host == v.Status.Host &&
			v.Status.Host != not && (on == nil || v.Status.Host == on.Name) {
			break
		}
		select {
		case <-ctx.Done():
			return ready{}, fmt.Errorf("vm %s not running (%s on %q): %w", name, v.Status.State, v.Status.Host, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	h := on
	if h == nil {
		for _, x := range hosts {
			if x.Name == v.Status.Host {
				h = x
			}
		}
		if h == nil {
			return ready{}, fmt.Errorf("vm %s runs on %q, not a lab host", name, v.Status.Host)
		}
	}
	if _, _, err := serial.WaitFor(ctx, h.SerialLog(name), 0, serial.ReadyMarker); err != nil {
		return ready{}, fmt.Errorf("guest %s on %s: %w", name, h.Name, err)
	}
	at := time.Now()
	return ready{host: h, ready: at, boot: at.Sub(*v.Status.StartedAt)}, nil
}

func copyImage(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return errors.Join(out.Sync(), out.Close())
}
