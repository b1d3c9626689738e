package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/network"
	"hangar/internal/qemu"
	"hangar/internal/qemu/blockops"
	"hangar/internal/qemu/config"
	"hangar/internal/revert"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// progressFunc reports an operation's progress: the fraction done and the
// phase, and for phases that copy data the bytes moved and the bytes to
// move.
type progressFunc func(f float64, phase string, bytes ...int64)

// copyProgress reports a copy of total bytes, which runs from lo to lo+span
// of the operation, as phase.
func copyProgress(progress progressFunc, lo, span float64, phase string, total int64) func(float64) {
	return func(f float64) { progress(lo+span*f, phase, int64(f*float64(total)), total) }
}

// task is one unit of work for a VM's worker.
type task struct {
	op      string         // run this operation
	recover bool           // re-adopt after an agent restart
	exited  *qemu.Instance // this QEMU went away
	restart bool           // restart by policy
	stale   bool           // kill the local copy if another host owns the VM (stale.go)
	report  bool           // write the running QEMU's state again (the host holds a lease again)
	// migration: take this host's next step of the VM's migration
	migration bool
	// sourceLeftovers: delete the files a migration left here (leftovers.go)
	sourceLeftovers bool
	// io: storage events of a QEMU (ioerror.go); ioRetry: its storage
	// answers again, resume it
	io      *ioEvents
	ioRetry *qemu.Instance
}

// machine serializes everything done to one VM. Its fields other than
// queue are touched only by its own worker goroutine.
type machine struct {
	a     *Agent
	name  string
	log   *slog.Logger
	queue []task // guarded by a.mu
	wake  chan struct{}

	inst     *qemu.Instance
	restarts []time.Time
	gone     bool
	// Of inst: when it started and with which accelerator (recorded in
	// the status whenever the worker writes it as running).
	startedAt time.Time
	accel     string
	// timings of the operation being run (see v1.Operation.Timings).
	timings []v1.Timing
	// handOff: the operation being run ends with records only the pool
	// master removes (a VM's spec, owner, booking): it is handed to the
	// master instead of being finished here (v1.Operation.HandOff).
	handOff bool
	// incoming is the QEMU this host started as a migration's target,
	// until the guest runs here (then it is inst).
	incoming *qemu.Instance
	// io is the I/O error policy's state (ioerror.go).
	io ioState
}

// mark records that the running operation finished phase now.
func (m *machine) mark(phase string) { m.markAt(phase, time.Now()) }

func (m *machine) markAt(phase string, at time.Time) {
	m.timings = append(m.timings, v1.Timing{Phase: phase, At: at.UTC()})
}

