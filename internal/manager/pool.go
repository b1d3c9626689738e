package manager

import (
	"context"
	"net/http"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
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
	RemoveHost(ctx context.Context, name string) error
}

// JoinRoute is the one route the TLS listener serves without a client
// certificate.
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
	if err := p.RemoveHost(r.Context(), name); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
