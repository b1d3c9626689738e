package migration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"hangar/internal/qemu/qmp"
)

// Disk is one local disk to mirror to the target.
type Disk struct {
	// Node is the source's current top format node of the disk.
	Node string
	// Export is the target's NBD export name (its node name).
	Export string
}

// Source describes the sending side of a migration.
type Source struct {
	// TargetHost is the target host's name: TLS checks the target's
	// certificate against it (tls-hostname).
	TargetHost string
	// IP, Port and NBDPort are where the target listens (Target).
	IP      string
	Port    int
	NBDPort int
	// Disks are the local disks; none for a VM on shared storage.
	Disks []Disk
	// TLS nil means plaintext, only when asked explicitly.
	TLS *TLS
	// MaxBandwidth caps the migration stream, bytes/s (0:
	// DefaultMaxBandwidth).
	MaxBandwidth int64
	// DowntimeLimit is the longest switch-over pause allowed (0:
	// DefaultDowntimeLimit).
	DowntimeLimit time.Duration
	// AutoConverge throttles the guest's vCPUs while it dirties RAM
	// faster than the stream sends it.
	AutoConverge bool
	// Multifd, MultifdChannels: as in Target (both ends must agree).
	Multifd         bool
	MultifdChannels int
	// Watchdog aborts a migration that makes no progress or takes too
	// long.
	Watchdog Watchdog
	// Progress, if set, gets a snapshot about every poll.
	Progress func(Progress)
}

// softCancelWait is how long a roll-back lets READY mirrors end gently
// before it forces them.
const softCancelWait = 10 * time.Second

// Defaults of Source's limits: QEMU 7.2's own defaults, set explicitly.
const (
	DefaultMaxBandwidth  = 128 << 20 // bytes/s
	DefaultDowntimeLimit = 300 * time.Millisecond
)

// Result is what a completed migration measured (QEMU's own figures).
type Result struct {
	// Downtime is the pause QEMU measured on the source, from stopping
	// the vCPUs to the last byte of state sent.
	Downtime time.Duration
	// Total is the RAM phase (QEMU's total-time); Elapsed the whole
	// migration including the disk mirror.
	Total, Setup, Elapsed time.Duration
	RAMTransferred        int64
	DiskTransferred       int64
	// Stopped is when the source's vCPUs stopped (STOP event, the
	// source host's clock).
	Stopped time.Time
}

func (s Source) validate() error {
	if ip := net.ParseIP(s.IP); ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("target ip %q", s.IP)
	}
	if s.Port <= 0 || s.Port > 65535 {
		return fmt.Errorf("target port %d", s.Port)
	}
	if len(s.Disks) > 0 && (s.NBDPort <= 0 || s.NBDPort > 65535) {
		return fmt.Errorf("nbd port %d", s.NBDPort)
	}
	if s.TLS != nil && s.TargetHost == "" {
		return errors.New("tls without a target host name to verify")
	}
	if s.MaxBandwidth < 0 || s.DowntimeLimit < 0 {
		return errors.New("negative bandwidth or downtime limit")
	}
	if s.Multifd && (s.MultifdChannels < 1 || s.MultifdChannels > 16) {
		return fmt.Errorf("multifd channels %d: want 1..16", s.MultifdChannels)
	}
	return nil
}

// outgoing follows the state of this QEMU's outgoing migration from
// MIGRATION events. query-migrate cannot tell it on QEMU 7.2 once the VM
// arrived by migration itself: the finished incoming state ("completed")
// overrides the status of every later outgoing one.
type outgoing struct {
	ev      <-chan qmp.Event
	status  string    // last MIGRATION status seen since migrate was sent
	stopped time.Time // STOP event
	started bool      // migrate was sent
}