func (m *machine) loop() {
	defer m.a.workers.Done()
	ctx := m.a.ctx
	for {
		m.a.mu.Lock()
		var t task
		have := len(m.queue) > 0
		if have {
			t = m.queue[0]
			m.queue = m.queue[1:]
		}
		m.a.mu.Unlock()
		if !have {
			if m.gone && m.a.retire(m) {
				return
			}
			select {
			case <-m.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		if m.gone && t.op == "" && !t.sourceLeftovers {
			continue
		}
		m.gone = false
		switch {
		case t.op != "":
			m.runOp(ctx, t.op)
		case t.recover:
			m.recover(ctx)
		case t.exited != nil:
			m.onExit(ctx, t.exited, "")
		case t.restart:
			m.policyRestart(ctx)
		case t.stale:
			if _, err := m.killStale(ctx); err != nil {
				m.log.Error("stale copy", "err", err)
			}
		case t.report:
			m.reportRunning(ctx)
		case t.migration:
			m.migrationStep(ctx)
		case t.sourceLeftovers:
			m.removeSourceLeftovers(ctx)
		case t.io != nil:
			m.onIOEvents(ctx, t.io)
		case t.ioRetry != nil:
			m.ioRetry(ctx, t.ioRetry)
		}
	}
}

// runOp claims an operation, executes it and records the outcome. An
// operation found "running" was interrupted by a crash and is run again:
// every step is idempotent.
func (m *machine) runOp(ctx context.Context, id string) {
	defer m.a.opFinished(id)
	m.timings = nil
	m.mark("seen")
	inv := m.a.inv
	op, rev, err := inv.Op(ctx, id)
	if errors.Is(err, inventory.ErrInvalidRecord) && rev != 0 && op.Host == m.a.cfg.Host && !op.Done() {
		m.a.refuseOp(ctx, inventory.OpKey(id), op, rev, err)
		return
	}
	if err != nil {
		m.log.Warn("load operation", "op", id, "err", err)
		return
	}
	if op.Done() || op.Host != m.a.cfg.Host {
		return
	}
	if err := m.checkOpPlacement(ctx, op); err != nil {
		m.a.refuseOp(ctx, inventory.OpKey(id), op, rev, err)
		return
	}
	if op.State == v1.OpRunning {
		op.Attempts++
		m.log.Info("resuming interrupted operation", "op", id, "kind", op.Kind, "attempt", op.Attempts)
	}
	op.State = v1.OpRunning
	op.Updated = time.Now().UTC()
	op.Timings = m.timings
	if rev, err = inv.PutOp(ctx, op, rev); err != nil {
		m.log.Info("operation not claimed", "op", id, "err", err) // cancelled meanwhile
		return
	}
	m.a.crashPoint("op-claimed")
	m.mark("claimed")
	progress := func(f float64, phase string, bytes ...int64) {
		op.Progress = v1.Progress{Fraction: f, Phase: phase}
		if len(bytes) == 2 {
			op.Progress.Bytes, op.Progress.TotalBytes = bytes[0], bytes[1]
		}
		op.Updated = time.Now().UTC()
		op.Timings = m.timings
		if r, err := inv.PutOp(ctx, op, rev); err == nil {
			rev = r
		}
	}
	m.log.Info("operation started", "op", id, "kind", op.Kind)
	m.handOff = false
	err = m.execute(ctx, op, progress)
	if ctx.Err() != nil {
		m.log.Info("operation interrupted, resumes at restart", "op", id)
		return
	}
	op.Updated = time.Now().UTC()
	op.Timings = m.timings
	m.timings = nil
	switch {
	case m.handOff:
		// The master finishes it: removes the VM's records and records
		// the result (with the error, if any) in one fenced transaction.
		op.HandOff = true
		op.Progress = v1.Progress{Fraction: 0.99, Phase: "handed to the pool master"}
		if err != nil {
			op.Error = errdefs.ToAPI(err)
			m.log.Warn("operation failed; the pool master removes the vm's records", "op", id, "kind", op.Kind, "err", err)
		} else {
			m.log.Info("operation done on this host; the pool master finishes it", "op", id, "kind", op.Kind)
		}
	case err != nil:
		op.State = v1.OpFailed
		op.Error = errdefs.ToAPI(err)
		m.log.Warn("operation failed", "op", id, "kind", op.Kind, "err", err)
	default:
		op.State = v1.OpSucceeded
		// A copy that counted its bytes moved them all.
		total := op.Progress.TotalBytes
		op.Progress = v1.Progress{Fraction: 1, Phase: "done", Bytes: total, TotalBytes: total}
		m.log.Info("operation succeeded", "op", id, "kind", op.Kind)
	}
	// Conditioned on the revision this worker claimed (and advanced with
	// its progress): a record someone else changed meanwhile — a takeover —
	// is not overwritten.
	if _, err := inv.PutOp(ctx, op, rev); err != nil {
		m.log.Error("record operation result", "op", id, "state", op.State, "err", err)
	} else {
		m.a.observeOp(op)
	}
	m.a.crashPoint("op-finished")
}

// checkOpPlacement refuses an operation on a VM this worker is not for: a
// target other than the worker's VM, a VM record that fails its checks, or
// one placed on another host.
func (m *machine) checkOpPlacement(ctx context.Context, op v1.Operation) error {
	if op.Target != m.name {
		return fmt.Errorf("operation %s targets %q, not %q: %w", op.ID, op.Target, m.name, inventory.ErrInvalidRecord)
	}
	if vm.OpTarget(op.Kind) != vm.TargetVM {
		return nil
	}
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil // deleted by an earlier attempt, or the kind reports it
	case err != nil:
		return err
	case spec.Host != m.a.cfg.Host:
		return fmt.Errorf("operation %s: vm %q is placed on host %q, not on %q: %w", op.ID, m.name, spec.Host, m.a.cfg.Host, inventory.ErrInvalidRecord)
	}
	return nil
}

func (m *machine) execute(ctx context.Context, op v1.Operation, progress progressFunc) error {
	h, ok := m.a.handlers[op.Kind]
	if !ok {
		return fmt.Errorf("operation kind %q: %w", op.Kind, errdefs.ErrPrecondition)
	}
	return h(m, ctx, op, progress)
}

// opHandler runs one kind of operation on the VM's worker.
type opHandler func(m *machine, ctx context.Context, op v1.Operation, progress progressFunc) error

// withArgs decodes an operation's arguments into a T for f.
func withArgs[T any](f func(m *machine, ctx context.Context, op v1.Operation, args T, progress progressFunc) error) opHandler {
	return func(m *machine, ctx context.Context, op v1.Operation, progress progressFunc) error {
		var args T
		if err := decodeArgs(op, &args); err != nil {
			return err
		}
		return f(m, ctx, op, args, progress)
	}
}

// opHandlers returns a handler for every operation kind vm.ValidateOp
// admits (a test keeps the two in step). The agent builds the table once;
// it is a function because the handlers lead back to execute.
func opHandlers() map[string]opHandler {
	return map[string]opHandler{
		"create": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.CreateArgs, progress progressFunc) error {
			return m.create(ctx, args, progress)
		}),
		"start": func(m *machine, ctx context.Context, _ v1.Operation, progress progressFunc) error {
			progress(0.2, "starting qemu")
			return m.start(ctx)
		},
		"stop": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.StopArgs, progress progressFunc) error {
			progress(0.2, "stopping")
			return m.stop(ctx, args)
		}),
		"reboot": func(m *machine, ctx context.Context, _ v1.Operation, _ progressFunc) error {
			return m.withMonitor(ctx, "reboot", func(i *qemu.Instance) error { return i.Mon.SystemReset(ctx) }, "")
		},
		"pause": func(m *machine, ctx context.Context, _ v1.Operation, _ progressFunc) error {
			return m.withMonitor(ctx, "pause", func(i *qemu.Instance) error { return i.Mon.Stop(ctx) }, v1.StatePaused)
		},
		"limits": withArgs(func(m *machine, ctx context.Context, op v1.Operation, _ v1.LimitsArgs, _ progressFunc) error {
			err := m.updateLimits(ctx)
			if err != nil && len(op.Args) > 0 {
				// A refused live change: the master writes the limits
				// before it back and asks this host to apply them again.
				m.handOff = true
			}
			return err
		}),
		"resume": func(m *machine, ctx context.Context, _ v1.Operation, progress progressFunc) error {
			if m.inst == nil {
				progress(0.2, "loading memory")
				return m.start(ctx) // a suspended VM resumes from its state file
			}
			return m.withMonitor(ctx, "resume", func(i *qemu.Instance) error { return i.Mon.Cont(ctx) }, v1.StateRunning)
		},
		"suspend": func(m *machine, ctx context.Context, _ v1.Operation, progress progressFunc) error {
			progress(0.1, "saving memory")
			return m.suspend(ctx, progress)
		},
		"media": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.MediaArgs, _ progressFunc) error {
			return m.media(ctx, args)
		}),
		"snapshot": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.SnapshotArgs, progress progressFunc) error {
			return m.snapshot(ctx, args, progress)
		}),
		"snapshot-commit": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.SnapshotActionArgs, progress progressFunc) error {
			return m.commitSnapshot(ctx, args.Name, progress)
		}),
		"snapshot-revert": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.SnapshotActionArgs, progress progressFunc) error {
			return m.revertSnapshot(ctx, args.Name, false, progress)
		}),
		"snapshot-discard": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.SnapshotActionArgs, progress progressFunc) error {
			return m.revertSnapshot(ctx, args.Name, true, progress)
		}),
		"resize": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.ResizeArgs, _ progressFunc) error {
			return m.resize(ctx, args)
		}),
		"migrate": withArgs(migrateOp),
		"evacuate": func(m *machine, _ context.Context, op v1.Operation, _ progressFunc) error {
			return errdefs.Precondition("evacuate %s: evacuations are driven by the pool master, not by an agent", op.Target)
		},
		"failover": func(m *machine, _ context.Context, op v1.Operation, _ progressFunc) error {
			return errdefs.Precondition("failover of %s: failovers are driven by the pool master, not by an agent", op.Target)
		},
		"volume-copy":    withArgs(volumeOp),
		"volume-flatten": withArgs(volumeOp),
		"template": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.TemplateArgs, progress progressFunc) error {
			return m.toTemplate(ctx, args.Template, progress)
		}),
		"clone": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.CloneArgs, progress progressFunc) error {
			return m.clone(ctx, args, progress)
		}),
		"delete": withArgs(func(m *machine, ctx context.Context, _ v1.Operation, args v1.DeleteArgs, _ progressFunc) error {
			return m.delete(ctx, args)
		}),
	}
}

