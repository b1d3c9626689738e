package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/qemu"
	"hangar/internal/qemu/config"
	"hangar/internal/qemu/qmp"
	"hangar/internal/vm"
)

// StartConfig of a start benchmark: API create+start to "running" (guest
// boot excluded) against raw QEMU's own start.
type StartConfig struct {
	Image     string
	Runs      int
	MemoryMiB int
	WorkDir   string // scratch space for raw runs
	Client    *client.Client
	Caps      qemu.Capabilities
	Out       io.Writer
}

// Phase of a start: it ends at Mark, and begins where the one before it
// ends (the first at the request being sent).
type Phase struct {
	Label, Mark string
}

// Marks the bench itself takes or reads outside the operation's timings.
const (
	markRequest = "request" // the client sends the create (bench clock)
	markCreated = "created" // the manager's op.Created: validated, right before the spec+op transaction
	markReply   = "reply"   // the client has the answer saying the operation succeeded
)

// HangarPhases of an API create with start, in order: the manager's
// op.Created, the agent's v1.Operation.Timings, the client's reply.
var HangarPhases = []Phase{
	{"api request + validation", markCreated},
	{"spec+op txn + watch delivery to the worker", "seen"},
	{"claim (op write)", "claimed"},
	{"disk provisioning", "disks"},
	{"status write (stopped)", "stopped"},
	{"progress write, reads, sandbox preparation", "sandbox"},
	{"argv + status write (starting)", "starting"},
	{"qemu exec", "exec"},
	{"qmp connect + setup", "qmp"},
	{"limits (disk throttling, vcpu pinning, tc, cgroup)", "limits"},
	{"cont", "cont"},
	{"status write (running)", "running"},
	{"op record + waiter sees running", markReply},
}

// RawPhases of raw QEMU's own start.
var RawPhases = []Phase{
	{"exec", "exec"},
	{"qmp greeting + qmp_capabilities", "qmp"},
	{"cont", "cont"},
}

// Split turns marks into the phases' durations. start is when the first
// phase begins. Every phase's mark must be there and none may lie before
// the one preceding it (the timings come from a record: checked, not
// trusted).
func Split(phases []Phase, start time.Time, marks map[string]time.Time) ([]time.Duration, error) {
	out := make([]time.Duration, len(phases))
	prev := start
	for i, p := range phases {
		at, ok := marks[p.Mark]
		if !ok {
			return nil, fmt.Errorf("no %q mark", p.Mark)
		}
		if at.Before(prev) {
			return nil, fmt.Errorf("mark %q at %s lies before the one before it (%s)", p.Mark, at.Format(time.RFC3339Nano), prev.Format(time.RFC3339Nano))
		}
		out[i] = at.Sub(prev)
		prev = at
	}
	return out, nil
}

// Samples of one side: per run, the duration of each phase.
type Samples [][]time.Duration

// Medians per phase, and the median of the runs' totals.
func (s Samples) Medians(phases int) (per []time.Duration, total time.Duration) {
	per = make([]time.Duration, phases)
	col := make([]time.Duration, len(s))
	for p := 0; p < phases; p++ {
		for r := range s {
			col[r] = s[r][p]
		}
		per[p] = Median(col)
	}
	totals := make([]time.Duration, len(s))
	for r, run := range s {
		for _, d := range run {
			totals[r] += d
		}
	}
	return per, Median(totals)
}

// StartResult holds both sides' samples.
type StartResult struct {
	Hangar, Raw Samples
}

// Report writes the phase table and, last, the start ratio line.
func (r StartResult) Report(w io.Writer) error {
	hp, ht := r.Hangar.Medians(len(HangarPhases))
	rp, rt := r.Raw.Medians(len(RawPhases))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "side\tphase\tmedian ms\t\n")
	for i, p := range HangarPhases {
		fmt.Fprintf(tw, "hangar\t%s\t%s\t\n", p.Label, ms(hp[i]))
	}
	fmt.Fprintf(tw, "hangar\ttotal (median of runs)\t%s\t\n", ms(ht))
	for i, p := range RawPhases {
		fmt.Fprintf(tw, "raw qemu\t%s\t%s\t\n", p.Label, ms(rp[i]))
	}
	fmt.Fprintf(tw, "raw qemu\ttotal (median of runs)\t%s\t\n", ms(rt))
	if err := tw.Flush(); err != nil {
		return err
	}
	if rt <= 0 {
		return fmt.Errorf("raw qemu start took no time: no ratio")
	}
	_, err := fmt.Fprintf(w, "start ratio Hangar/raw %.2f\n", float64(ht)/float64(rt))
	return err
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

func total(run []time.Duration) (t time.Duration) {
	for _, d := range run {
		t += d
	}
	return t
}

