package inventory

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"hangar/internal/store"
)

// Unprivileged ids for QEMU. Each VM's QEMU runs as its own uid (its gid is
// the same number: its own group), and every file several VMs may open
// (an image or template under linked clones, a shareable volume) gets a
// group of its own that only the VMs using it hold. Both come from one
// configured range and are recorded in two keys written together:
//
//	/hangar/ids/<id>               → IDOwner (who holds the id)
//	/hangar/idof/<kind>/<name>     → "<id>"
//
// The first is created with must-not-exist, so an id is never given twice;
// the second finds the id of an owner again (re-adoption, restarts, and a
// VM that moves to another host).
const (
	IDs   = Root + "ids/"
	IDsOf = Root + "idof/"
)

// ID kinds.
const (
	IDKindVM   = "vm"   // a VM's QEMU uid (and gid)
	IDKindFile = "file" // a group for a file several VMs open ("pool/volume")
)

// DefaultIDRange is used when none is configured: 65536 ids at 0x70000000,
// a block systemd documents as unused (above the container range
// 524288–1879048191, below the foreign range and 2^31), so it collides with
// no login user (1000–60000), no system or dynamic user, no subuid block
// handed out by useradd (100000 upward) and no container id mapping.
var DefaultIDRange = IDRange{First: 1879048192, Last: 1879048192 + 65535}

// IDRange is an inclusive range of uids/gids.
type IDRange struct{ First, Last int }

// ParseIDRange parses "first-last" (inclusive). The range must not contain
// 0 and must stay below 2^31 (larger ids confuse tools that read them as
// signed).
func ParseIDRange(s string) (IDRange, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return IDRange{}, fmt.Errorf("id range %q: want first-last, e.g. 100000-165535", s)
	}
	first, err1 := strconv.Atoi(a)
	last, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil {
		return IDRange{}, fmt.Errorf("id range %q: want two decimal numbers first-last", s)
	}
	r := IDRange{First: first, Last: last}
	return r, r.Check()
}

// Check validates the range.
func (r IDRange) Check() error {
	switch {
	case r.First <= 0:
		return fmt.Errorf("id range %s: must start above 0 (root)", r)
	case r.Last < r.First:
		return fmt.Errorf("id range %s: last is below first", r)
	case r.Last >= 1<<31-1:
		return fmt.Errorf("id range %s: must end below 2147483647", r)
	case r.First < 1000:
		return fmt.Errorf("id range %s: must not overlap system users (start at 1000 or above)", r)
	}
	return nil
}

