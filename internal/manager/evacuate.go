package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/store"
	"hangar/internal/vm"
)

func (s *Server) maintenanceRoutes() {
	s.route("POST /api/v1/hosts/{name}/evacuate", s.evacuateHost)
	s.route("POST /api/v1/hosts/{name}/maintenance", s.hostMaintenance)
}

// knownHost checks the path's host name and that the pool knows the host.
func (s *Server) knownHost(r *http.Request) (string, error) {
	name := r.PathValue("name")
	if err := vm.ValidateName("name", name); err != nil {
		return "", err
	}
	if _, err := s.inv.S.Get(r.Context(), inventory.HostInfoKey(name)); errors.Is(err, store.ErrNotFound) {
		return "", inventory.NotFound(err, "host", name)
	} else if err != nil {
		return "", err
	}
	return name, nil
}

// evacuation is the id of the host's unfinished evacuation ("" for none).
func (s *Server) evacuation(ctx context.Context, host string) (string, error) {
	ops, _, _, err := s.inv.Ops(ctx)
	if err != nil {
		return "", err
	}
	for _, o := range ops {
		if o.Kind == "evacuate" && o.Target == host && !o.Done() {
			return o.ID, nil
		}
	}
	return "", nil
}

// evacuateHost records an evacuation (POST /api/v1/hosts/{name}/evacuate,
// v1.EvacuateArgs): the pool master puts the host in maintenance and
// migrates (or parks) every running VM.
func (s *Server) evacuateHost(w http.ResponseWriter, r *http.Request) {
	var args v1.EvacuateArgs
	if err := decode(r, &args); err != nil {
		writeErr(w, err)
		return
	}
	wait, err := s.waitParam(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	name, err := s.knownHost(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	if id, err := s.evacuation(r.Context(), name); err != nil || id != "" {
		if err == nil {
			err = &v1.Error{Code: v1.CodeConflict, Field: "name", Message: fmt.Sprintf("name: host %q is being evacuated already (operation %s)", name, id)}
		}
		writeErr(w, err)
		return
	}
	op, err := s.recordEvacuation(r.Context(), name, args)
	if err != nil {
		writeErr(w, err)
		return
	}
	s.answerOp(w, r, op, wait)
}

// recordEvacuation records a host's evacuation for the pool master.
func (s *Server) recordEvacuation(ctx context.Context, host string, args v1.EvacuateArgs) (v1.Operation, error) {
	op := s.newOp("evacuate", host, "", args)
	if _, err := s.cfg.Store.Txn(ctx, nil, inventory.NewOpWrites(op)...); err != nil {
		return op, err
	}
	s.cfg.Log.Info("host evacuation accepted", "host", host, "op", op.ID)
	return op, nil
}

// hostMaintenance puts a host in maintenance or takes it out (POST
// /api/v1/hosts/{name}/maintenance, v1.MaintenanceArgs). In maintenance
// the scheduler places nothing there; out of it, the VMs parked there
// start again (the pool master's next round).
func (s *Server) hostMaintenance(w http.ResponseWriter, r *http.Request) {
	var args v1.MaintenanceArgs
	if err := decode(r, &args); err != nil {
		writeErr(w, err)
		return
	}
	name, err := s.knownHost(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	if args.On {
		_, err = s.cfg.Store.Put(r.Context(), inventory.MaintenanceKey(name), []byte("api"), store.AnyRevision)
	} else {
		if id, err := s.evacuation(r.Context(), name); err != nil || id != "" {
			if err == nil {
				err = errdefs.Precondition("host %q is being evacuated (operation %s): wait for it to end", name, id)
			}
			writeErr(w, err)
			return
		}
		err = s.cfg.Store.Delete(r.Context(), inventory.MaintenanceKey(name), store.AnyRevision)
		if errors.Is(err, store.ErrNotFound) {
			err = nil
		}
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	s.getHost(w, r)
}
