package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/migrate"
	"hangar/internal/qemu"
	"hangar/internal/qemu/config"
	"hangar/internal/qemu/migration"
	"hangar/internal/revert"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// migrateOp is the handler of a migrate operation when an agent claims
// one. A migration is driven by the pool master (migrate.Drive), which
// claims migrate operations itself; an agent that gets one runs no master
// to drive it, and refuses rather than starting half of a two-host
// operation.
func migrateOp(m *machine, _ context.Context, _ v1.Operation, args v1.MigrateArgs, _ progressFunc) error {
	return errdefs.Precondition("migrate %s to %s: live migration is driven by the pool master, and none drives this operation", m.name, args.To)
}

// migrationPoll is how often the agent looks at the migration records
// besides its watch (a part it waits for, a lost event).
const migrationPoll = time.Second

// watchMigrations hands every migration record that names this host (as
// source or target) to that VM's worker, which takes the step
// migrate.SourceStep / TargetStep says.
func (a *Agent) watchMigrations(ctx context.Context) {
	tick := time.NewTicker(migrationPoll)
	defer tick.Stop()
	for {
		kvs, rev, err := a.cfg.Store.List(ctx, inventory.Migrations)
		if err == nil {
			for _, kv := range kvs {
				a.migrationChanged(kv)
			}
		}
		wctx, cancel := context.WithCancel(ctx)
		events := a.cfg.Store.Watch(wctx, inventory.Migrations, rev+1)
	watch:
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					break watch
				}
				if ev.Type == store.EventPut {
					a.migrationChanged(ev.KV)
				}
			case <-tick.C:
				break watch
			case <-ctx.Done():
				cancel()
				return
			}
		}
		cancel()
	}
}

// migrationChanged queues a migration step for the VM whose record (or
// part) kv is, when the record names this host.
func (a *Agent) migrationChanged(kv store.KV) {
	name, _, _ := strings.Cut(strings.TrimPrefix(kv.Key, inventory.Migrations), "/")
	if vm.ValidateName("name", name) != nil {
		return
	}
	rkv, err := a.cfg.Store.Get(a.ctx, inventory.MigrationKey(name))
	if err != nil {
		return
	}
	rec, err := migrate.DecodeRecord(name, rkv.Value)
	if err != nil {
		return
	}
	if rec.Source == a.cfg.Host || rec.Target == a.cfg.Host {
		a.enqueue(name, task{migration: true})
	}
}

// migrationStep takes this host's next step of the VM's migration.
func (m *machine) migrationStep(ctx context.Context) {
	st, err := migrate.Load(ctx, m.a.cfg.Store, m.name)
	if errors.Is(err, migrate.ErrNoMigration) {
		m.migrationLeftovers(ctx, "")
		return
	}
	if err != nil {
		m.log.Warn("read migration", "err", err)
		return
	}
	m.migrationLeftovers(ctx, st.Rec.OpID)
	me := m.a.cfg.Host
	switch {
	case st.Rec.Target == me:
		owner := ""
		if o, _, err := m.a.inv.OwnerOf(ctx, m.name); err == nil {
			owner = o.Host
		}
		switch migrate.TargetStep(st.Rec, st.Target, owner) {
		case migrate.TargetPrepare:
			m.migrationTarget(ctx, st)
		case migrate.TargetResume:
			m.migrationResume(ctx, st)
		case migrate.TargetRemove:
			m.migrationRemoveTarget(ctx, st)
		}
	case st.Rec.Source == me:
		if migrate.SourceReports(st.Rec, st.Disks) {
			m.migrationReport(ctx, st)
			return
		}
		switch migrate.SourceStep(st.Rec, st.Source, false) {
		case migrate.SourceMigrate:
			m.migrationSource(ctx, st)
		case migrate.SourceRollBack:
			m.migrationRollBack(ctx, st)
		case migrate.SourceRecover:
			m.migrationRecover(ctx, st)
		case migrate.SourceCleanup:
			m.migrationCleanup(ctx, st)
		}
	}
}

// reportPart writes this host's part of the VM's migration; a failed
// write is logged (the master looks again, and a part left unwritten
// times out there).
func (m *machine) reportPart(ctx context.Context, part string, v any) {
	if err := migrate.WritePart(ctx, m.a.cfg.Store, m.name, part, v); err != nil {
		m.log.Warn("report migration "+part, "err", err)
	}
}

