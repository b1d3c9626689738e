package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// rollBackLimits finishes a live change its host refused or failed (a
// handed-off "limits" operation, v1.LimitsArgs): the spec gets back the
// limits it had before the change — if its limits are still those the
// change wrote: a change made since stands — and the host a new "limits"
// operation to apply them again, as a change refused half-way may have
// applied a part (disks are throttled before vCPUs are pinned). The
// operation fails with the host's error and says which it was, in one
// fenced transaction with the spec: a master that dies half-way leaves the
// operation handed off, and the next one finishes it.
func (l *leader) rollBackLimits(ctx context.Context, op v1.Operation, rev int64) error {
	e := v1.Error{Code: v1.CodeInternal, Message: "the host failed the change"}
	if op.Error != nil {
		e = *op.Error
	}
	writes, note, err := l.limitsBefore(ctx, op)
	if err != nil {
		return err
	}
	e.Message += " (" + note + ")"
	op.Error, op.State, op.Updated = &e, v1.OpFailed, time.Now().UTC()
	writes = append(writes, store.PutOp(inventory.OpKey(op.ID), inventory.Marshal(op), rev))
	if _, err := l.Commit(ctx, nil, writes...); err != nil {
		return err // the spec or the record changed: the next pass reads them again
	}
	l.log.Info("refused live change finished", "op", op.ID, "vm", op.Target, "outcome", note)
	return nil
}

// limitsBefore returns the writes that roll back op's change, when there
// is one to make, and says what became of the change.
func (l *leader) limitsBefore(ctx context.Context, op v1.Operation) ([]store.Op, string, error) {
	var a v1.LimitsArgs
	if err := json.Unmarshal(op.Args, &a); err != nil {
		return nil, "", fmt.Errorf("limits operation %s: %w", op.ID, err) // ValidateOp passed it: cannot happen
	}
	inv := inventory.Inventory{S: l.cfg.Store}
	spec, specRev, err := inv.Spec(ctx, op.Target)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return nil, "the vm is gone", nil
	case err != nil:
		return nil, "", err
	case !vm.EqualLimits(vm.LimitsOf(spec), a.Next):
		return nil, "a later change of the limits stands", nil
	}
	old := vm.WithLimits(spec, a.Previous)
	if err := vm.Validate(old, 0); err != nil {
		// The record's previous limits do not fit the spec as it is now.
		l.log.Warn("refused live change: the previous limits are not valid now", "op", op.ID, "vm", op.Target, "err", err)
		return nil, fmt.Sprintf("the new settings stay saved: the previous ones are not valid now: %v", err), nil
	}
	writes := []store.Op{store.PutOp(inventory.VMKey(spec.Name), inventory.Marshal(old), specRev)}
	if spec.Host != "" { // where it runs now (it may have moved): that host applies them again
		writes = append(writes, inventory.NewOpWrites(l.newMasterOp("limits", spec.Name, spec.Host, nil))...)
	}
	return writes, "the settings are as they were", nil
}