// take notes one event.
func (o *outgoing) take(e qmp.Event) {
	switch e.Name {
	case "STOP":
		o.stopped = e.Timestamp
	case "MIGRATION":
		if !o.started {
			return
		}
		var d struct {
			Status string `json:"status"`
		}
		if json.Unmarshal(e.Data, &d) == nil && d.Status != "" {
			o.status = d.Status
		}
	}
}

// drain takes every queued event.
func (o *outgoing) drain() {
	for {
		select {
		case e, ok := <-o.ev:
			if !ok {
				return
			}
			o.take(e)
		default:
			return
		}
	}
}

// state is the outgoing migration's state: the event's, or "completed"
// when the run state says so (an event may have been dropped).
func (o *outgoing) state(ctx context.Context, mon *qmp.Client) (string, error) {
	o.drain()
	if o.status == "completed" || o.status == "failed" || o.status == "cancelled" {
		return o.status, nil
	}
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return "", err
	}
	if st.Status == "postmigrate" {
		return "completed", nil
	}
	return o.status, nil
}

// nbdNode is the source's NBD client node of disk i; jobID its mirror job.
func nbdNode(i int) string { return "mig-nbd" + strconv.Itoa(i) }
func jobID(i int) string   { return "mig-mirror" + strconv.Itoa(i) }

