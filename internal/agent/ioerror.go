package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	v1 "hangar/api/v1"
	"hangar/internal/qemu"
)

// The I/O error policy (v1.VMSpec.IOErrorPolicy). QEMU applies it to each
// disk's device (werror/rerror) and says what happened with QMP events: a
// BLOCK_IO_ERROR per failed request (with the action taken) and, when the
// action is stop, STOP, with query-status then reading "io-error". The
// agent follows those events per QEMU instance (ioEvents, fed by a
// goroutine) and its worker records them: the errors per disk in
// status.ioErrors, and a pause as state paused with a reason naming
// io-error and the disks. While a VM is paused on an I/O error and meant
// to run, a recovery loop probes the storage of the disks that failed and
// has the worker `cont` the VM once it answers; a user's resume works too.
// An agent restart finds a VM paused on io-error through its first check of
// the adopted QEMU (query-status, query-block's io-status) and watches it
// again.

const (
	// ioFlushDelay coalesces errors that do not pause the VM (report,
	// ignore): they are written at most this often.
	ioFlushDelay = time.Second
	// ioProbeFirst is the wait before the first probe; it doubles (up to
	// ioProbeMax) for each resume that QEMU paused again within
	// ioRepauseWindow.
	ioProbeFirst    = time.Second
	ioProbeMax      = 30 * time.Second
	ioRepauseWindow = 10 * time.Second
	// ioProbeTimeout bounds one probe (a hung storage must not hold it).
	ioProbeTimeout = 10 * time.Second
	// ioProbeBytes is what a probe writes and syncs next to the disk's
	// file: one qcow2 cluster.
	ioProbeBytes = 64 << 10
	// ioMinFree is the free space (for unprivileged writers: QEMU is one)
	// a probe wants in the disk's file system before it writes.
	ioMinFree = 4 << 20
)

// blockIOError is QEMU's BLOCK_IO_ERROR event.
type blockIOError struct {
	Device    string `json:"device"`
	Node      string `json:"node-name"`
	Operation string `json:"operation"`
	Action    string `json:"action"`
	NoSpace   bool   `json:"nospace"`
	Reason    string `json:"reason"`
}

// ioPending sums the errors of one block node since the worker last looked.
type ioPending struct {
	last  blockIOError
	at    time.Time
	count int64
}

// ioEvents is what the event goroutine of one QEMU instance hands to the
// VM's worker.
type ioEvents struct {
	inst *qemu.Instance

	mu      sync.Mutex
	pending map[string]*ioPending // by node name
	queued  bool                  // a task for the worker is queued
	timer   bool                  // a delayed flush is armed
	first   bool                  // the worker has not looked at inst yet
}

// ioState is the worker's part of the I/O error policy (machine.io).
type ioState struct {
	// paused: the worker recorded (or found) the VM paused on an I/O error
	// of its current QEMU.
	paused bool
	// recovering is the running recovery loop's instance (nil: none).
	recovering *qemu.Instance
	stop       context.CancelFunc
	paths      []string // what the loop probes
	// backoff is the wait before the next probe; resumed when the worker
	// last resumed the VM.
	backoff time.Duration
	resumed time.Time
}

// watchIOErrors follows inst's storage events for the VM's worker, and
// has the worker look at inst once (an error before the subscription, or
// a QEMU adopted paused on one).
func (m *machine) watchIOErrors(inst *qemu.Instance) {
	if inst.Mon == nil {
		return
	}
	m.io.paused = false // of an earlier QEMU; the first look finds a pause again
	w := &ioEvents{inst: inst, pending: map[string]*ioPending{}, first: true}
	events, cancel := inst.Mon.Subscribe()
	w.queue(m, true)
	go func() {
		defer cancel()
		for ev := range events {
			switch ev.Name {
			case "BLOCK_IO_ERROR":
				var e blockIOError
				if err := json.Unmarshal(ev.Data, &e); err != nil {
					m.log.Warn("bad BLOCK_IO_ERROR event", "err", err)
					continue
				}
				w.add(e, ev.Timestamp)
				w.queue(m, e.Action == v1.IOErrorStop)
			case "STOP", "RESUME":
				w.queue(m, true)
			}
		}
	}()
}