// hostIP is this host's address for migration streams: the host of its
// TLS API address (serve --listen).
func (a *Agent) hostIP() (string, error) {
	host, _, err := net.SplitHostPort(a.cfg.Address)
	if err != nil || net.ParseIP(host) == nil {
		return "", fmt.Errorf("host %s has no IP address to migrate over (serve --listen IP:PORT): %q", a.cfg.Host, a.cfg.Address)
	}
	return host, nil
}

// migrationTLS is the pool CA and this host's certificate for QEMU, to be
// written into the VM's run directory for its uid; nil when the migration
// was asked to be insecure.
func (m *machine) migrationTLS(rec migrate.Record, uid int) (*migration.TLS, error) {
	if rec.Args.Insecure {
		return nil, nil
	}
	pki := filepath.Join(m.a.cfg.DataDir, "pki")
	var t migration.TLS
	var err error
	if t.CA, err = os.ReadFile(filepath.Join(pki, "ca.crt")); err != nil {
		return nil, fmt.Errorf("migration tls: %w", err)
	}
	if t.Cert, err = os.ReadFile(filepath.Join(pki, "host.crt")); err != nil {
		return nil, fmt.Errorf("migration tls: %w", err)
	}
	if t.Key, err = os.ReadFile(filepath.Join(pki, "host.key")); err != nil {
		return nil, fmt.Errorf("migration tls: %w", err)
	}
	dir, err := m.a.runDir(m.name)
	if err != nil {
		return nil, err
	}
	t.Dir, t.UID, t.GID = filepath.Join(dir, "tls"), uid, uid
	return &t, nil
}

// freePort picks a free TCP port on ip for QEMU to listen on.
func freePort(ip string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// migrationTarget starts the VM's QEMU here waiting for the incoming
// migration (-incoming defer) and listening on this host's IP, and
// reports where. Shared disks are the source's files; for each local disk
// it makes an empty volume of the source's size (listed in its part before
// it is made, so an abort deletes it) and exports it over NBD (TLS) for
// the source's mirror.
func (m *machine) migrationTarget(ctx context.Context, st migrate.State) {
	part := &migrate.TargetPart{State: migrate.TgtPreparing}
	if err := migrate.Claim(ctx, m.a.cfg.Store, m.name, migrate.PartTarget, st.RecRev, part); err != nil {
		m.log.Info("migration target not claimed", "err", err)
		return
	}
	rev := revert.New()
	defer rev.Fail()
	fail := func(err error) {
		m.log.Warn("migration target failed", "err", err)
		rev.Fail() // its QEMU and volumes go before the part says failed
		part.State, part.Error = migrate.TgtFailed, err.Error()
		m.reportPart(ctx, migrate.PartTarget, part)
	}
	ip, err := m.a.hostIP()
	if err != nil {
		fail(err)
		return
	}
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		fail(err)
		return
	}
	// The source's status names its own files: this host's are made from
	// the record, and the result is checked like any status it reads.
	status, _, err := m.a.inv.StatusRev(ctx, m.name)
	if err != nil {
		fail(err)
		return
	}
	if status.Disks, err = m.migratedDisks(ctx, st.Rec, spec, status.Disks, false); err != nil {
		fail(err)
		return
	}
	if err := m.a.checkStatus(ctx, m.name, status, &spec); err != nil {
		fail(err)
		return
	}
	rev.Add(m.removeVMDir) // the seed prepareLaunch writes
	if len(st.Rec.Disks) > 0 {
		if err := m.targetVolumesFree(ctx, st.Rec); err != nil {
			fail(err) // nothing listed: the file there is left alone
			return
		}
		// Listed before they exist: a crash from here on leaves a part an
		// abort reads (TargetRemove deletes what it lists) and a journal.
		part.Disks = targetDisksOf(st.Rec)
		if err := migrate.WritePart(ctx, m.a.cfg.Store, m.name, migrate.PartTarget, part); err != nil {
			fail(err)
			return
		}
		if err := m.writeJournal(targetJournal{OpID: st.Rec.OpID, Disks: part.Disks}); err != nil {
			fail(err)
			return
		}
		rev.Add(func() {
			if err := m.removeTargetVolumes(context.Background(), part.Disks); err != nil {
				m.log.Warn("remove migration target volumes", "err", err)
				return // the journal stays: removed at the next look
			}
			m.removeJournal()
		})
		if err := m.createTargetVolumes(ctx, st.Rec); err != nil {
			fail(err)
			return
		}
	}
	l, err := m.prepareLaunch(ctx, spec, &status, rev, "defer", true)
	if err != nil {
		fail(err)
		return
	}
	defer closeAll(l.sb.Files)
	inst, err := qemu.StartAs(ctx, m.a.cfg.Caps, m.name, l.runDir, l.argv, l.sb, m.log)
	if err != nil {
		fail(err)
		return
	}
	rev.Add(func() { _ = inst.Kill(context.Background()) })
	tls, err := m.migrationTLS(st.Rec, l.sb.UID)
	if err != nil {
		fail(err)
		return
	}
	t := migration.Target{IP: ip, TLS: tls}
	if t.Port, err = freePort(ip); err != nil {
		fail(err)
		return
	}
	for _, d := range part.Disks {
		t.Exports = append(t.Exports, d.Export)
	}
	if len(t.Exports) > 0 {
		if t.NBDPort, err = freePort(ip); err == nil && t.NBDPort == t.Port {
			t.NBDPort, err = freePort(ip)
		}
		if err != nil {
			fail(err)
			return
		}
	}
	if err := migration.PrepareTarget(ctx, inst.Mon, t); err != nil {
		fail(err)
		return
	}
	rev.Success()
	m.incoming = inst
	m.startedAt, m.accel = time.Now().UTC(), m.a.cfg.Caps.Accel
	part.State, part.IP, part.Port, part.NBDPort = migrate.TgtListening, ip, t.Port, t.NBDPort
	if err := migrate.WritePart(ctx, m.a.cfg.Store, m.name, migrate.PartTarget, part); err != nil {
		m.log.Warn("report migration target", "err", err)
		return
	}
	m.log.Info("migration target listening", "ip", ip, "port", t.Port, "nbdPort", t.NBDPort, "volumes", len(part.Disks), "tls", tls != nil)
}