// Migrate sends the running VM to the target prepared by PrepareTarget:
// with local disks it first mirrors each to the target's export
// (blockdev-mirror, sync full, write-blocking so that the copy converges
// whatever the guest writes) until every job is READY, then migrates RAM
// and device state with the limits of s and waits until it completed. Then
// the source is paused (run state postmigrate); the mirrors are completed
// with block-job-cancel (a READY mirror ends without pivot, the target
// consistent: libvirt's order for non-shared storage) and the NBD client
// nodes removed. The target stays paused until Resume.
//
// On any error, including the watchdog's (ErrAborted) and ctx ending,
// Migrate cancels the migration and the mirrors, removes the NBD nodes and
// resumes the source if it had been paused: the source keeps running
// untouched; the caller kills the target and removes its volumes.
func Migrate(ctx context.Context, mon *qmp.Client, s Source) (res Result, err error) {
	if err := s.validate(); err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	if st.Status != "running" && st.Status != "paused" {
		return res, fmt.Errorf("migrate: vm is %s", st.Status)
	}
	wasRunning := st.Running
	start := time.Now()
	s.Watchdog.Start(start)
	ev, stopEv := mon.Subscribe()
	defer stopEv()
	out := &outgoing{ev: ev}
	var jobs []string
	added := 0
	defer func() {
		if err == nil {
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		rollBack(cctx, mon, out, jobs, added, wasRunning)
	}()

	creds := ""
	if s.TLS != nil {
		if err := InstallCreds(ctx, mon, s.TLS.Dir, s.TLS.CA, s.TLS.Cert, s.TLS.Key, s.TLS.UID, s.TLS.GID, Client); err != nil {
			return res, fmt.Errorf("migrate: %w", err)
		}
		creds = CredsID
	}
	for i, d := range s.Disks {
		node := map[string]any{"driver": "nbd", "node-name": nbdNode(i), "server": inet(s.IP, s.NBDPort),
			"export": d.Export}
		if creds != "" {
			node["tls-creds"], node["tls-hostname"] = creds, s.TargetHost
		}
		if err := mon.Execute(ctx, "blockdev-add", node, nil); err != nil {
			return res, fmt.Errorf("migrate: connect nbd export %s: %w", d.Export, err)
		}
		added = i + 1
	}
	for i, d := range s.Disks {
		args := map[string]any{"job-id": jobID(i), "device": d.Node, "target": nbdNode(i), "sync": "full",
			"copy-mode": "write-blocking", "auto-dismiss": false}
		if err := mon.Execute(ctx, "blockdev-mirror", args, nil); err != nil {
			return res, fmt.Errorf("migrate: mirror %s: %w", d.Node, err)
		}
		jobs = append(jobs, jobID(i))
	}
	if len(jobs) > 0 {
		if res.DiskTransferred, err = waitMirrorsReady(ctx, mon, out, jobs, &s, start); err != nil {
			return res, fmt.Errorf("migrate: %w", err)
		}
	}

	if err := setCapabilities(ctx, mon, map[string]bool{"events": true, "auto-converge": s.AutoConverge, "multifd": s.Multifd}); err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	params := map[string]any{"tls-creds": creds, "tls-hostname": ""}
	if creds != "" {
		params["tls-hostname"] = s.TargetHost
	}
	// Always set: parameters outlive a migration in QEMU, and an earlier
	// one's limits must not leak into this one.
	bw, dl := s.MaxBandwidth, s.DowntimeLimit
	if bw == 0 {
		bw = DefaultMaxBandwidth
	}
	if dl == 0 {
		dl = DefaultDowntimeLimit
	}
	params["max-bandwidth"] = bw
	params["downtime-limit"] = max(dl.Milliseconds(), 1)
	if s.Multifd {
		params["multifd-channels"] = s.MultifdChannels
	}
	if err := mon.Execute(ctx, "migrate-set-parameters", params, nil); err != nil {
		return res, fmt.Errorf("migrate: set parameters: %w", err)
	}
	out.drain()
	out.started = true
	if err := mon.Execute(ctx, "migrate", map[string]string{"uri": uri(s.IP, s.Port)}, nil); err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	mi, err := waitMigrated(ctx, mon, out, jobs, &s, start)
	if err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	if err := waitPostmigrate(ctx, mon); err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	res.Stopped = out.stopped
	res.Downtime = time.Duration(mi.Downtime) * time.Millisecond
	res.Total = time.Duration(mi.TotalTime) * time.Millisecond
	res.Setup = time.Duration(mi.SetupTime) * time.Millisecond
	if mi.RAM != nil {
		res.RAMTransferred = mi.RAM.Transferred
	}
	// The source is paused now: complete the mirrors (no more writes can
	// come), then drop the NBD connections.
	if err := finishMirrors(ctx, mon, out, jobs); err != nil {
		return res, fmt.Errorf("migrate: complete disk mirrors: %w", err)
	}
	for i := added - 1; i >= 0; i-- {
		if err := mon.Execute(ctx, "blockdev-del", map[string]string{"node-name": nbdNode(i)}, nil); err != nil {
			return res, fmt.Errorf("migrate: disconnect nbd export: %w", err)
		}
		added = i
	}
	jobs = nil
	res.Elapsed = time.Since(start)
	if s.Progress != nil {
		p := Progress{Phase: PhaseDone, Status: "completed", Elapsed: res.Elapsed}
		mi.fill(&p)
		p.DiskTransferred, p.DiskTotal = res.DiskTransferred, res.DiskTransferred
		s.Progress(p)
	}
	return res, nil
}

// waitMirrorsReady polls the mirror jobs until all are READY.
func waitMirrorsReady(ctx context.Context, mon *qmp.Client, out *outgoing, ids []string, s *Source, start time.Time) (int64, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		jobs, err := ourJobs(ctx, mon, ids)
		if err != nil {
			return 0, err
		}
		p := Progress{Phase: PhaseMirror, Elapsed: time.Since(start)}
		ready := 0
		for _, id := range ids {
			j, ok := jobs[id]
			if !ok {
				return 0, fmt.Errorf("mirror job %s is gone", id)
			}
			if j.Error != "" || j.Status == "concluded" || j.Status == "aborting" {
				return 0, fmt.Errorf("mirror job %s %s: %s", id, j.Status, j.Error)
			}
			p.DiskTransferred += j.CurrentProgress
			p.DiskTotal += j.TotalProgress
			if j.Status == "ready" {
				ready++
			}
		}
		if s.Progress != nil {
			s.Progress(p)
		}
		if ready == len(ids) {
			return p.DiskTransferred, nil
		}
		if err := s.Watchdog.Observe(time.Now(), p); err != nil {
			return 0, err
		}
		select {
		case e := <-out.ev:
			out.take(e)
		case <-tick.C:
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %v", ErrAborted, ctx.Err())
		}
	}
}

