package manager

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// migrateVM accepts a live migration: POST /api/v1/vms/{name}/migrate with
// v1.MigrateArgs. The operation (kind migrate) is driven by the pool
// master (internal/migrate); here only what the request says is checked.
func (s *Server) migrateVM(w http.ResponseWriter, r *http.Request) {
	submitArgs(s, w, r, "migrate", func(a *v1.MigrateArgs, v v1.VM) error {
		if err := vm.ValidateMigrateArgs(*a); err != nil {
			var fe *vm.FieldError
			if errors.As(err, &fe) {
				f := strings.TrimPrefix(fe.Field, "args.")
				return &v1.Error{Code: v1.CodeInvalidArgument, Field: f, Message: f + ": " + fe.Msg}
			}
			return err
		}
		if a.To == v.Spec.Host {
			return &v1.Error{Code: v1.CodeFailedPrecondition, Field: "to", Message: fmt.Sprintf("to: vm %q already runs on %s", v.Spec.Name, a.To)}
		}
		if _, err := s.inv.S.Get(r.Context(), inventory.HostInfoKey(a.To)); errors.Is(err, store.ErrNotFound) {
			return &v1.Error{Code: v1.CodeNotFound, Field: "to", Message: fmt.Sprintf("to: no host %q in the pool", a.To)}
		} else if err != nil {
			return err
		}
		if _, err := s.inv.S.Get(r.Context(), inventory.MigrationKey(v.Spec.Name)); err == nil {
			return &v1.Error{Code: v1.CodeConflict, Field: "name", Message: fmt.Sprintf("name: vm %q is being migrated already", v.Spec.Name)}
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return nil
	}, nil, v1.StateRunning, v1.StatePaused)
}