// volumeOp copies or flattens a volume (op.Kind says which) on the I/O pool.
func volumeOp(m *machine, ctx context.Context, op v1.Operation, args v1.VolumeCopyArgs, progress progressFunc) error {
	m.gone = true // a volume's worker need not stay
	return m.a.volumeJob(ctx, op.Kind, args, func(total int64) func(float64) {
		return copyProgress(progress, 0.05, 0.9, "copying", total)
	})
}

func decodeArgs(op v1.Operation, v any) error {
	if len(op.Args) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(op.Args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("operation %s args: %v: %w", op.ID, err, inventory.ErrInvalidRecord)
	}
	return nil
}

// load reads the VM's spec and observed status.
func (m *machine) load(ctx context.Context) (v1.VMSpec, v1.VMStatus, error) {
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		return spec, v1.VMStatus{}, err
	}
	st, err := m.a.inv.Status(ctx, m.name)
	return spec, st, err
}

// setStatus updates the VM's observed status: f changes the record as
// read, and the write is conditioned on the status revision read and on the
// spec that places the VM on this host being unchanged (a concurrent writer
// makes it read and apply f again; a VM placed elsewhere is not written).
func (m *machine) setStatus(ctx context.Context, f func(*v1.VMStatus)) error {
	for attempt := 1; ; attempt++ {
		rec, err := m.a.inv.statusForUpdate(ctx, m.name)
		if err != nil {
			return err
		}
		if rec.Spec != nil && rec.Spec.Host != m.a.cfg.Host {
			return fmt.Errorf("status of vm %q: it is placed on host %q, not on %q: %w", m.name, rec.Spec.Host, m.a.cfg.Host, errdefs.ErrPrecondition)
		}
		if rec.Owner != nil && rec.Owner.Host != m.a.cfg.Host {
			return fmt.Errorf("status of vm %q: host %q owns it (epoch %d), not %q: %w", m.name, rec.Owner.Host, rec.Owner.Epoch, m.a.cfg.Host, errdefs.ErrPrecondition)
		}
		st := rec.VMStatus
		f(&st)
		m.a.nameDisks(ctx, &st)
		st.Host = m.a.cfg.Host
		st.UpdatedAt = time.Now().UTC()
		_, err = m.a.inv.UpdateStatus(ctx, m.name, st, rec.Rev, rec.SpecRev, rec.OwnerRev)
		if errors.Is(err, store.ErrConflict) && attempt < 10 {
			m.log.Debug("status changed meanwhile, applying the update again", "attempt", attempt)
			continue
		}
		return err
	}
}