// settled is query-migrate's answer once QEMU's own status says completed
// too: the event (or the run state) can come first, and query-migrate's
// figures (downtime, total time) are zero until then. An answer that never
// settles is returned as it is: the migration did complete.
func settled(ctx context.Context, mon *qmp.Client, mi migrationInfo) (migrationInfo, error) {
	for i := 0; i < 20 && mi.Status != "completed"; i++ {
		select {
		case <-ctx.Done():
			return mi, nil
		case <-time.After(25 * time.Millisecond):
		}
		next, err := queryMigrate(ctx, mon)
		if err != nil {
			return mi, nil
		}
		mi = next
	}
	return mi, nil
}

// waitPostmigrate waits, after the migration completed, until the run
// state left finish-migrate: QEMU sets the status completed (and sends
// its event) a moment before the migration thread sets the run state
// postmigrate, and what follows Migrate — the switch-over, a recovery that
// reads the run state — counts on it. A run state that stays is returned
// to after a bound: the migration did complete.
func waitPostmigrate(ctx context.Context, mon *qmp.Client) error {
	for i := 0; i < 500; i++ {
		st, err := mon.QueryStatus(ctx)
		if err != nil {
			return fmt.Errorf("query-status after completion: %w", err)
		}
		if st.Status != "finish-migrate" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrAborted, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// waitMigrated waits until the outgoing migration completed, reporting
// progress and checking that the mirrors stay READY meanwhile.
func waitMigrated(ctx context.Context, mon *qmp.Client, out *outgoing, jobIDs []string, s *Source, start time.Time) (migrationInfo, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var disk int64
	for {
		state, err := out.state(ctx, mon)
		if err != nil {
			return migrationInfo{}, err
		}
		mi, err := queryMigrate(ctx, mon)
		if err != nil {
			return mi, err
		}
		switch state {
		case "completed":
			return settled(ctx, mon, mi)
		case "failed", "cancelled", "cancelling":
			return mi, fmt.Errorf("migration %s: %s", state, mi.ErrorDesc)
		}
		mi.Status = state
		if len(jobIDs) > 0 {
			jobs, err := ourJobs(ctx, mon, jobIDs)
			if err != nil {
				return mi, err
			}
			disk = 0
			for _, id := range jobIDs {
				j, ok := jobs[id]
				if !ok || j.Error != "" || (j.Status != "ready" && j.Status != "standby" && j.Status != "running") {
					return mi, fmt.Errorf("mirror job %s failed during the migration: %s %s", id, j.Status, j.Error)
				}
				disk += j.CurrentProgress
			}
		}
		p := Progress{Phase: PhaseRAM, Elapsed: time.Since(start), DiskTransferred: disk, DiskTotal: disk}
		mi.fill(&p)
		if s.Progress != nil {
			s.Progress(p)
		}
		if err := s.Watchdog.Observe(time.Now(), p); err != nil {
			return mi, err
		}
		select {
		case e := <-out.ev:
			out.take(e)
		case <-tick.C:
		case <-ctx.Done():
			return mi, fmt.Errorf("%w: %v", ErrAborted, ctx.Err())
		}
	}
}

// finishMirrors completes READY mirrors of a paused source: block-job-cancel
// without force ends a READY mirror without pivot once source and target
// are equal; each must conclude without error.
func finishMirrors(ctx context.Context, mon *qmp.Client, out *outgoing, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	for _, id := range ids {
		if err := mon.Execute(ctx, "block-job-cancel", map[string]any{"device": id, "force": false}, nil); err != nil {
			return fmt.Errorf("job %s: %w", id, err)
		}
	}
	jobs, err := waitConcluded(ctx, mon, out, ids)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if e := jobs[id].Error; e != "" {
			return fmt.Errorf("job %s: %s", id, e)
		}
		if err := mon.JobDismiss(ctx, id); err != nil {
			return fmt.Errorf("dismiss job %s: %w", id, err)
		}
	}
	return nil
}

func waitConcluded(ctx context.Context, mon *qmp.Client, out *outgoing, ids []string) (map[string]qmp.Job, error) {
	tick := time.NewTicker(pollInterval / 5)
	defer tick.Stop()
	for {
		jobs, err := ourJobs(ctx, mon, ids)
		if err != nil {
			return nil, err
		}
		done := true
		for _, id := range ids {
			if j, ok := jobs[id]; ok && j.Status != "concluded" && j.Status != "null" {
				done = false
			}
		}
		if done {
			return jobs, nil
		}
		select {
		case e := <-out.ev:
			out.take(e)
		case <-tick.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func ourJobs(ctx context.Context, mon *qmp.Client, ids []string) (map[string]qmp.Job, error) {
	all, err := mon.QueryJobs(ctx)
	if err != nil {
		return nil, err
	}
	jobs := make(map[string]qmp.Job, len(ids))
	for _, j := range all {
		if slices.Contains(ids, j.ID) {
			jobs[j.ID] = j
		}
	}
	return jobs, nil
}

// rollBack undoes a failed outgoing migration: cancel the migration (wait
// until it ended), force-cancel the mirrors, remove the NBD nodes, resume
// the source if the migration paused it. Every step is tried; failures
// are logged.
func rollBack(ctx context.Context, mon *qmp.Client, out *outgoing, jobs []string, nbdNodes int, wasRunning bool) {
	log := slog.With("step", "migration rollback")
	if out.started {
		if err := mon.Execute(ctx, "migrate_cancel", nil, nil); err != nil {
			log.Warn("cannot cancel migration", "err", err)
		}
		// Wait until it ended (cancelled, failed, or completed after all).
		cancelled := time.Now()
		for ctx.Err() == nil && time.Since(cancelled) < 15*time.Second {
			state, err := out.state(ctx, mon)
			if err != nil || state == "cancelled" || state == "failed" || state == "completed" ||
				(state == "" && time.Since(cancelled) > time.Second) { // it never began
				break
			}
			time.Sleep(pollInterval / 5)
		}
	}
	if len(jobs) > 0 {
		live, err := ourJobs(ctx, mon, jobs)
		if err != nil {
			log.Warn("cannot list mirror jobs", "err", err)
		}
		// A READY mirror is ended gently (no force: it drains and stops,
		// as at a completed migration); one still copying, or one that
		// does not end within softCancelWait, is force-cancelled. A forced
		// cancel of a READY mirror to a TLS NBD export while the guest
		// writes once crashed QEMU 7.2 here (heap corruption in 1 of 4
		// runs of the abort test), the gentle path has not.
		var ids []string
		for id, j := range live {
			ids = append(ids, id)
			if j.Status == "concluded" || j.Status == "null" {
				continue
			}
			force := j.Status != "ready"
			if err := mon.Execute(ctx, "block-job-cancel", map[string]any{"device": id, "force": force}, nil); err != nil {
				log.Warn("cannot cancel mirror job", "job", id, "force", force, "err", err)
			}
		}
		sctx, cancel := context.WithTimeout(ctx, softCancelWait)
		_, err = waitConcluded(sctx, mon, out, ids)
		cancel()
		if err != nil && ctx.Err() == nil {
			for _, id := range ids {
				_ = mon.Execute(ctx, "block-job-cancel", map[string]any{"device": id, "force": true}, nil)
			}
			if _, err := waitConcluded(ctx, mon, out, ids); err != nil {
				log.Warn("mirror jobs did not end", "err", err)
			}
		}
		for _, id := range ids {
			_ = mon.JobDismiss(ctx, id)
		}
	}
	for i := nbdNodes - 1; i >= 0; i-- {
		if err := mon.Execute(ctx, "blockdev-del", map[string]string{"node-name": nbdNode(i)}, nil); err != nil {
			log.Warn("cannot remove nbd node", "node", nbdNode(i), "err", err)
		}
	}
	if err := mon.Execute(ctx, "migrate-set-parameters", map[string]any{"tls-creds": "", "tls-hostname": ""}, nil); err != nil {
		log.Warn("cannot reset migration tls parameters", "err", err)
	}
	_ = DelCreds(ctx, mon)
	if st, err := mon.QueryStatus(ctx); err == nil && !st.Running && wasRunning {
		if err := mon.Cont(ctx); err != nil {
			log.Warn("cannot resume the source", "status", st.Status, "err", err)
		}
	}
}

// ResumeSource resumes a source that Migrate left paused after a
// completed migration, when the switch-over is rolled back (the owner
// record could not be moved to the target): the images are activated
// again and the guest goes on where it stopped. The caller kills the
// target first, which never ran the guest.
func ResumeSource(ctx context.Context, mon *qmp.Client) error {
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return fmt.Errorf("resume migration source: %w", err)
	}
	if st.Running {
		return nil
	}
	if err := mon.Cont(ctx); err != nil {
		return fmt.Errorf("resume migration source: %w", err)
	}
	return nil
}

// Recover takes over an outgoing migration whose driver died (the agent
// restarted while QEMU went on): when it completed meanwhile (the source
// is postmigrate), the mirrors are finished and the NBD nodes removed as
// Migrate would have, and Recover reports true: the source is paused and
// in sync, ready for the switch-over. Otherwise the migration is
// cancelled, the mirrors and NBD nodes removed and the source resumed
// (false): the source keeps the VM.
func Recover(ctx context.Context, mon *qmp.Client) (bool, error) {
	ev, stop := mon.Subscribe()
	defer stop()
	out := &outgoing{ev: ev, started: true}
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return false, fmt.Errorf("recover migration: %w", err)
	}
	all, err := mon.QueryJobs(ctx)
	if err != nil {
		return false, fmt.Errorf("recover migration: %w", err)
	}
	var jobs []string
	for _, j := range all {
		if strings.HasPrefix(j.ID, "mig-mirror") {
			jobs = append(jobs, j.ID)
		}
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := mon.Execute(ctx, "query-named-block-nodes", nil, &nodes); err != nil {
		return false, fmt.Errorf("recover migration: %w", err)
	}
	nbd := 0
	for _, n := range nodes {
		if i, ok := strings.CutPrefix(n.NodeName, "mig-nbd"); ok {
			if k, err := strconv.Atoi(i); err == nil && k < 64 {
				nbd = max(nbd, k+1)
			}
		}
	}
	if st.Status == "postmigrate" {
		if err := finishMirrors(ctx, mon, out, jobs); err != nil {
			return false, fmt.Errorf("recover migration: complete disk mirrors: %w", err)
		}
		for i := nbd - 1; i >= 0; i-- {
			if err := mon.Execute(ctx, "blockdev-del", map[string]string{"node-name": nbdNode(i)}, nil); err != nil {
				var qe *qmp.Error
				if !errors.As(err, &qe) {
					return false, fmt.Errorf("recover migration: %w", err)
				}
			}
		}
		return true, nil
	}
	wasRunning := st.Running || st.Status == "finish-migrate"
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	rollBack(cctx, mon, out, jobs, nbd, wasRunning)
	if st, err := mon.QueryStatus(ctx); err != nil {
		return false, fmt.Errorf("recover migration: %w", err)
	} else if wasRunning && !st.Running {
		return false, fmt.Errorf("recover migration: the source is %s after the roll-back", st.Status)
	}
	return false, nil
}