// migrationResume runs the guest here after the switch-over (the owner
// record names this host now) and records it as running.
func (m *machine) migrationResume(ctx context.Context, st migrate.State) {
	inst := m.incoming
	if inst == nil {
		// The agent restarted after it prepared the target: the QEMU it
		// started may still wait; adopt it.
		m.recover(ctx)
		inst = m.inst
	}
	if inst == nil {
		m.log.Warn("migration target: no QEMU to resume")
		return
	}
	t0 := time.Now()
	if err := migration.Resume(ctx, inst.Mon); err != nil {
		m.log.Warn("resume migrated vm", "err", err)
		return
	}
	t1 := time.Now()
	m.incoming = nil
	// The VM's limits follow it here; after the resume, so they add
	// nothing to the switch-over's downtime.
	if spec, _, err := m.a.inv.Spec(ctx, m.name); err != nil {
		m.log.Warn("limits of the migrated vm: load spec", "err", err)
	} else if err := m.applyLimits(ctx, spec, inst); err != nil {
		m.log.Warn("limits of the migrated vm", "err", err)
	}
	if m.inst != inst {
		spec, _, _ := m.a.inv.Spec(ctx, m.name) // for the fencer: its next list catches up on an error
		m.watch(inst, spec)
	}
	if err := m.statusAfterMigration(ctx, st.Rec, inst); err != nil {
		m.log.Warn("status after migration", "err", err)
	} else {
		m.removeJournal() // its volumes are the VM's now
	}
	t2 := time.Now()
	part := *st.Target
	part.State = migrate.TgtRunning
	m.reportPart(ctx, migrate.PartTarget, &part)
	m.log.Info("migrated vm runs here", "from", st.Rec.Source, "pid", inst.PID, "sinceSwitchOver", t0.Sub(st.Rec.Updated),
		"resume", t1.Sub(t0), "status", t2.Sub(t1), "report", time.Since(t2))
}

// migrationRemoveTarget ends the target QEMU of an aborted migration.
func (m *machine) migrationRemoveTarget(ctx context.Context, st migrate.State) {
	if o, _, err := m.a.inv.OwnerOf(ctx, m.name); err != nil || o.Host == m.a.cfg.Host {
		m.log.Warn("aborted migration: this host owns the vm, nothing removed", "err", err)
		return
	}
	m.endQEMU(ctx)
	if err := m.removeTargetVolumes(ctx, st.Target.Disks); err != nil {
		m.log.Warn("aborted migration: remove target volumes", "err", err)
		return // looked at again: the part still says what to remove
	}
	m.removeJournal()
	part := *st.Target
	part.State = migrate.TgtCleaned
	m.reportPart(ctx, migrate.PartTarget, &part)
	m.log.Info("aborted migration: target removed")
}

