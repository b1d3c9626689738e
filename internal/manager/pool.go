package manager

import (
	"context"
	"errors"
	"net/http"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// PoolAdmin admits hosts into the pool and takes them out (internal/join).
type PoolAdmin interface {
	IssueToken(ctx context.Context, ttl time.Duration) (v1.JoinToken, error)
	// Join answers a joining host; the TLS listener serves it without a
	// client certificate (the join token authenticates it).
	Join(ctx context.Context, req v1.JoinRequest) (v1.JoinAnswer, error)
	Credentials(name string) (v1.Credentials, error)
	PoolInfo(ctx context.Context) (v1.PoolInfo, error)
	// CheckRemove refuses a removal that cannot happen whatever runs on
	// the host (the host answering, an unknown host, the only etcd
	// member), before the API evacuates it; RemoveHost then takes a
	// stopped host with no VM placed on it out of the pool.
	CheckRemove(ctx context.Context, name string) error
	RemoveHost(ctx context.Context, name string) error
}

// JoinRoute is one of the two routes the TLS listener serves without
// credentials (the join token authenticates it; its rule is Public).
const JoinRoute = "POST /api/v1/pool/join"

func (s *Server) poolRoutes() {
	s.route("POST /api/v1/pool/join-tokens", s.issueJoinToken)
	s.route(JoinRoute, s.join)
	s.route("POST /api/v1/pool/credentials", s.credentials)
	s.route("GET /api/v1/pool", s.poolInfo)
	s.route("DELETE /api/v1/hosts/{name}", s.removeHost)
}

func (s *Server) poolAdmin(w http.ResponseWriter) PoolAdmin {
	if s.cfg.PoolAdmin == nil {
		writeErr(w, errdefs.Precondition("this server has no pool to administer"))
	}
	return s.cfg.PoolAdmin
}

func (s *Server) issueJoinToken(w http.ResponseWriter, r *http.Request) {
	p := s.poolAdmin(w)
	if p == nil {
		return
	}
	var req v1.JoinTokenRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	if req.TTLSeconds < 0 || req.TTLSeconds > 24*3600 {
		writeErr(w, &v1.Error{Code: v1.CodeInvalidArgument, Field: "ttlSeconds", Message: "ttlSeconds: must be between 1 and 86400 (0: 10 minutes)"})
		return
	}
	tok, err := p.IssueToken(r.Context(), time.Duration(req.TTLSeconds)*time.Second)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, tok)
}

func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	p := s.poolAdmin(w)
	if p == nil {
		return
	}
	var req v1.JoinRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	ans, err := p.Join(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ans)
}

func (s *Server) credentials(w http.ResponseWriter, r *http.Request) {
	p := s.poolAdmin(w)
	if p == nil {
		return
	}
	var req v1.CredentialsRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	c, err := p.Credentials(req.Name)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, c)
}

func (s *Server) poolInfo(w http.ResponseWriter, r *http.Request) {
	p := s.poolAdmin(w)
	if p == nil {
		return
	}
	info, err := p.PoolInfo(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// removeHost takes a host out of the pool, evacuating it first (DELETE
// /api/v1/hosts/{name}). While the host is alive and not yet evacuated
// (out of maintenance, or a VM still running there) it records an
// evacuation — or finds the one under way — and answers 202 with it: the
// client follows it and asks again. A failed evacuation leaves the host in
// maintenance and nothing removed. Else the host's records and etcd
// membership go (204), refused while the host is alive (stop it first) or
// VMs are still placed on it (stopped or parked ones).
func (s *Server) removeHost(w http.ResponseWriter, r *http.Request) {
	p := s.poolAdmin(w)
	if p == nil {
		return
	}
	name := r.PathValue("name")
	if err := vm.ValidateName("name", name); err != nil {
		writeErr(w, err)
		return
	}
	if err := p.CheckRemove(r.Context(), name); err != nil {
		writeErr(w, err)
		return
	}
	op, err := s.evacuateBeforeRemove(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if op != nil {
		s.answerOp(w, r, *op, 0)
		return
	}
	if err := p.RemoveHost(r.Context(), name); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// evacuateBeforeRemove is the evacuation a host's removal waits for: the
// one under way, or a new one while the host is alive and out of
// maintenance or runs a VM; nil when there is nothing to evacuate (a
// stopped host cannot migrate anything: what is placed there stays and
// the removal refuses it).
func (s *Server) evacuateBeforeRemove(ctx context.Context, host string) (*v1.Operation, error) {
	if id, err := s.evacuation(ctx, host); err != nil {
		return nil, err
	} else if id != "" {
		op, _, err := s.inv.Op(ctx, id)
		return &op, err
	}
	if alive, err := s.inv.HostAlive(ctx, host); err != nil || !alive {
		return nil, err
	}
	evacuate := false
	if _, err := s.cfg.Store.Get(ctx, inventory.MaintenanceKey(host)); errors.Is(err, store.ErrNotFound) {
		evacuate = true
	} else if err != nil {
		return nil, err
	}
	specs, _, _, err := s.inv.Specs(ctx)
	if err != nil {
		return nil, err
	}
	for _, sp := range specs {
		if evacuate || sp.Host != host {
			continue
		}
		st, err := s.inv.Status(ctx, sp.Name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		evacuate = st.State == v1.StateRunning || st.State == v1.StatePaused
	}
	if !evacuate {
		return nil, nil
	}
	op, err := s.recordEvacuation(ctx, host, v1.EvacuateArgs{})
	if err != nil {
		return nil, err
	}
	return &op, nil
}
