package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"hangar/internal/inventory"
	"hangar/internal/store"
)

// Part names under /hangar/migrations/<vm>/.
const (
	PartSource = "source"
	PartTarget = "target"
	PartDisks  = "disks" // the source agent's report of the local disks (DisksPart)
)

// State is one migration as an agent reads it: the master's record (with
// its revision) and both parts.
type State struct {
	Rec    Record
	RecRev int64
	Source *SourcePart
	Target *TargetPart
	Disks  *DisksPart
}

// ErrNoMigration: the VM has no migration record.
var ErrNoMigration = errors.New("no migration")

// Load reads and validates a VM's migration records.
func Load(ctx context.Context, s store.Store, vmName string) (State, error) {
	var st State
	kv, err := s.Get(ctx, inventory.MigrationKey(vmName))
	if errors.Is(err, store.ErrNotFound) {
		return st, ErrNoMigration
	}
	if err != nil {
		return st, err
	}
	if st.Rec, err = DecodeRecord(vmName, kv.Value); err != nil {
		return st, err
	}
	st.RecRev = kv.Revision
	if st.Source, st.Target, st.Disks, err = loadParts(ctx, s, vmName); err != nil {
		return st, err
	}
	return st, nil
}

// loadParts reads and validates the agents' parts of a VM's migration
// (nil: not written).
func loadParts(ctx context.Context, s store.Store, vmName string) (src *SourcePart, tgt *TargetPart, disks *DisksPart, err error) {
	if src, err = loadPart(ctx, s, vmName, PartSource, DecodeSource); err != nil {
		return
	}
	if tgt, err = loadPart(ctx, s, vmName, PartTarget, DecodeTarget); err != nil {
		return
	}
	disks, err = loadPart(ctx, s, vmName, PartDisks, DecodeDisks)
	return
}

func loadPart[T any](ctx context.Context, s store.Store, vmName, part string, decode func([]byte) (T, error)) (*T, error) {
	kv, err := s.Get(ctx, inventory.MigrationPartKey(vmName, part))
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	p, err := decode(kv.Value)
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// Claim writes an agent's first part (SrcStarting or TgtPreparing) in a
// transaction conditioned on the master's record still being at recRev
// and the part not existing: an agent never starts work for a phase the
// master has already left (an abort written meanwhile wins), and never
// twice. store.ErrConflict means: do nothing, read again.
func Claim(ctx context.Context, s store.Store, vmName, part string, recRev int64, value any) error {
	if part != PartSource && part != PartTarget && part != PartDisks {
		return fmt.Errorf("claim migration part %q", part)
	}
	b, err := json.Marshal(value)
	if err != nil {
		return err
	}
	_, err = s.Txn(ctx, []store.Cond{{Key: inventory.MigrationKey(vmName), ExpectRev: recRev}},
		store.PutOp(inventory.MigrationPartKey(vmName, part), b, store.MustNotExist))
	if err != nil {
		return fmt.Errorf("claim %s part of the migration of %s: %w", part, vmName, err)
	}
	return nil
}

// WritePart replaces an agent's part (only that agent writes it), while
// the migration record exists: a part is never written for a migration
// that has ended.
func WritePart(ctx context.Context, s store.Store, vmName, part string, value any) error {
	if part != PartSource && part != PartTarget {
		return fmt.Errorf("write migration part %q", part)
	}
	switch p := value.(type) {
	case *SourcePart:
		p.Updated = time.Now().UTC()
	case *TargetPart:
		p.Updated = time.Now().UTC()
	case *DisksPart:
		p.Updated = time.Now().UTC()
	}
	b, err := json.Marshal(value)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		kv, err := s.Get(ctx, inventory.MigrationKey(vmName))
		if err != nil {
			return fmt.Errorf("write %s part of the migration of %s: %w", part, vmName, err)
		}
		_, err = s.Txn(ctx, []store.Cond{{Key: inventory.MigrationKey(vmName), ExpectRev: kv.Revision}},
			store.PutOp(inventory.MigrationPartKey(vmName, part), b, store.AnyRevision))
		if errors.Is(err, store.ErrConflict) && attempt < 5 {
			continue // the record moved on meanwhile (a new phase): still ours to write while it exists
		}
		if err != nil {
			return fmt.Errorf("write %s part of the migration of %s: %w", part, vmName, err)
		}
		return nil
	}
}