// running records inst as the VM's running QEMU in st.
func (m *machine) running(st *v1.VMStatus, inst *qemu.Instance, state string) {
	started := m.startedAt
	st.State, st.PID, st.StartedAt, st.Accelerator = state, inst.PID, &started, m.accel
}

func (m *machine) create(ctx context.Context, args v1.CreateArgs, progress progressFunc) error {
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		return err
	}
	logDir, err := m.a.logDir(m.name)
	if err != nil {
		return err
	}
	rev := revert.New()
	defer rev.Fail()
	rev.Add(func() {
		// A failed create leaves nothing behind: no volumes, no records.
		bg := context.Background()
		_, _ = m.a.cfg.Store.Txn(bg, nil, append(m.releaseUID(bg), store.DeleteOp(inventory.StatusKey(m.name), store.AnyRevision))...)
		m.handOff = true // the master removes the spec, owner and booking
		_ = os.RemoveAll(logDir)
		if err := m.a.cfg.Pool.DeleteVM(m.name, nil); err != nil {
			m.log.Warn("roll back volume directory", "err", err)
		}
		m.gone = true
	})
	var disks []v1.DiskStatus
	for i, d := range spec.Disks {
		lo, span := 0.05+0.6*float64(i)/float64(len(spec.Disks)), 0.6/float64(len(spec.Disks))
		progress(lo, "creating disk "+d.Name)
		ds, err := m.provision(ctx, spec, i, d, func(f float64) { progress(lo+span*f, "creating disk "+d.Name) })
		if err != nil {
			return err
		}
		disks = append(disks, ds)
		rev.Add(func() {
			if err := m.a.cfg.Pool.DeleteVM(m.name, []v1.DiskStatus{ds}); err != nil {
				m.log.Warn("roll back disk", "disk", ds.Name, "err", err)
			}
		})
	}
	m.a.crashPoint("disks-created")
	m.mark("disks")
	if err := m.setStatus(ctx, func(st *v1.VMStatus) {
		if m.inst != nil {
			// A resumed create whose QEMU an earlier agent started and this
			// one re-adopted: keep what recovery recorded (pid, start time,
			// accelerator, the disks as QEMU has them).
			if len(st.Disks) == 0 {
				st.Disks = disks
			}
			return
		}
		*st = v1.VMStatus{State: v1.StateStopped, Disks: disks}
	}); err != nil {
		return err
	}
	m.a.crashPoint("status-stopped")
	m.mark("stopped")
	if args.Start {
		progress(0.7, "starting qemu")
		if err := m.start(ctx); err != nil {
			return err
		}
	}
	rev.Success()
	return nil
}

