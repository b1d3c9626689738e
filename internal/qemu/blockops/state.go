package blockops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"hangar/internal/qemu/qmp"
)

// unlimitedBandwidth is the max-bandwidth for saving state (bytes/s): the
// guest is paused, so there is nothing to be gentle with. It is libvirt's
// "unlimited" (INT64_MAX/1MiB MiB/s).
const unlimitedBandwidth = int64(8796093022207) << 20

// migrationInfo is the part of query-migrate used here.
type migrationInfo struct {
	// Status: "none", "setup", "active", "device", "completed", "failed",
	// "cancelling", "cancelled", ...
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	RAM       *struct {
		Transferred int64 `json:"transferred"`
		Remaining   int64 `json:"remaining"`
		Total       int64 `json:"total"`
	} `json:"ram"`
}

func queryMigrate(ctx context.Context, mon *qmp.Client) (migrationInfo, error) {
	var mi migrationInfo
	err := mon.Execute(ctx, "query-migrate", nil, &mi)
	return mi, err
}

// SaveState writes the VM's RAM and device state to f (from its current
// offset) through a migration to a file descriptor: getfd, then migrate to
// "fd:<name>". The VM is paused first (stop), so the state matches the
// disks as they are now, and it stays paused afterwards (run state
// "postmigrate", its images handed over): the caller quits QEMU or sends
// cont. progress (may be nil) gets 0..1 from the RAM still to be sent.
// f is synced before SaveState returns.
//
// On failure or when ctx ends the migration is cancelled and, if SaveState
// paused the VM, the VM is resumed.
//
// The file loads into a QEMU started with the same argv plus -incoming
// defer (LoadState).
func SaveState(ctx context.Context, mon *qmp.Client, f *os.File, progress func(float64)) (err error) {
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	switch st.Status {
	case "running", "paused", "prelaunch", "suspended":
	default:
		return fmt.Errorf("save state: vm is %s", st.Status)
	}
	if st.Running {
		if err := mon.Stop(ctx); err != nil {
			return fmt.Errorf("save state: %w", err)
		}
		defer func() {
			if err == nil {
				return
			}
			cctx, cancel := cleanupCtx(ctx)
			defer cancel()
			if cerr := mon.Cont(cctx); cerr != nil {
				slog.Warn("save state failed and the vm cannot be resumed", "err", cerr)
			}
		}()
	}

	var params struct {
		MaxBandwidth int64 `json:"max-bandwidth"`
	}
	if err := mon.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := setMaxBandwidth(ctx, mon, unlimitedBandwidth); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	defer func() {
		// Restore the limit for later live migrations. It cannot change
		// while a migration is still being cancelled, hence after it ended.
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if rerr := setMaxBandwidth(cctx, mon, params.MaxBandwidth); rerr != nil {
			slog.Warn("save state: cannot restore max-bandwidth", "err", rerr)
		}
	}()

	fdname := uniqueID("save")
	if err := mon.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": fdname}, f, nil); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	// migrate takes the fd from the monitor's table; it stays there when
	// migrate fails before that.
	if err := mon.Execute(ctx, "migrate", map[string]string{"uri": "fd:" + fdname}, nil); err != nil {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		var qe *qmp.Error
		if !errors.As(err, &qe) && cancelMigration(cctx, mon) == nil {
			// It was running after all and finished before the cancel.
			return syncState(f, progress)
		}
		_ = mon.Execute(cctx, "closefd", map[string]string{"fdname": fdname}, nil)
		return fmt.Errorf("save state: %w", err)
	}

	err = waitSaved(ctx, mon, progress)
	if err == nil || ctx.Err() == nil {
		if err != nil {
			return fmt.Errorf("save state: %w", err)
		}
		return syncState(f, progress)
	}
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if cerr := cancelMigration(cctx, mon); cerr == nil {
		return syncState(f, progress) // it completed before the cancel
	}
	return fmt.Errorf("save state: %w", ctx.Err())
}

// waitSaved polls an outgoing migration until it completed.
func waitSaved(ctx context.Context, mon *qmp.Client, progress func(float64)) error {
	tick := time.NewTicker(pollInterval / 2)
	defer tick.Stop()
	last := -1.0
	for {
		mi, err := queryMigrate(ctx, mon)
		if err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		if progress != nil && mi.RAM != nil && mi.RAM.Total > 0 {
			if p := min(max(1-float64(mi.RAM.Remaining)/float64(mi.RAM.Total), 0), 0.99); p > last {
				last = p
				progress(p)
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func setMaxBandwidth(ctx context.Context, mon *qmp.Client, bw int64) error {
	return mon.Execute(ctx, "migrate-set-parameters", map[string]int64{"max-bandwidth": bw}, nil)
}

// cancelMigration cancels an outgoing migration and waits until it ended.
// It returns nil when the migration completed anyway.
func cancelMigration(ctx context.Context, mon *qmp.Client) error {
	if err := mon.Execute(ctx, "migrate_cancel", nil, nil); err != nil {
		return err
	}
	for {
		mi, err := queryMigrate(ctx, mon)
		if err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled", "none":
			return fmt.Errorf("migration %s", mi.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval / 2):
		}
	}
}

// syncState makes a saved state durable.
func syncState(f *os.File, progress func(float64)) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if progress != nil {
		progress(1)
	}
	return nil
}

// LoadState feeds a state file written by SaveState (read from f's current
// offset) to a QEMU started with the same argv plus -incoming defer
// (config.Params.Incoming = "defer"): getfd, then migrate-incoming from
// "fd:<name>", and waits until the state is loaded. The VM is left paused
// (the saved run state); the caller sends cont.
//
// A failed load makes QEMU 7.2 exit, so errors usually show as the monitor
// connection ending. An incoming migration cannot be cancelled: when ctx
// ends first, the caller has to kill QEMU.
func LoadState(ctx context.Context, mon *qmp.Client, f *os.File) error {
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	if st.Status != "inmigrate" {
		return fmt.Errorf("load state: vm is %s, not waiting for an incoming migration (start qemu with -incoming defer)", st.Status)
	}
	fdname := uniqueID("load")
	if err := mon.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": fdname}, f, nil); err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	if err := mon.Execute(ctx, "migrate-incoming", map[string]string{"uri": "fd:" + fdname}, nil); err != nil {
		var qe *qmp.Error
		if errors.As(err, &qe) {
			_ = mon.Execute(ctx, "closefd", map[string]string{"fdname": fdname}, nil)
		}
		return fmt.Errorf("load state: %w", err)
	}
	tick := time.NewTicker(pollInterval / 2)
	defer tick.Stop()
	for {
		// While the state loads, QEMU's main loop is busy: this answer
		// may well come only when it is done.
		mi, err := queryMigrate(ctx, mon)
		if err != nil {
			if errors.Is(err, qmp.ErrClosed) {
				return fmt.Errorf("load state: qemu exited while loading (bad or mismatched state file? see its log): %w", err)
			}
			return fmt.Errorf("load state: %w", err)
		}
		switch mi.Status {
		case "failed", "cancelled":
			return fmt.Errorf("load state: migration %s: %s", mi.Status, mi.ErrorDesc)
		case "completed":
			// The run state is set just after; wait for it.
			st, err := mon.QueryStatus(ctx)
			if err != nil {
				return fmt.Errorf("load state: %w", err)
			}
			if st.Status != "inmigrate" {
				return nil
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("load state: %w", ctx.Err())
		}
	}
}
