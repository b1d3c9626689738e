package agent

import (
	"context"
	"errors"
	"strings"

	"hangar/internal/inventory"
	"hangar/internal/migrate"
	"hangar/internal/store"
)

// Leftovers: a migration that ended while its source host was away leaves
// a record naming the local disk files that host still has
// (/hangar/leftovers/<host>/<vm>, written by the pool master with the end
// of the migration). Back, the agent deletes them through the VM's worker,
// once no QEMU of the VM runs here and its owner record names another
// host, then removes the record.

// queueSourceLeftovers gives each leftover record of this host to its VM's
// worker.
func (a *Agent) queueSourceLeftovers(ctx context.Context) error {
	kvs, _, err := a.cfg.Store.List(ctx, inventory.LeftoverPrefix(a.cfg.Host))
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		name := strings.TrimPrefix(kv.Key, inventory.LeftoverPrefix(a.cfg.Host))
		a.enqueue(name, task{sourceLeftovers: true})
	}
	return nil
}

// removeSourceLeftovers deletes the VM's files a migration left on this host and
// the record naming them. A record that does not pass its checks is left
// as it is (and logged): nothing is deleted on its word.
func (m *machine) removeSourceLeftovers(ctx context.Context) {
	key := inventory.LeftoverKey(m.a.cfg.Host, m.name)
	kv, err := m.a.cfg.Store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return
	}
	if err != nil {
		m.log.Warn("read leftover record", "err", err)
		return
	}
	lo, err := migrate.DecodeLeftover(m.a.cfg.Host, m.name, kv.Value)
	if err != nil {
		m.log.Error("leftover record refused; nothing removed", "err", err)
		return
	}
	if m.inst != nil {
		m.log.Warn("leftover record of a vm whose QEMU runs here; nothing removed")
		return
	}
	o, _, err := m.a.inv.OwnerOf(ctx, m.name)
	switch {
	case errors.Is(err, store.ErrNotFound): // the VM is gone: its files too
	case err != nil:
		m.log.Warn("leftover: read the owner record", "err", err)
		return
	case o.Host == m.a.cfg.Host:
		// Back here since (its disks were made anew here, or are ours
		// again): the record is stale, the files are the VM's.
		m.log.Warn("leftover record of a vm this host owns again; its files are kept", "op", lo.OpID)
		_, _ = m.a.cfg.Store.Txn(ctx, nil, store.DeleteOp(key, kv.Revision))
		return
	}
	if _, err := m.a.cfg.Store.Get(ctx, inventory.MigrationKey(m.name)); err == nil {
		m.log.Info("leftover: the vm is migrating; looked at again later")
		return
	}
	if err := m.removeSourceVolumes(ctx, migrate.Record{Disks: lo.Disks}); err != nil {
		m.log.Warn("leftover: remove the migrated disks' files", "err", err)
		return // looked at again
	}
	if _, err := m.a.cfg.Store.Txn(ctx, nil, store.DeleteOp(key, kv.Revision)); err != nil {
		m.log.Warn("leftover: remove the record", "err", err)
		return
	}
	m.log.Info("removed the local disk files a migration left here", "op", lo.OpID, "target", lo.Target, "disks", len(lo.Disks))
}