// start boots the VM, or resumes it from its suspend file when it has one.
func (m *machine) start(ctx context.Context) error {
	st, err := m.a.inv.Status(ctx, m.name)
	if err != nil {
		return err
	}
	if st.StateFile != "" && m.inst == nil {
		if err := m.startFrom(ctx, st.StateFile); err != nil {
			return err
		}
		if err := os.Remove(st.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("remove suspend file", "err", err)
		}
		return m.setStatus(ctx, func(st *v1.VMStatus) { st.StateFile = "" })
	}
	return m.startFrom(ctx, "")
}

// startFrom starts QEMU; with stateFile it loads RAM and device state from
// it (suspend/resume, snapshot revert) instead of booting.
func (m *machine) startFrom(ctx context.Context, stateFile string) error {
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		return err
	}
	if owner, err := m.a.ownedElsewhere(ctx, m.name); err != nil {
		return fmt.Errorf("start %s: %w", m.name, err)
	} else if owner != "" {
		return errOwnedElsewhere(m.name, owner)
	}
	m.a.fencedVMs.Delete(m.name)
	if m.inst != nil {
		inst := m.inst
		st, err := inst.Mon.QueryStatus(ctx)
		if err != nil {
			return fmt.Errorf("start %s: %w", m.name, err)
		}
		if !st.Running {
			if err := inst.Mon.Cont(ctx); err != nil {
				return fmt.Errorf("start %s: resume: %w", m.name, err)
			}
		}
		return m.setStatus(ctx, func(st *v1.VMStatus) { m.running(st, inst, v1.StateRunning); st.Reason = "" })
	}
	status, err := m.a.inv.Status(ctx, m.name)
	if err != nil {
		return err
	}
	rev := revert.New()
	defer rev.Fail()
	incoming := ""
	if stateFile != "" {
		incoming = "defer"
	}
	l, err := m.prepareLaunch(ctx, spec, &status, rev, incoming, true)
	if err != nil {
		return err
	}
	defer closeAll(l.sb.Files)
	argv, sb, runDir := l.argv, l.sb, l.runDir
	for i := range status.Disks {
		status.Disks[i].Node = config.NodeName(status.Disks[i].Name)
	}
	if err := m.setStatus(ctx, func(st *v1.VMStatus) { st.State, st.Disks, st.UID = v1.StateStarting, status.Disks, sb.UID }); err != nil {
		return err
	}
	m.mark("starting")
	rev.Add(func() {
		_ = m.setStatus(context.Background(), func(st *v1.VMStatus) { st.State = v1.StateStopped; st.PID = 0 })
	})
	inst, err := qemu.StartAs(ctx, m.a.cfg.Caps, m.name, runDir, argv, sb, m.log)
	if err != nil {
		return err
	}
	rev.Add(func() { _ = inst.Kill(context.Background()) })
	m.markAt("exec", inst.Execed)
	m.mark("qmp")
	m.startedAt, m.accel = time.Now().UTC(), m.a.cfg.Caps.Accel
	m.a.crashPoint("qemu-exec")
	if err := m.applyLimits(ctx, spec, inst); err != nil {
		return fmt.Errorf("start %s: %w", m.name, err)
	}
	rev.Add(m.removeCgroup)
	m.mark("limits")
	if stateFile != "" {
		f, err := os.Open(stateFile)
		if err != nil {
			return fmt.Errorf("start %s: %w", m.name, err)
		}
		err = blockops.LoadState(ctx, inst.Mon, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("start %s: load state %s: %w", m.name, stateFile, err)
		}
	}
	if err := inst.Mon.Cont(ctx); err != nil {
		return fmt.Errorf("start %s: cont: %w", m.name, err)
	}
	m.a.crashPoint("qemu-cont")
	m.mark("cont")
	if err := m.setStatus(ctx, func(st *v1.VMStatus) { m.running(st, inst, v1.StateRunning); st.Reason = "" }); err != nil {
		return err
	}
	m.a.crashPoint("status-running")
	m.mark("running")
	m.watch(inst, spec)
	rev.Success()
	m.log.Info("vm started", "pid", inst.PID, "accel", m.a.cfg.Caps.Accel)
	return nil
}

// launch is what prepareLaunch makes ready for a QEMU start.
type launch struct {
	argv   []string
	sb     *qemu.Sandbox
	runDir string
}

