package agent

import (
	"context"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
)

// migrateOp is the handler of a migrate operation when an agent claims
// one. A migration is driven by the pool master (migrate.Drive), which
// claims migrate operations itself; an agent that gets one runs no master
// to drive it, and refuses rather than starting half of a two-host
// operation.
func migrateOp(m *machine, _ context.Context, _ v1.Operation, args v1.MigrateArgs, _ progressFunc) error {
	return errdefs.Precondition("migrate %s to %s: live migration is driven by the pool master, and none drives this operation", m.name, args.To)
}