func (r IDRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// Contains reports whether id is a valid id of the range (never 0).
func (r IDRange) Contains(id int) bool { return id != 0 && id >= r.First && id <= r.Last }

// IDOwner is who holds an id.
type IDOwner struct {
	Kind string `json:"kind"` // IDKindVM or IDKindFile
	Name string `json:"name"` // VM name, or "pool/volume" of a file
}

func (o IDOwner) check() error {
	if o.Kind != IDKindVM && o.Kind != IDKindFile {
		return fmt.Errorf("id owner kind %q: want %s or %s", o.Kind, IDKindVM, IDKindFile)
	}
	if o.Name == "" || strings.ContainsAny(o.Name, "\x00") || len(o.Name) > 2048 {
		return fmt.Errorf("id owner %s: bad name %q", o.Kind, o.Name)
	}
	return nil
}

// IDKey is the key recording who holds id.
func IDKey(id int) string { return IDs + strconv.Itoa(id) }

// IDOfKey is the key recording an owner's id.
func IDOfKey(o IDOwner) string { return IDsOf + o.Kind + "/" + o.Name }

// ErrNoFreeID is returned when every id of the range is taken.
var ErrNoFreeID = errors.New("no free id in the range")

// IDOf returns the id recorded for owner and the revision of its record;
// store.ErrNotFound when it has none. A recorded id outside r (or 0), or
// one whose /hangar/ids/ record names someone else, is an error: state
// read from the store is checked before a uid is built from it.
func (i Inventory) IDOf(ctx context.Context, r IDRange, o IDOwner) (int, int64, error) {
	if err := o.check(); err != nil {
		return 0, 0, err
	}
	kv, err := i.S.Get(ctx, IDOfKey(o))
	if err != nil {
		return 0, 0, fmt.Errorf("id of %s %s: %w", o.Kind, o.Name, err)
	}
	id, err := strconv.Atoi(string(kv.Value))
	if err != nil || !r.Contains(id) {
		return 0, 0, fmt.Errorf("id of %s %s: recorded id %q is not in the range %s", o.Kind, o.Name, kv.Value, r)
	}
	var holder IDOwner
	if _, err := store.GetJSON(ctx, i.S, IDKey(id), &holder); err != nil {
		return 0, 0, fmt.Errorf("id of %s %s: id %d: %w", o.Kind, o.Name, id, err)
	}
	if holder != o {
		return 0, 0, fmt.Errorf("id of %s %s: id %d is recorded for %s %s", o.Kind, o.Name, id, holder.Kind, holder.Name)
	}
	return id, kv.Revision, nil
}

// AllocID returns owner's id, recording the lowest free id of r for it if
// it has none yet. Concurrent callers never get the same id: the record
// is created with must-not-exist, and a lost race is retried.
func (i Inventory) AllocID(ctx context.Context, r IDRange, o IDOwner) (int, error) {
	if err := r.Check(); err != nil {
		return 0, err
	}
	for attempt := 0; attempt < 50; attempt++ {
		id, _, err := i.IDOf(ctx, r, o)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return 0, err
		}
		kvs, _, err := i.S.List(ctx, IDs)
		if err != nil {
			return 0, fmt.Errorf("allocate id for %s %s: %w", o.Kind, o.Name, err)
		}
		used := make(map[int]bool, len(kvs))
		for _, kv := range kvs {
			if n, err := strconv.Atoi(NameFromKey(kv.Key)); err == nil {
				used[n] = true
			}
		}
		// The lowest free id; after lost races a later one, so that
		// concurrent allocators spread out instead of colliding again.
		id = 0
		for c, skip := r.First, attempt; c <= r.Last; c++ {
			if used[c] {
				continue
			}
			if id == 0 {
				id = c
			}
			if skip == 0 {
				id = c
				break
			}
			skip--
		}
		if id == 0 {
			return 0, fmt.Errorf("allocate id for %s %s: range %s: %w", o.Kind, o.Name, r, ErrNoFreeID)
		}
		_, err = i.S.Txn(ctx, nil,
			store.PutOp(IDKey(id), Marshal(o), store.MustNotExist),
			store.PutOp(IDOfKey(o), []byte(strconv.Itoa(id)), store.MustNotExist))
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return 0, fmt.Errorf("allocate id for %s %s: %w", o.Kind, o.Name, err)
		}
		// Someone took that id, or recorded one for this owner: look again.
		// (When fewer free ids than attempts remain, the lowest is retried.)
	}
	return 0, fmt.Errorf("allocate id for %s %s: too much contention", o.Kind, o.Name)
}

// ReleaseIDOps are the deletes that free owner's id, conditioned on the
// records being the ones read now (so they go in the same transaction as
// the owner's own removal); none when the owner holds no id.
func (i Inventory) ReleaseIDOps(ctx context.Context, r IDRange, o IDOwner) ([]store.Op, error) {
	id, rev, err := i.IDOf(ctx, r, o)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		// A record that fails validation is still this owner's to drop;
		// the id record is left alone (it may name someone else).
		kv, gerr := i.S.Get(ctx, IDOfKey(o))
		if gerr != nil {
			return nil, err
		}
		return []store.Op{store.DeleteOp(IDOfKey(o), kv.Revision)}, nil
	}
	idkv, err := i.S.Get(ctx, IDKey(id))
	if err != nil {
		return nil, fmt.Errorf("release id of %s %s: %w", o.Kind, o.Name, err)
	}
	return []store.Op{store.DeleteOp(IDOfKey(o), rev), store.DeleteOp(IDKey(id), idkv.Revision)}, nil
}

// ReleaseID frees owner's id (idempotent).
func (i Inventory) ReleaseID(ctx context.Context, r IDRange, o IDOwner) error {
	ops, err := i.ReleaseIDOps(ctx, r, o)
	if err != nil || len(ops) == 0 {
		return err
	}
	if _, err := i.S.Txn(ctx, nil, ops...); err != nil {
		return fmt.Errorf("release id of %s %s: %w", o.Kind, o.Name, err)
	}
	return nil
}