// prepareLaunch makes everything a QEMU start of the VM needs: its disk
// files (provisioned when provision and missing from st, which gets
// them), the sandbox (uid, owners, descriptors; the caller closes
// sb.Files), taps on their bridges (removed by rev on failure) and the
// argv (incoming: QEMU's -incoming, "" for none).
func (m *machine) prepareLaunch(ctx context.Context, spec v1.VMSpec, st *v1.VMStatus, rev *revert.Reverter, incoming string, provision bool) (launch, error) {
	runDir, err := m.a.runDir(m.name)
	if err != nil {
		return launch{}, err
	}
	logDir, err := m.a.logDir(m.name)
	if err != nil {
		return launch{}, err
	}
	files := make([]config.DiskFile, len(spec.Disks))
	for i, d := range spec.Disks {
		if d.Media == "cdrom" && d.Image != "" {
			if files[i], err = m.isoFile(ctx, d.Image); err != nil {
				return launch{}, err
			}
			continue
		}
		var ds *v1.DiskStatus
		for j := range st.Disks {
			if st.Disks[j].Name == d.Name {
				ds = &st.Disks[j]
			}
		}
		if ds == nil && !provision {
			return launch{}, fmt.Errorf("start %s: disk %s has no file on record", m.name, d.Name)
		}
		if ds == nil {
			created, err := m.provision(ctx, spec, i, d, nil)
			if err != nil {
				return launch{}, err
			}
			st.Disks = append(st.Disks, created)
			ds = &created
		}
		files[i] = config.DiskFile{Path: ds.Path, Format: ds.Format}
		if d.Media == "cdrom" && d.Name != vm.CloudInitDisk {
			files[i] = config.DiskFile{Format: "raw"} // no medium
		}
		if ds.Top != "" {
			files[i] = config.DiskFile{Path: ds.Top, Format: "qcow2"}
		}
	}
	if err := ensureDir(logDir); err != nil {
		return launch{}, fmt.Errorf("start %s: %w", m.name, err)
	}
	sb, err := m.sandbox(ctx, spec, files, logDir)
	if err != nil {
		return launch{}, err
	}
	m.mark("sandbox")
	taps := make([]string, len(spec.NICs))
	for i, n := range spec.NICs {
		if n.Mode != v1.NICBridge {
			continue
		}
		taps[i] = network.TapName(m.name, i)
		if err := network.EnsureTapFor(taps[i], n.Bridge, sb.UID, sb.GID); err != nil {
			return launch{}, errdefs.Field(fmt.Sprintf("nics[%d].bridge", i), err)
		}
		tap := taps[i]
		rev.Add(func() { _ = network.DeleteTap(tap) })
	}
	if err := m.a.checkHugepages(spec); err != nil {
		return launch{}, err
	}
	params := config.Params{Spec: spec, Accel: m.a.cfg.Caps.Accel, RunDir: runDir,
		LogDir: logDir, Disks: files, Taps: taps}
	params.Incoming = incoming
	argv, err := config.Argv(params)
	if err != nil {
		return launch{}, err
	}
	return launch{argv: argv, sb: sb, runDir: runDir}, nil
}

// watch hands the instance's exit to the worker. An HA VM is one the
// fencer kills from now on, before its next list says so.
func (m *machine) watch(inst *qemu.Instance, spec v1.VMSpec) {
	m.inst = inst
	m.a.live.set(m.name, inst)
	if spec.HA != nil && spec.HA.Enabled {
		m.a.fence.noteHA(m.name)
	}
	m.watchIOErrors(inst)
	go func() {
		<-inst.Exited()
		m.a.live.drop(m.name, inst)
		m.a.enqueue(m.name, task{exited: inst})
	}()
}

func (m *machine) withMonitor(ctx context.Context, what string, f func(*qemu.Instance) error, state string) error {
	if m.inst == nil {
		return errdefs.Precondition("%s %s: vm is not running", what, m.name)
	}
	if err := f(m.inst); err != nil {
		return fmt.Errorf("%s %s: %w", what, m.name, err)
	}
	if state == "" {
		return nil
	}
	return m.setStatus(ctx, func(st *v1.VMStatus) { st.State = state })
}

func (m *machine) stop(ctx context.Context, args v1.StopArgs) error {
	inst := m.inst
	if inst != nil {
		if err := m.setStatus(ctx, func(st *v1.VMStatus) { st.State = v1.StateStopping }); err != nil {
			return err
		}
		timeout := m.a.cfg.StopTimeout
		if args.TimeoutSeconds > 0 {
			timeout = time.Duration(args.TimeoutSeconds) * time.Second
		}
		var err error
		if args.Force {
			err = inst.Quit(ctx)
		} else {
			_, err = inst.Powerdown(ctx, timeout)
		}
		if err != nil {
			return fmt.Errorf("stop %s: %w", m.name, err)
		}
		m.inst = nil
		m.deleteTaps(ctx)
	}
	return m.setStatus(ctx, func(st *v1.VMStatus) {
		st.State, st.PID, st.StartedAt, st.Reason = v1.StateStopped, 0, nil, "stopped by user"
	})
}

