package migration

import (
	"context"
	"errors"
	"fmt"
	"time"

	"hangar/internal/qemu/qmp"
)

// Phases of an outgoing migration, as Progress reports them.
const (
	PhaseMirror = "mirror" // local disks copied to the target's NBD exports
	PhaseRAM    = "ram"    // RAM and device state
	PhaseDone   = "completed"
)

// ErrAborted is wrapped by every error of a migration that Hangar ended
// on purpose (progress timeout, total time bound, cancelled context); the
// source keeps running.
var ErrAborted = errors.New("migration aborted")

// Progress is a snapshot of an outgoing migration.
type Progress struct {
	Phase string
	// Status is QEMU's migration status ("setup", "active", "device",
	// "completed", ...) in the RAM phase.
	Status string
	// Disk bytes copied so far and to copy in all (mirror jobs).
	DiskTransferred, DiskTotal int64
	// RAM bytes sent, still dirty, and the guest's RAM size.
	RAMTransferred, RAMRemaining, RAMTotal int64
	// DirtyRate is how fast the guest dirties RAM, bytes/s.
	DirtyRate int64
	// ExpectedDowntime is QEMU's estimate of the switch-over pause.
	ExpectedDowntime time.Duration
	// Iterations is how many times the dirty bitmap was synchronised.
	Iterations int64
	// CPUThrottle is auto-converge's current throttle, percent.
	CPUThrottle int
	// Elapsed since the migration started (mirror phase included).
	Elapsed time.Duration
}

// Remaining is what is left to copy in the current phase.
func (p Progress) Remaining() int64 {
	if p.Phase == PhaseMirror {
		return max(p.DiskTotal-p.DiskTransferred, 0)
	}
	return p.RAMRemaining
}

// migrationInfo is query-migrate's answer (the fields used here).
type migrationInfo struct {
	Status           string `json:"status"`
	ErrorDesc        string `json:"error-desc"`
	TotalTime        int64  `json:"total-time"`        // ms
	ExpectedDowntime int64  `json:"expected-downtime"` // ms
	Downtime         int64  `json:"downtime"`          // ms
	SetupTime        int64  `json:"setup-time"`        // ms
	CPUThrottle      int    `json:"cpu-throttle-percentage"`
	RAM              *struct {
		Transferred    int64 `json:"transferred"`
		Remaining      int64 `json:"remaining"`
		Total          int64 `json:"total"`
		DirtyPagesRate int64 `json:"dirty-pages-rate"`
		DirtySyncCount int64 `json:"dirty-sync-count"`
		PageSize       int64 `json:"page-size"`
	} `json:"ram"`
}

func queryMigrate(ctx context.Context, mon *qmp.Client) (migrationInfo, error) {
	var mi migrationInfo
	err := mon.Execute(ctx, "query-migrate", nil, &mi)
	return mi, err
}

// fill copies the RAM figures of mi into p.
func (mi migrationInfo) fill(p *Progress) {
	p.Status = mi.Status
	p.ExpectedDowntime = time.Duration(mi.ExpectedDowntime) * time.Millisecond
	p.CPUThrottle = mi.CPUThrottle
	if mi.RAM != nil {
		p.RAMTransferred, p.RAMRemaining, p.RAMTotal = mi.RAM.Transferred, mi.RAM.Remaining, mi.RAM.Total
		p.DirtyRate = mi.RAM.DirtyPagesRate * max(mi.RAM.PageSize, 4096)
		p.Iterations = mi.RAM.DirtySyncCount
	}
}

// Watchdog decides when a migration stopped making progress. It is pure
// (time comes in), so its policy is tested with tables.
//
// Progress means the bytes remaining in the current phase reached a new
// low; the remaining bytes of a migration that does not converge go up and
// down around a floor (each pass resends what the guest dirtied), so no new
// low for Timeout means it will not finish. Max bounds the whole migration.
// A zero Timeout or Max disables that check.
type Watchdog struct {
	Timeout time.Duration
	Max     time.Duration

	start, lastLow time.Time
	phase          string
	low            int64
}

// Start begins watching at now.
func (w *Watchdog) Start(now time.Time) { w.start, w.lastLow, w.phase, w.low = now, now, "", -1 }

// Observe takes one progress sample at now and returns an error wrapping
// ErrAborted when the migration must be aborted. A sample with nothing
// known yet (zero total) only counts the time.
func (w *Watchdog) Observe(now time.Time, p Progress) error {
	if w.start.IsZero() {
		w.Start(now)
	}
	if w.Max > 0 && now.Sub(w.start) > w.Max {
		return fmt.Errorf("%w: not finished after %v (bound %v)", ErrAborted, now.Sub(w.start).Round(time.Second), w.Max)
	}
	if p.Phase != w.phase {
		w.phase, w.low, w.lastLow = p.Phase, -1, now
	}
	total := p.RAMTotal
	if p.Phase == PhaseMirror {
		total = p.DiskTotal
	}
	if total <= 0 {
		return nil
	}
	if r := p.Remaining(); w.low < 0 || r < w.low {
		w.low, w.lastLow = r, now
		return nil
	}
	if w.Timeout > 0 && now.Sub(w.lastLow) > w.Timeout {
		return fmt.Errorf("%w: no progress for %v in phase %s (%d bytes remaining, lowest %d)",
			ErrAborted, now.Sub(w.lastLow).Round(time.Second), p.Phase, p.Remaining(), w.low)
	}
	return nil
}