func (w *ioEvents) add(e blockIOError, at time.Time) {
	if at.IsZero() {
		at = time.Now()
	}
	// QEMU sends nospace only while the device tracks its I/O status,
	// which it does only for a policy that can stop: the host's message
	// says it too.
	e.NoSpace = e.NoSpace || strings.EqualFold(e.Reason, unix.ENOSPC.Error())
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.pending[e.Node]
	if p == nil {
		p = &ioPending{}
		w.pending[e.Node] = p
	}
	p.last, p.at = e, at
	p.count++
}

// queue hands the events to the worker: at once when urgent (a pause, a
// resume), else after ioFlushDelay, so a flood of reported errors costs
// one status write a second.
func (w *ioEvents) queue(m *machine, urgent bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.queued {
		return
	}
	if urgent {
		w.queued = true
		m.a.enqueue(m.name, task{io: w})
		return
	}
	if w.timer {
		return
	}
	w.timer = true
	time.AfterFunc(ioFlushDelay, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.timer = false
		if !w.queued {
			w.queued = true
			m.a.enqueue(m.name, task{io: w})
		}
	})
}

// take returns the pending errors (and whether the worker looks at inst
// for the first time) and lets the next event queue a task.
func (w *ioEvents) take() (map[string]*ioPending, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p, first := w.pending, w.first
	w.pending, w.first = map[string]*ioPending{}, false
	w.queued = false
	return p, first
}

// blockDevice is one entry of QMP query-block.
type blockDevice struct {
	QDev     string `json:"qdev"`
	IOStatus string `json:"io-status"` // ok, failed, nospace (absent when not tracked)
	Inserted *struct {
		NodeName string `json:"node-name"`
		File     string `json:"file"`
	} `json:"inserted"`
}

// disk is the spec disk a device is: "dev-<disk>" in its QOM path.
func (b blockDevice) disk() string {
	for _, el := range strings.Split(b.QDev, "/") {
		if n, ok := strings.CutPrefix(el, "dev-"); ok {
			return n
		}
	}
	return ""
}

// onIOEvents records what w brought: errors per disk, a pause on an I/O
// error (and starts the recovery loop), the end of one.
func (m *machine) onIOEvents(ctx context.Context, w *ioEvents) {
	pending, first := w.take()
	if m.inst != w.inst {
		return // a QEMU that is gone
	}
	if first {
		if st, err := m.a.inv.Status(ctx, m.name); err == nil {
			m.a.ioCounts.set(m.name, st.IOErrors)
		}
	}
	inst := w.inst
	qs, err := inst.Mon.QueryStatus(ctx)
	if err != nil {
		m.log.Warn("query-status after a storage event", "err", err)
		return
	}
	pausedIO := qs.Status == "io-error"
	if len(pending) == 0 && !pausedIO && !(m.io.paused && qs.Running) {
		return
	}
	var blocks []blockDevice
	if err := inst.Mon.Execute(ctx, "query-block", nil, &blocks); err != nil {
		m.log.Warn("query-block after a storage event", "err", err)
	}
	diskOf := func(node string) string {
		for _, b := range blocks {
			if b.Inserted != nil && b.Inserted.NodeName == node {
				if d := b.disk(); d != "" {
					return d
				}
			}
		}
		return strings.TrimPrefix(node, "drive-")
	}
	// The disks that paused the VM: those whose error stopped it, else (an
	// event missed, a QEMU adopted paused) those QEMU marks failed.
	var culprits []string
	nodes := make([]string, 0, len(pending))
	for node := range pending {
		nodes = append(nodes, node)
	}
	slices.Sort(nodes)
	for _, node := range nodes {
		p := pending[node]
		if p.last.Action == v1.IOErrorStop {
			culprits = append(culprits, diskOf(node))
		} else {
			m.log.Warn("storage error", "disk", diskOf(node), "action", p.last.Action, "operation", p.last.Operation,
				"nospace", p.last.NoSpace, "reason", p.last.Reason, "errors", p.count)
		}
	}
	if pausedIO && len(culprits) == 0 {
		for _, b := range blocks {
			if b.IOStatus != "" && b.IOStatus != "ok" && b.disk() != "" {
				culprits = append(culprits, b.disk())
			}
		}
	}
	slices.Sort(culprits)
	culprits = slices.Compact(culprits)
	now := time.Now().UTC()
	var disks []v1.DiskStatus
	err = m.setStatus(ctx, func(st *v1.VMStatus) {
		for _, node := range nodes {
			p := pending[node]
			e := ioRecord(st, diskOf(node))
			e.Action, e.Operation, e.NoSpace, e.Message = p.last.Action, p.last.Operation, p.last.NoSpace, p.last.Reason
			e.Count += p.count
			e.Last = p.at.UTC()
		}
		ioReasoned := strings.HasPrefix(st.Reason, v1.ReasonIOError)
		switch {
		case pausedIO && !(st.State == v1.StatePaused && ioReasoned):
			for _, d := range culprits {
				ioRecord(st, d).Pauses++
			}
			st.State, st.Reason = v1.StatePaused, ioReason(st, culprits)
		case !pausedIO && qs.Running && ioReasoned:
			markIOResumed(st, now) // by a user's resume
		}
		disks = st.Disks
		m.a.ioCounts.set(m.name, st.IOErrors)
	})
	if err != nil {
		// The pause is handled all the same: a VM must not stay paused
		// because etcd did not answer (without the disks' files from the
		// status, the loop cannot probe and retries blindly, backing off).
		m.log.Warn("record storage errors", "err", err)
	}
	if !pausedIO {
		if m.io.paused {
			m.log.Info("vm runs again after an i/o error pause")
			m.stopIORecovery()
		}
		m.io.paused = false
		return
	}
	if !m.io.paused {
		m.log.Warn("vm paused on an i/o error", "disks", culprits)
		if !m.io.resumed.IsZero() && time.Since(m.io.resumed) < ioRepauseWindow {
			m.io.backoff = min(2*m.io.backoff, ioProbeMax) // it failed again at once
		} else {
			m.io.backoff = ioProbeFirst
		}
	}
	m.io.paused = true
	var paths []string
	for _, d := range disks {
		if len(culprits) > 0 && !slices.Contains(culprits, d.Name) {
			continue
		}
		p := d.Path
		if d.Top != "" {
			p = d.Top
		}
		if p != "" {
			paths = append(paths, p)
		}
	}
	m.recoverIO(inst, paths)
}