// deleteTaps releases what a VM's QEMU held on the host once it is gone:
// its taps and its cgroup.
func (m *machine) deleteTaps(ctx context.Context) {
	m.removeCgroup()
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		return
	}
	for i, n := range spec.NICs {
		if n.Mode == v1.NICBridge {
			tap := network.TapName(m.name, i)
			if err := network.DeleteTap(tap); err != nil {
				m.log.Warn("delete tap", "err", err)
			}
			if err := network.DeleteIFB(tap); err != nil {
				m.log.Warn("delete ifb", "err", err)
			}
		}
	}
}

func (m *machine) delete(ctx context.Context, args v1.DeleteArgs) error {
	if m.inst != nil {
		if !args.Force {
			return errdefs.Precondition("delete %s: vm is running (stop it first or force)", m.name)
		}
		if err := m.inst.Kill(ctx); err != nil {
			return err
		}
		m.inst = nil
		m.deleteTaps(ctx)
	}
	status, err := m.a.inv.Status(ctx, m.name)
	if err != nil {
		return err
	}
	runDir, err := m.a.runDir(m.name)
	if err != nil {
		return err
	}
	logDir, err := m.a.logDir(m.name)
	if err != nil {
		return err
	}
	if err := m.a.cfg.Pool.DeleteVM(m.name, ownedFiles(status)); err != nil {
		return fmt.Errorf("delete %s: %w", m.name, err)
	}
	_ = os.RemoveAll(runDir)
	_ = os.RemoveAll(logDir)
	if _, err := m.a.cfg.Store.Txn(ctx, nil, append(m.releaseUID(ctx), store.DeleteOp(inventory.StatusKey(m.name), store.AnyRevision))...); err != nil {
		return fmt.Errorf("delete %s: %w", m.name, err)
	}
	m.handOff = true // the master removes the spec, owner and booking
	m.gone = true
	m.log.Info("vm deleted")
	return nil
}

// recover re-adopts a QEMU left running by an earlier agent, or notices
// that it died meanwhile.
func (m *machine) recover(ctx context.Context) {
	if m.inst != nil {
		return
	}
	if elsewhere, err := m.killStale(ctx); err != nil || elsewhere {
		if err != nil {
			m.log.Error("recover: check the owner record", "err", err)
		}
		return // another host's VM (or unknown): nothing adopted, nothing written
	}
	runDir, err := m.a.runDir(m.name)
	if err != nil {
		m.log.Error("recover", "err", err)
		return
	}
	inst, err := qemu.Adopt(ctx, m.name, runDir, m.log)
	if err == nil {
		qs, err := inst.Mon.QueryStatus(ctx)
		if err == nil && qs.Status == "postmigrate" {
			if ok, rerr := m.resumeOrphanSource(ctx, inst.Mon); rerr != nil {
				m.log.Warn("resume a migration source left paused", "err", rerr)
			} else if ok {
				qs.Running = true
			}
		}
		state := v1.StateRunning
		if err == nil && !qs.Running {
			state = v1.StatePaused
		}
		m.adoptFacts(ctx, inst)
		m.checkAdoptedUID(ctx, inst.PID)
		spec, _, err := m.a.inv.Spec(ctx, m.name)
		if err != nil {
			m.log.Warn("re-adopt: load spec (cgroup limits and the fencer's list catch up later)", "err", err)
		} else if err := m.applyLimits(ctx, spec, inst); err != nil {
			m.log.Warn("re-adopt cgroup", "err", err)
		}
		m.watch(inst, spec)
		if n, err := blockops.CancelAll(ctx, inst.Mon); err != nil {
			m.log.Warn("cancel orphan block jobs", "err", err)
		} else if n > 0 {
			m.log.Info("cancelled block jobs of interrupted operations", "jobs", n)
		}
		if err := m.reconcileTops(ctx); err != nil {
			m.log.Warn("read disk tops from qemu", "err", err)
		}
		if err := m.setStatus(ctx, func(st *v1.VMStatus) { m.running(st, inst, state) }); err != nil {
			m.log.Warn("write status", "err", err)
		}
		m.log.Info("vm re-adopted", "pid", inst.PID, "state", state, "accel", m.accel, "startedAt", m.startedAt)
		return
	}
	st, serr := m.a.inv.Status(ctx, m.name)
	if serr != nil {
		m.log.Warn("read status", "err", serr)
		return
	}
	switch st.State {
	case v1.StateRunning, v1.StatePaused, v1.StateStarting, v1.StateStopping:
		m.log.Warn("qemu gone while the agent was down", "err", err)
		m.onExit(ctx, nil, "qemu exited while the agent was down")
	}
}