// migrationSource migrates the running VM to the target that listens,
// and reports the result: paused (the target has it all) or failed (the
// source runs on, untouched).
func (m *machine) migrationSource(ctx context.Context, st migrate.State) {
	part := &migrate.SourcePart{State: migrate.SrcStarting}
	if err := migrate.Claim(ctx, m.a.cfg.Store, m.name, migrate.PartSource, st.RecRev, part); err != nil {
		m.log.Info("migration source not claimed", "err", err)
		return
	}
	report := func() {
		m.reportPart(ctx, migrate.PartSource, part)
	}
	inst := m.inst
	status, err := m.a.inv.Status(ctx, m.name)
	var tls *migration.TLS
	if err == nil && inst == nil {
		err = errdefs.Precondition("vm %s does not run here", m.name)
	}
	if err == nil {
		tls, err = m.migrationTLS(st.Rec, status.UID)
	}
	if err != nil {
		part.State, part.Error = migrate.SrcFailed, err.Error()
		report()
		return
	}
	t := st.Target
	src := migration.Source{TargetHost: st.Rec.Target, IP: t.IP, Port: t.Port, NBDPort: t.NBDPort, TLS: tls,
		MaxBandwidth: st.Rec.Args.MaxBandwidth, DowntimeLimit: time.Duration(st.Rec.Args.DowntimeLimitMs) * time.Millisecond,
		AutoConverge: true}
	if src.Disks, err = mirrors(st.Rec, t, status); err != nil {
		part.State, part.Error = migrate.SrcFailed, err.Error()
		report()
		return
	}
	if s := st.Rec.Args.ProgressTimeoutSec; s > 0 {
		src.Watchdog.Timeout = time.Duration(s) * time.Second
	} else {
		src.Watchdog.Timeout = 150 * time.Second
	}
	last := time.Time{}
	src.Progress = func(p migration.Progress) {
		if time.Since(last) < time.Second {
			return
		}
		last = time.Now()
		part.State = migrate.SrcMigrating
		if p.Phase == migration.PhaseMirror {
			part.State = migrate.SrcMirroring
		}
		frac := 0.0
		if total := p.DiskTotal + p.RAMTotal; total > 0 {
			frac = min(0.99, float64(p.DiskTransferred+p.RAMTransferred)/float64(total))
		}
		// Mirrors and RAM passes add what the guest dirties to their totals;
		// the bar a user watches only moves forward.
		frac = max(frac, part.Progress.Fraction)
		part.Progress = v1.Progress{Fraction: frac, Phase: "migrating " + p.Phase, Migration: &v1.MigrationProgress{
			DiskTransferred: p.DiskTransferred, DiskTotal: p.DiskTotal, RAMTransferred: p.RAMTransferred,
			RAMRemaining: p.RAMRemaining, RAMTotal: p.RAMTotal, DirtyRate: p.DirtyRate,
			ExpectedDowntimeMs: p.ExpectedDowntime.Milliseconds(), Iterations: p.Iterations, CPUThrottlePercent: p.CPUThrottle}}
		report()
	}
	part.State = migrate.SrcMigrating
	if len(src.Disks) > 0 {
		part.State = migrate.SrcMirroring
	}
	report()
	res, err := migration.Migrate(ctx, inst.Mon, src)
	if err != nil {
		m.log.Warn("migration failed; the vm runs on here", "to", st.Rec.Target, "err", err)
		part.State, part.Error = migrate.SrcFailed, err.Error()
		report()
		return
	}
	part.State = migrate.SrcPaused
	part.DowntimeMs, part.TotalMs = res.Downtime.Milliseconds(), res.Total.Milliseconds()
	report()
	m.log.Info("migration completed; source paused", "to", st.Rec.Target, "downtime", res.Downtime, "total", res.Elapsed)
}

// migrationRollBack resumes the source of an aborted migration.
func (m *machine) migrationRollBack(ctx context.Context, st migrate.State) {
	if m.inst != nil {
		if err := migration.ResumeSource(ctx, m.inst.Mon); err != nil {
			m.log.Warn("resume migration source", "err", err)
			return
		}
	}
	part := *st.Source
	part.State = migrate.SrcRolledBack
	m.reportPart(ctx, migrate.PartSource, &part)
}

