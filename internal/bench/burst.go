package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	v1 "hangar/api/v1"
	"hangar/client"
)

// BurstResult is one burst: N creates+starts sent at once.
type BurstResult struct {
	N        int
	Total    time.Duration // from the first request sent to the last operation seen succeeded
	Attempts int           // the operations' attempts, summed: N when none ran twice
}

// PerVM is the burst's time per VM.
func (r BurstResult) PerVM() time.Duration { return r.Total / time.Duration(r.N) }

// Burst sends n creates with start at once (small VMs with one empty disk
// each: the guests' boot is not part of it — SeaBIOS finds nothing to boot
// and waits), waits for every operation, checks that each succeeded once
// (attempts 1) and that each VM runs, then deletes them (untimed).
func Burst(ctx context.Context, c *client.Client, n, memoryMiB int) (BurstResult, error) {
	res := BurstResult{N: n}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("burst%03d", i)
	}
	defer func() {
		var wg sync.WaitGroup
		for _, name := range names {
			wg.Add(1)
			go func() { defer wg.Done(); _ = deleteAndWait(c, name) }()
		}
		wg.Wait()
	}()
	ops := make([]v1.Operation, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: memoryMiB, Disks: []v1.Disk{{SizeMiB: 16}}}
			op, err := c.CreateVM(ctx, s, true, 0)
			if err == nil {
				op, err = c.Wait(ctx, op, nil)
			}
			ops[i], errs[i] = op, err
		}()
	}
	wg.Wait()
	res.Total = time.Since(start)
	for i, op := range ops {
		if errs[i] != nil {
			return res, fmt.Errorf("burst of %d: %s: %w", n, names[i], errs[i])
		}
		if op.State != v1.OpSucceeded {
			return res, fmt.Errorf("burst of %d: %s: operation %s %s: %v", n, names[i], op.ID, op.State, op.Error)
		}
		res.Attempts += max(op.Attempts, 1)
	}
	for _, name := range names {
		v, err := c.VM(ctx, name)
		if err != nil {
			return res, err
		}
		if v.Status.State != v1.StateRunning {
			return res, fmt.Errorf("burst of %d: %s is %s after its start succeeded", n, name, v.Status.State)
		}
	}
	if res.Attempts != n {
		return res, fmt.Errorf("burst of %d: %d attempts: an operation ran twice", n, res.Attempts)
	}
	return res, nil
}

// ReportBursts prints one line a burst and how the time per VM grows.
func ReportBursts(w io.Writer, rs []BurstResult) error {
	if len(rs) == 0 {
		return errors.New("no bursts")
	}
	for _, r := range rs {
		fmt.Fprintf(w, "burst of %3d creates+starts at once: all running in %s ms, %s ms per VM, %d attempts\n", r.N, ms(r.Total), ms(r.PerVM()), r.Attempts)
	}
	first, last := rs[0], rs[len(rs)-1]
	fmt.Fprintf(w, "time per VM from %d to %d at once: %s → %s ms (×%.2f for ×%.1f the count)\n", first.N, last.N,
		ms(first.PerVM()), ms(last.PerVM()), float64(last.PerVM())/float64(first.PerVM()), float64(last.N)/float64(first.N))
	return nil
}
