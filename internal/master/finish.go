package master

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// finish ends an operation whose host part is done and whose last step
// is the master's: removing the records of a VM that is gone (deleted,
// turned into a template, or a create or clone that failed and rolled
// back its files), or rolling back a live change of limits that the host
// refused (rollBackLimits). Agents never delete VM specs; they hand the operation
// off (Operation.HandOff) and the master removes the spec, the owner
// record and the booking in one fenced transaction with the result.
func (l *leader) finish(ctx context.Context, id string) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	op, rev, err := inv.Op(ctx, id)
	if err != nil {
		return err
	}
	if op.Done() || !op.HandOff {
		return nil
	}
	if op.Kind == "limits" {
		return l.rollBackLimits(ctx, op, rev)
	}
	gone, err := releasedVMs(op)
	if err != nil {
		l.log.Warn("handed-off operation with bad arguments", "op", op.ID, "err", err)
	}
	var ops []store.Op
	if len(gone) > 0 {
		allocs, _, err := l.cfg.Store.List(ctx, inventory.Allocs)
		if err != nil {
			return fmt.Errorf("list allocations: %w", err)
		}
		for _, name := range gone {
			ops = append(ops, store.DeleteOp(inventory.VMKey(name), store.AnyRevision),
				store.DeleteOp(inventory.OwnerKey(name), store.AnyRevision))
			for _, kv := range allocs {
				if _, vmName, ok := allocKeyParts(kv.Key); ok && vmName == name {
					ops = append(ops, store.DeleteOp(kv.Key, store.AnyRevision))
				}
			}
		}
	}
	op.Updated = time.Now().UTC()
	if op.Error != nil {
		op.State = v1.OpFailed
	} else {
		op.State = v1.OpSucceeded
		op.Progress = v1.Progress{Fraction: 1, Phase: "done"}
	}
	ops = append(ops, store.PutOp(inventory.OpKey(op.ID), inventory.Marshal(op), rev))
	if _, err := l.Commit(ctx, nil, ops...); err != nil {
		return err
	}
	l.log.Info("operation finished", "op", op.ID, "kind", op.Kind, "target", op.Target, "state", op.State, "released", gone)
	return nil
}

// releasedVMs names the VMs whose records a handed-off operation ends:
// decided by its kind and outcome, never by a list in the record.
func releasedVMs(op v1.Operation) ([]string, error) {
	failed := op.Error != nil
	switch op.Kind {
	case "delete", "template":
		if !failed {
			return []string{op.Target}, nil
		}
	case "create":
		if failed {
			return []string{op.Target}, nil
		}
	case "clone":
		if failed {
			var a v1.CloneArgs
			if err := json.Unmarshal(op.Args, &a); err != nil {
				return nil, err
			}
			if err := vm.ValidateName("name", a.Name); err != nil {
				return nil, err
			}
			return []string{a.Name}, nil
		}
	}
	return nil, nil
}