// migrationRecover takes over a migration this agent started before a
// restart: a completed one leaves the source paused, else it is rolled
// back.
func (m *machine) migrationRecover(ctx context.Context, st migrate.State) {
	if m.inst == nil {
		return
	}
	done, err := migration.Recover(ctx, m.inst.Mon)
	if err != nil {
		m.log.Warn("recover migration", "err", err)
		return
	}
	part := *st.Source
	if done {
		part.State = migrate.SrcPaused
	} else {
		part.State, part.Error = migrate.SrcFailed, "the agent restarted during the migration: rolled back"
	}
	m.reportPart(ctx, migrate.PartSource, &part)
}

// migrationCleanup quits the paused source QEMU once the target runs the
// guest and deletes the VM's local disk files here (the target's copies
// are the VM's now); shared disks stay.
func (m *machine) migrationCleanup(ctx context.Context, st migrate.State) {
	if o, _, err := m.a.inv.OwnerOf(ctx, m.name); err != nil || o.Host != st.Rec.Target {
		m.log.Warn("migration cleanup: the owner record does not name the target; nothing removed", "err", err)
		return
	}
	m.endQEMU(ctx) // its exit is ours, not a crash
	if err := m.removeSourceVolumes(ctx, st.Rec); err != nil {
		m.log.Warn("migration cleanup: remove local disks", "err", err)
		return // looked at again
	}
	part := *st.Source
	part.State = migrate.SrcCleaned
	m.reportPart(ctx, migrate.PartSource, &part)
	m.log.Info("migration source cleaned up", "to", st.Rec.Target)
}

// mirrors are the source's local disks with the target's export of each.
func mirrors(rec migrate.Record, t *migrate.TargetPart, st v1.VMStatus) ([]migration.Disk, error) {
	var out []migration.Disk
	for _, d := range rec.Disks {
		export := ""
		for _, td := range t.Disks {
			if td.Name == d.Name {
				export = td.Export
			}
		}
		if export == "" {
			return nil, fmt.Errorf("migrate disk %s: the target exports no volume for it", d.Name)
		}
		node := config.NodeName(d.Name)
		for _, ds := range st.Disks {
			if ds.Name == d.Name && ds.Node != "" {
				node = ds.Node
			}
		}
		out = append(out, migration.Disk{Node: node, Export: export})
	}
	return out, nil
}

// statusAfterMigration writes the VM's status as its new owner once the
// guest runs here: running with this QEMU, and the disks this host holds
// (the volumes it made for the local disks, its own seed). The status the
// source wrote names the source's files, so it is not checked as read;
// the status written is, and the write is conditioned on the status, spec
// and owner record (naming this host) as read.
func (m *machine) statusAfterMigration(ctx context.Context, rec migrate.Record, inst *qemu.Instance) error {
	for attempt := 1; ; attempt++ {
		st, rev, err := m.a.inv.StatusRev(ctx, m.name)
		if err != nil {
			return err
		}
		spec, specRev, err := m.a.inv.Spec(ctx, m.name)
		if err != nil {
			return err
		}
		owner, ownerRev, err := m.a.inv.OwnerOf(ctx, m.name)
		if err != nil {
			return err
		}
		if owner.Host != m.a.cfg.Host || spec.Host != m.a.cfg.Host {
			return fmt.Errorf("status of vm %q: owned by %q, placed on %q, not this host: %w", m.name, owner.Host, spec.Host, errdefs.ErrPrecondition)
		}
		if st.Host != m.a.cfg.Host { // not yet rewritten since the switch-over
			if st.Disks, err = m.migratedDisks(ctx, rec, spec, st.Disks, true); err != nil {
				return err
			}
		}
		m.running(&st, inst, v1.StateRunning)
		st.Reason, st.Host, st.UpdatedAt = "", m.a.cfg.Host, time.Now().UTC()
		m.a.nameDisks(ctx, &st)
		if err := m.a.checkStatus(ctx, m.name, st, &spec); err != nil {
			return err
		}
		_, err = m.a.inv.UpdateStatus(ctx, m.name, st, rev, specRev, ownerRev)
		if errors.Is(err, store.ErrConflict) && attempt < 10 {
			continue
		}
		return err
	}
}