// ioRecord is st's record of disk, added when missing.
func ioRecord(st *v1.VMStatus, disk string) *v1.DiskIOError {
	for i := range st.IOErrors {
		if st.IOErrors[i].Disk == disk {
			return &st.IOErrors[i]
		}
	}
	st.IOErrors = append(st.IOErrors, v1.DiskIOError{Disk: disk})
	return &st.IOErrors[len(st.IOErrors)-1]
}

// ioReason is the status reason of a pause on the disks' I/O errors:
// "io-error: disk data: write: No space left on device (no space); resumes
// when the storage answers".
func ioReason(st *v1.VMStatus, disks []string) string {
	if len(disks) == 0 {
		return v1.ReasonIOError + ": disks " + "(unknown)" + "; resumes when the storage answers"
	}
	var parts []string
	for _, d := range disks {
		e := ioRecord(st, d)
		s := "disk " + d
		if e.Operation != "" {
			s += ": " + e.Operation
		}
		if e.Message != "" {
			s += ": " + e.Message
		}
		if e.NoSpace {
			s += " (no space)"
		}
		parts = append(parts, s)
	}
	return v1.ReasonIOError + ": " + strings.Join(parts, "; ") + "; resumes when the storage answers"
}

// markIOResumed records in st that the VM runs again after a pause on the
// I/O errors its reason names.
func markIOResumed(st *v1.VMStatus, now time.Time) {
	for _, d := range strings.Fields(ioReasonDisks(st.Reason)) {
		ioRecord(st, d).Resumed = &now
	}
	st.State, st.Reason = v1.StateRunning, ""
}

// stopIORecovery ends the recovery loop, if one runs.
func (m *machine) stopIORecovery() {
	if m.io.stop != nil {
		m.io.stop()
	}
	m.io.recovering, m.io.stop = nil, nil
}

// ioReasonDisks are the disk names an ioReason names, space-separated.
func ioReasonDisks(reason string) string {
	var out []string
	for _, part := range strings.Split(reason, "; ") {
		part = strings.TrimPrefix(part, v1.ReasonIOError+": ")
		if name, ok := strings.CutPrefix(part, "disk "); ok {
			name, _, _ = strings.Cut(name, ":")
			name, _, _ = strings.Cut(name, " ")
			out = append(out, name)
		}
	}
	return strings.Join(out, " ")
}