// adoptFacts finds out when an adopted QEMU started and which accelerator
// it runs with: from the status if it recorded this very process, else from
// /proc/<pid>/stat and QMP query-kvm.
func (m *machine) adoptFacts(ctx context.Context, inst *qemu.Instance) {
	m.startedAt, m.accel = time.Time{}, ""
	if st, err := m.a.inv.Status(ctx, m.name); err == nil && st.PID == inst.PID {
		if st.StartedAt != nil {
			m.startedAt = *st.StartedAt
		}
		m.accel = st.Accelerator
	}
	if m.startedAt.IsZero() {
		t, err := processStart(inst.PID)
		if err != nil {
			m.log.Warn("read qemu start time", "pid", inst.PID, "err", err)
			t = time.Now().UTC()
		}
		m.startedAt = t
	}
	if m.accel == "" {
		var kvm struct {
			Enabled bool `json:"enabled"`
		}
		if err := inst.Mon.Execute(ctx, "query-kvm", nil, &kvm); err != nil {
			m.log.Warn("query-kvm", "err", err)
		} else if kvm.Enabled {
			m.accel = "kvm"
		} else {
			m.accel = "tcg"
		}
	}
}

// onExit records a QEMU exit the agent did not ask for and applies the
// restart policy.
func (m *machine) onExit(ctx context.Context, inst *qemu.Instance, reason string) {
	if inst != nil {
		if m.inst != inst {
			return // an exit the worker caused itself (stop, delete)
		}
		m.inst = nil
	}
	m.deleteTaps(ctx)
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if errors.Is(err, store.ErrNotFound) {
		return
	}
	if err != nil {
		m.log.Warn("load spec", "err", err)
		return
	}
	crashed := true
	if inst != nil {
		if sd := inst.ShutdownEvent(); sd != nil && sd.Guest {
			crashed = false
			reason = "guest powered off (" + sd.Reason + ")"
		} else if sd != nil {
			reason = "qemu stopped outside hangar (" + sd.Reason + ")"
		} else {
			reason = "qemu died without shutting down"
		}
	}
	state := v1.StateStopped
	if crashed {
		state = v1.StateCrashed
	}
	restart := spec.Power != v1.PowerStopped &&
		(spec.RestartPolicy == v1.RestartAlways || (spec.RestartPolicy == v1.RestartOnFailure && crashed))
	if _, fenced := m.a.fencedVMs.Load(m.name); fenced && inst != nil {
		restart, reason = false, "killed by self-fencing: the host's lease and storage heartbeat may have lapsed"
	}
	if restart {
		cut := time.Now().Add(-m.a.cfg.RestartWindow)
		recent := m.restarts[:0]
		for _, t := range m.restarts {
			if t.After(cut) {
				recent = append(recent, t)
			}
		}
		m.restarts = recent
		if len(recent) >= m.a.cfg.RestartLimit {
			restart = false
			reason += fmt.Sprintf("; not restarted: %d restarts within %s", len(recent), m.a.cfg.RestartWindow)
		}
	}
	m.log.Warn("vm exited", "state", state, "reason", reason, "restart", restart)
	if err := m.setStatus(ctx, func(st *v1.VMStatus) {
		st.State, st.PID, st.StartedAt, st.Reason = state, 0, nil, reason
	}); err != nil {
		m.log.Warn("write status", "err", err)
	}
	if restart {
		delay := time.Duration(1<<len(m.restarts)) * 500 * time.Millisecond
		m.restarts = append(m.restarts, time.Now())
		time.AfterFunc(delay, func() { m.a.enqueue(m.name, task{restart: true}) })
	}
}

func (m *machine) policyRestart(ctx context.Context) {
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err == nil && spec.Host != m.a.cfg.Host {
		m.a.fencedVMs.Delete(m.name) // restarted elsewhere: its fencing here is over
	}
	if err != nil || m.inst != nil || spec.Power == v1.PowerStopped || spec.Host != m.a.cfg.Host {
		return
	}
	if err := m.start(ctx); err != nil {
		m.log.Warn("restart by policy failed", "err", err)
		_ = m.setStatus(ctx, func(st *v1.VMStatus) { st.State, st.Reason = v1.StateCrashed, "restart failed: "+err.Error() })
		return
	}
	_ = m.setStatus(ctx, func(st *v1.VMStatus) { st.Restarts++ })
	m.log.Info("vm restarted by policy", "policy", spec.RestartPolicy)
}
