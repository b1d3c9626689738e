package join

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"hangar/internal/inventory"
	"hangar/internal/pki"
	"hangar/internal/store"
)

// PoolRecord is the pool's identity in etcd (/hangar/pool), written once by
// the first host.
type PoolRecord struct {
	Name string `json:"name"`
	// CAFingerprint is the SHA-256 of the pool CA certificate (DER, hex).
	CAFingerprint string    `json:"caFingerprint"`
	Created       time.Time `json:"created"`
	// CreatedBy is the first host.
	CreatedBy string `json:"createdBy,omitempty"`
}

// ErrOtherPool: the etcd cluster belongs to a pool of another CA.
var ErrOtherPool = errors.New("the etcd cluster belongs to a pool with another CA")

// ReadPool reads the pool record.
func ReadPool(ctx context.Context, st store.Store) (PoolRecord, error) {
	kv, err := st.Get(ctx, inventory.PoolRecord)
	if err != nil {
		return PoolRecord{}, err
	}
	var p PoolRecord
	if err := json.Unmarshal(kv.Value, &p); err != nil || p.CAFingerprint == "" {
		return PoolRecord{}, fmt.Errorf("pool record: %w", inventory.ErrInvalidRecord)
	}
	return p, nil
}

// EnsurePool writes the pool record when there is none (the first host of a
// pool) and checks that the record names this host's CA.
func EnsurePool(ctx context.Context, st store.Store, ca *pki.CA, host string) (PoolRecord, error) {
	fp := ca.FingerprintHex()
	p, err := ReadPool(ctx, st)
	if errors.Is(err, store.ErrNotFound) {
		p = PoolRecord{Name: "pool-" + fp[:8], CAFingerprint: fp, Created: time.Now().UTC(), CreatedBy: host}
		b, _ := json.Marshal(p)
		if _, err = st.Put(ctx, inventory.PoolRecord, b, store.MustNotExist); err == nil {
			return p, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return PoolRecord{}, fmt.Errorf("write pool record: %w", err)
		}
		p, err = ReadPool(ctx, st)
	}
	if err != nil {
		return PoolRecord{}, err
	}
	if p.CAFingerprint != fp {
		return PoolRecord{}, fmt.Errorf("%w: pool %q has CA %s, this host's %s is %s", ErrOtherPool, p.Name, p.CAFingerprint, ca.CertFile(), fp)
	}
	return p, nil
}