// recoverIO starts the recovery loop of inst, unless one runs: it probes
// the storage of paths (the files of the disks that failed) and, once all
// answer, has the worker resume the VM (task ioRetry). It ends with inst,
// or when the worker stops it.
func (m *machine) recoverIO(inst *qemu.Instance, paths []string) {
	if m.io.recovering == inst {
		return
	}
	m.stopIORecovery()
	ctx, cancel := context.WithCancel(m.a.ctx)
	m.io.recovering, m.io.stop, m.io.paths = inst, cancel, paths
	wait := m.io.backoff
	go func() {
		defer cancel()
		for {
			select {
			case <-time.After(wait):
			case <-inst.Exited():
				return
			case <-ctx.Done():
				return
			}
			err := probeAll(ctx, paths)
			if err == nil {
				m.a.enqueue(m.name, task{ioRetry: inst})
				return
			}
			m.log.Debug("storage still failing", "err", err)
			wait = ioProbeFirst
		}
	}()
}

// ioRetry resumes a VM paused on an I/O error once its storage answered,
// if it is still paused so and meant to run.
func (m *machine) ioRetry(ctx context.Context, inst *qemu.Instance) {
	paths := m.io.paths
	if m.io.recovering == inst {
		m.stopIORecovery()
	}
	if m.inst != inst {
		return
	}
	qs, err := inst.Mon.QueryStatus(ctx)
	if err != nil || qs.Status != "io-error" {
		return // resumed meanwhile (a user), or gone
	}
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		m.log.Warn("storage answers again, but the vm's spec does not: trying later", "err", err)
		m.recoverIO(inst, paths)
		return
	}
	if spec.Power != v1.PowerRunning {
		m.log.Info("storage answers again; the vm stays paused (not meant to run)", "power", spec.Power)
		return
	}
	if err := inst.Mon.Cont(ctx); err != nil {
		m.log.Warn("resume after an i/o error", "err", err)
		m.recoverIO(inst, paths)
		return
	}
	m.io.resumed, m.io.paused = time.Now(), false
	m.log.Info("storage answers again: vm resumed")
	// Recorded at once, so that QEMU failing again (its STOP event follows)
	// counts as a new pause.
	if err := m.setStatus(ctx, func(st *v1.VMStatus) {
		if strings.HasPrefix(st.Reason, v1.ReasonIOError) {
			markIOResumed(st, time.Now().UTC())
		}
		m.a.ioCounts.set(m.name, st.IOErrors)
	}); err != nil {
		m.log.Warn("record the resume after an i/o error", "err", err)
	}
}

// probeAll probes the storage of every path, each within ioProbeTimeout.
func probeAll(ctx context.Context, paths []string) error {
	for _, p := range paths {
		done := make(chan error, 1)
		go func() { done <- probeStorage(p) }()
		select {
		case err := <-done:
			if err != nil {
				return err
			}
		case <-time.After(ioProbeTimeout):
			return fmt.Errorf("probe %s: no answer within %s", p, ioProbeTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// probeStorage checks that the storage of a disk's file answers: its file
// system has room for unprivileged writers, the file reads, and a small
// file written and synced beside it succeeds (and is removed).
func probeStorage(path string) error {
	dir := filepath.Dir(path)
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("probe %s: statfs: %w", dir, err)
	}
	if free := int64(fs.Bavail) * fs.Bsize; free < ioMinFree {
		return fmt.Errorf("probe %s: %d bytes free (want %d)", dir, free, ioMinFree)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("probe %s: %w", path, err)
	}
	_, err = f.ReadAt(make([]byte, 4096), 0)
	f.Close()
	if err != nil {
		return fmt.Errorf("probe %s: read: %w", path, err)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := filepath.Join(dir, ".hangar-ioprobe-"+hex.EncodeToString(b[:]))
	w, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("probe %s: %w", dir, err)
	}
	defer os.Remove(name)
	_, err = w.Write(make([]byte, ioProbeBytes))
	if err == nil {
		err = w.Sync()
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("probe %s: write: %w", dir, err)
	}
	return nil
}

// ioCounts are the I/O error figures of each VM this agent ran, for
// /metrics (a copy of status.ioErrors as last written).
type ioCounts struct {
	mu sync.Mutex
	m  map[string][]v1.DiskIOError
}

func (c *ioCounts) set(name string, errs []v1.DiskIOError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string][]v1.DiskIOError{}
	}
	c.m[name] = slices.Clone(errs)
}

func (c *ioCounts) get(name string) []v1.DiskIOError {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[name]
}
