package manager

import (
	"context"
	"net/http"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/vm"
)

// Usage reads what the VMs of this host use now and have used (the host
// agent): GET /vms/{name}/usage, /vms/{name}/history, /hosts/{name}/history.
type Usage interface {
	VMUsage(ctx context.Context, name string) (v1.VMUsage, error)
	VMHistory(ctx context.Context, name string) (v1.History, error)
	HostHistory(ctx context.Context) (v1.History, error)
	// Facts names this host (its Name).
	Facts() v1.Host
}

func (s *Server) liveRoutes() {
	s.route("GET /api/v1/vms/{name}/usage", s.vmUsage)
	s.route("GET /api/v1/vms/{name}/history", s.vmHistory)
	s.route("GET /api/v1/hosts/{name}/history", s.hostHistory)
	s.route("GET /api/v1/events", s.events)
	s.route("GET /api/v1/alerts", s.listAlerts)
}

// vmHere validates the path's VM name and forwards the request to the
// VM's host; it returns the name and host when the request is to be
// answered here (false: answered, an error or forwarded).
func (s *Server) vmHere(w http.ResponseWriter, r *http.Request) (name, host string, ok bool) {
	name = r.PathValue("name")
	if err := vm.ValidateName("name", name); err != nil {
		writeErr(w, err)
		return "", "", false
	}
	host, err := s.vmHost(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return "", "", false
	}
	return name, host, s.servedHere(w, r, host)
}

// servedByVMHost is vmHere for the usage routes: this server must also
// read its host's usage.
func (s *Server) servedByVMHost(w http.ResponseWriter, r *http.Request) (string, bool) {
	name, host, ok := s.vmHere(w, r)
	if !ok {
		return "", false
	}
	if s.cfg.Usage == nil {
		writeErr(w, errdefs.Precondition("vm %q: this server reads no usage (no host agent)", name))
		return "", false
	}
	if self := s.cfg.Usage.Facts().Name; host != "" && host != self {
		writeErr(w, errdefs.Precondition("vm %q is on host %q, which this server (host %q) cannot reach", name, host, self))
		return "", false
	}
	return name, true
}

func (s *Server) vmUsage(w http.ResponseWriter, r *http.Request) {
	answerVM(s, w, r, Usage.VMUsage)
}

func (s *Server) vmHistory(w http.ResponseWriter, r *http.Request) {
	answerVM(s, w, r, Usage.VMHistory)
}

// answerVM answers a request about a VM on its host with read.
func answerVM[T any](s *Server, w http.ResponseWriter, r *http.Request, read func(Usage, context.Context, string) (T, error)) {
	name, ok := s.servedByVMHost(w, r)
	if !ok {
		return
	}
	v, err := read(s.cfg.Usage, r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, v)
}

func (s *Server) hostHistory(w http.ResponseWriter, r *http.Request) {
	name, err := s.knownHost(r)
	if err != nil {
		writeErr(w, errdefs.Field("name", err))
		return
	}
	if !s.servedHere(w, r, name) {
		return
	}
	if s.cfg.Usage == nil || s.cfg.Usage.Facts().Name != name {
		writeErr(w, errdefs.Precondition("host %q: this server cannot read its history", name))
		return
	}
	h, err := s.cfg.Usage.HostHistory(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, h)
}