// Start alternates raw QEMU starts and Hangar create+starts. A stopped VM
// on the same image is created first and kept through the runs (untimed):
// it holds the pool's copy of the image, as any VM left on it would, so
// the runs measure a start from an image already brought in — without it,
// each run's delete would release the copy and the next run bring it in
// anew.
func Start(ctx context.Context, cfg StartConfig) (_ StartResult, err error) {
	var res StartResult
	anchor := v1.VMSpec{Name: "startbench-anchor", CPUs: 1, MemoryMiB: cfg.MemoryMiB, Disks: []v1.Disk{{Image: cfg.Image}}}
	if err := createAndWait(ctx, cfg.Client, anchor, false); err != nil {
		return res, err
	}
	defer func() {
		if derr := deleteAndWait(cfg.Client, anchor.Name); err == nil {
			err = derr
		}
	}()
	for i := 0; i < cfg.Runs; i++ {
		raw, err := rawStart(ctx, cfg, i)
		if err != nil {
			return res, fmt.Errorf("raw run %d: %w", i+1, err)
		}
		res.Raw = append(res.Raw, raw)
		hg, err := hangarStart(ctx, cfg, i)
		if err != nil {
			return res, fmt.Errorf("hangar run %d: %w", i+1, err)
		}
		res.Hangar = append(res.Hangar, hg)
		fmt.Fprintf(cfg.Out, "run %d: raw qemu %s ms, hangar %s ms\n", i+1, ms(total(raw)), ms(total(hg)))
	}
	return res, nil
}

// rawStart is QEMU's own start: Hangar's argv for a VM without disks or
// NICs, exec, the QMP greeting and qmp_capabilities, cont.
func rawStart(ctx context.Context, cfg StartConfig, i int) ([]time.Duration, error) {
	name := fmt.Sprintf("rawstart%d", i)
	dir := filepath.Join(cfg.WorkDir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	s := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: cfg.MemoryMiB}
	vm.Defaults(&s, cfg.Caps.Accel)
	s.Disks, s.NICs = nil, nil
	argv, err := config.Argv(config.Params{Spec: s, Accel: cfg.Caps.Accel, RunDir: dir, LogDir: dir})
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, config.QMPSocket)
	marks := map[string]time.Time{}
	start := time.Now()
	cmd := exec.Command(cfg.Caps.Binary, argv...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	marks["exec"] = time.Now()
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var mon *qmp.Client
	for mon == nil {
		if _, err := os.Stat(sock); err == nil {
			if mon, err = qmp.Dial(dctx, sock); err != nil && dctx.Err() != nil {
				return nil, err
			}
		}
		if mon == nil {
			select {
			case <-dctx.Done():
				return nil, fmt.Errorf("connect qmp: %w", dctx.Err())
			case <-time.After(time.Millisecond):
			}
		}
	}
	defer mon.Close()
	marks["qmp"] = time.Now()
	if err := mon.Cont(dctx); err != nil {
		return nil, err
	}
	marks["cont"] = time.Now()
	return Split(RawPhases, start, marks)
}

// hangarStart creates and starts a VM through the API, waiting for the
// operation, and reads its phases from the operation record; the VM is
// deleted afterwards (untimed).
func hangarStart(ctx context.Context, cfg StartConfig, i int) (_ []time.Duration, err error) {
	name := fmt.Sprintf("startbench%d", i)
	c := cfg.Client
	// Every limit a user-mode VM can have, so the limits phase shows
	// their cost: cgroup, disk throttling, vCPU pinning.
	s := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: cfg.MemoryMiB,
		Disks:     []v1.Disk{{Image: cfg.Image, Limits: &v1.DiskLimits{IOPS: 1 << 20, BPS: 1 << 40}}},
		NICs:      []v1.NIC{{Mode: v1.NICUser}},
		Resources: &v1.Resources{CPUShares: 1024, CPULimit: 2, CPUPinning: "0"}}
	start := time.Now()
	op, err := c.CreateVM(ctx, s, true, time.Minute)
	if err == nil {
		op, err = c.Wait(ctx, op, nil)
	}
	reply := time.Now()
	if err != nil {
		return nil, err
	}
	defer func() {
		if derr := deleteAndWait(c, name); err == nil {
			err = derr
		}
	}()
	if op.State != v1.OpSucceeded {
		return nil, fmt.Errorf("create %s: operation %s %s: %v", name, op.ID, op.State, op.Error)
	}
	marks := map[string]time.Time{markCreated: op.Created, markReply: reply}
	for _, t := range op.Timings {
		if _, dup := marks[t.Phase]; dup {
			return nil, fmt.Errorf("operation %s: timing %q twice", op.ID, t.Phase)
		}
		marks[t.Phase] = t.At
	}
	d, err := Split(HangarPhases, start, marks)
	if err != nil {
		return nil, fmt.Errorf("operation %s timings: %w", op.ID, err)
	}
	return d, nil
}

func createAndWait(ctx context.Context, c *client.Client, s v1.VMSpec, start bool) error {
	op, err := c.CreateVM(ctx, s, start, time.Minute)
	if err == nil {
		op, err = c.Wait(ctx, op, nil)
	}
	if err == nil && op.State != v1.OpSucceeded {
		err = fmt.Errorf("operation %s %s: %v", op.ID, op.State, op.Error)
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", s.Name, err)
	}
	return nil
}

func deleteAndWait(c *client.Client, name string) error {
	op, err := c.DeleteVM(context.Background(), name, true, time.Minute)
	if err == nil {
		op, err = c.Wait(context.Background(), op, nil)
	}
	if err == nil && op.State != v1.OpSucceeded {
		err = fmt.Errorf("operation %s %s: %v", op.ID, op.State, op.Error)
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}
