package blockops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"hangar/internal/qemu/qmp"
)

// Job states of QEMU's job state machine (query-jobs, JOB_STATUS_CHANGE).
const (
	jobReady     = "ready"
	jobConcluded = "concluded"
	jobNull      = "null"
)

// jobWatcher follows background jobs. It wakes up on job events, but the
// truth is query-jobs: events can be dropped by a lagging subscription,
// while the states a caller waits for (ready; concluded, since jobs are
// started with auto-dismiss off) last until the caller acts.
type jobWatcher struct {
	mon    *qmp.Client
	events <-chan qmp.Event
	stop   func()
}

// watchJobs subscribes to events. Call it before starting the jobs, so
// that no event is missed.
func watchJobs(mon *qmp.Client) *jobWatcher {
	ev, stop := mon.Subscribe()
	return &jobWatcher{mon: mon, events: ev, stop: stop}
}

func (w *jobWatcher) close() { w.stop() }

// wait polls the jobs ids until done returns true or an error. progress
// (may be nil) gets the combined progress of the jobs, 0..1, when it
// grows: an active commit or a mirror adds what the guest dirties to the
// job's total, so QEMU's own ratio can fall back (1 at ready, then 0.996);
// a progress bar that runs backwards tells the user nothing true.
func (w *jobWatcher) wait(ctx context.Context, ids []string, progress func(float64),
	done func(jobs map[string]qmp.Job) (bool, error)) (map[string]qmp.Job, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	last := -1.0
	for {
		jobs, err := ourJobs(ctx, w.mon, ids)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			if _, ok := jobs[id]; !ok {
				return jobs, fmt.Errorf("job %s is gone", id)
			}
		}
		if progress != nil {
			if p := jobProgress(jobs); p > last {
				last = p
				progress(p)
			}
		}
		if ok, err := done(jobs); ok || err != nil {
			return jobs, err
		}
		select {
		case _, ok := <-w.events:
			if !ok {
				return nil, qmp.ErrClosed
			}
		case <-tick.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// ourJobs returns the jobs among ids that QEMU has.
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

// jobProgress is the combined progress of jobs, 0..1.
func jobProgress(jobs map[string]qmp.Job) float64 {
	var cur, total int64
	for _, j := range jobs {
		cur += j.CurrentProgress
		total += j.TotalProgress
	}
	if total <= 0 {
		return 0
	}
	return min(max(float64(cur)/float64(total), 0), 1)
}

// allConcluded is a done func for wait: true once every job concluded.
func allConcluded(jobs map[string]qmp.Job) (bool, error) {
	for _, j := range jobs {
		if j.Status != jobConcluded && j.Status != jobNull {
			return false, nil
		}
	}
	return true, nil
}

// jobErrors joins the errors of failed jobs.
func jobErrors(jobs map[string]qmp.Job) error {
	var msgs []string
	for _, j := range jobs {
		if j.Error != "" {
			msgs = append(msgs, fmt.Sprintf("job %s: %s", j.ID, j.Error))
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	slices.Sort(msgs)
	return errors.New(strings.Join(msgs, "; "))
}

// dismissJobs removes concluded jobs (they were started with auto-dismiss
// off, so that their errors could be read).
func dismissJobs(ctx context.Context, mon *qmp.Client, ids []string) {
	for _, id := range ids {
		if err := mon.JobDismiss(ctx, id); err != nil {
			slog.Warn("cannot dismiss job", "job", id, "err", err)
		}
	}
}

// reapJobs cancels the jobs that still run, waits for all of them to
// conclude and dismisses them. It runs after a failure or cancellation,
// so it does its own bounded waiting whatever ctx says.
func reapJobs(ctx context.Context, w *jobWatcher, ids []string) {
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	jobs, err := ourJobs(cctx, w.mon, ids)
	if err != nil {
		slog.Warn("cannot list jobs to cancel", "jobs", ids, "err", err)
		return
	}
	var live []string
	for id, j := range jobs {
		live = append(live, id)
		if j.Status != jobConcluded && j.Status != jobNull {
			if err := w.mon.JobCancel(cctx, id); err != nil {
				slog.Warn("cannot cancel job", "job", id, "err", err)
			}
		}
	}
	if len(live) == 0 {
		return
	}
	if _, err := w.wait(cctx, live, nil, allConcluded); err != nil {
		slog.Warn("jobs did not conclude after cancel", "jobs", live, "err", err)
		return
	}
	dismissJobs(cctx, w.mon, live)
}

// CancelAll cancels and dismisses every block job QEMU has: after an agent
// restart the jobs of interrupted operations are orphans, and those
// operations start over.
func CancelAll(ctx context.Context, mon *qmp.Client) (int, error) {
	jobs, err := mon.QueryJobs(ctx)
	if err != nil || len(jobs) == 0 {
		return 0, err
	}
	ids := make([]string, 0, len(jobs))
	for _, j := range jobs {
		ids = append(ids, j.ID)
	}
	w := watchJobs(mon)
	defer w.close()
	reapJobs(ctx, w, ids)
	left, err := mon.QueryJobs(ctx)
	if err != nil {
		return len(ids), err
	}
	if len(left) > 0 {
		return len(ids), fmt.Errorf("cancel orphan jobs: %d left", len(left))
	}
	return len(ids), nil
}
