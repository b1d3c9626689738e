package agent

import (
	"context"
	"errors"

	"hangar/internal/inventory"
	"hangar/internal/qemu/migration"
	"hangar/internal/qemu/qmp"
	"hangar/internal/store"
)

// resumeOrphanSource resumes an adopted QEMU that completed an outgoing
// migration (run state postmigrate) while no agent of this host watched
// it, once that migration is over and the VM is still this host's: the
// master aborted it because this host was not alive (the records are
// gone, the target removed), so this paused copy is the VM. A migration
// still recorded is left to the VM's migration steps (SourceRecover, or
// the abort's resume); a VM another host owns now stays paused here (its
// state went there). It reports whether it resumed the guest.
func (m *machine) resumeOrphanSource(ctx context.Context, mon *qmp.Client) (bool, error) {
	if _, err := m.a.cfg.Store.Get(ctx, inventory.MigrationKey(m.name)); err == nil {
		return false, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return false, err
	}
	owner, _, err := m.a.inv.OwnerOf(ctx, m.name)
	if err != nil {
		return false, err
	}
	if owner.Host != m.a.cfg.Host {
		m.log.Warn("adopted a paused migration source of a vm another host owns: left paused", "owner", owner.Host)
		return false, nil
	}
	if err := migration.DelCreds(ctx, mon); err != nil {
		m.log.Warn("remove the migration's TLS credentials", "err", err)
	}
	if err := migration.ResumeSource(ctx, mon); err != nil {
		return false, err
	}
	m.log.Info("resumed a migration source whose migration ended while this agent was down", "owner", owner.Host, "epoch", owner.Epoch)
	return true, nil
}
