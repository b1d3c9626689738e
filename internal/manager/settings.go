package manager

import (
	"math"
	"net/http"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/scheduler"
	"hangar/internal/store"
)

func (s *Server) settingsRoutes() {
	s.route("GET /api/v1/pool/settings", s.getSettings)
	s.route("PUT /api/v1/pool/settings", s.putSettings)
}

// getSettings answers the settings in force (the defaults filled in).
func (s *Server) getSettings(w http.ResponseWriter, r *http.Request) {
	pol, err := s.inv.Admission(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	failures, err := s.inv.HAFailures(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v1.PoolSettings{CPUOvercommit: pol.CPUOvercommit, MemoryOvercommit: pol.MemoryOvercommit,
		ReserveCPUs: pol.ReserveCPUs, ReserveMemoryMiB: pol.ReserveMemoryMiB, HAFailures: &failures})
}

// putSettings replaces the settings; a field left out or zero is the
// default.
func (s *Server) putSettings(w http.ResponseWriter, r *http.Request) {
	var ps v1.PoolSettings
	if err := decode(r, &ps); err != nil {
		writeErr(w, err)
		return
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"cpuOvercommit", ps.CPUOvercommit}, {"memoryOvercommit", ps.MemoryOvercommit}} {
		if math.IsNaN(f.v) || f.v < 0 || f.v > scheduler.MaxOvercommit || (f.v > 0 && f.v < 0.1) {
			writeErr(w, invalidArg(f.name, "%v: want a ratio from 0.1 to %v (0: the default)", f.v, scheduler.MaxOvercommit))
			return
		}
	}
	if ps.ReserveCPUs < 0 {
		writeErr(w, invalidArg("reserveCPUs", "%d: must not be negative", ps.ReserveCPUs))
		return
	}
	if ps.ReserveMemoryMiB < 0 {
		writeErr(w, invalidArg("reserveMemoryMiB", "%d: must not be negative", ps.ReserveMemoryMiB))
		return
	}
	if n := ps.HAFailures; n != nil && (*n < 0 || *n > inventory.MaxHAFailures) {
		writeErr(w, invalidArg("haFailures", "%d: want 0 (admission control off) to %d host failures", *n, inventory.MaxHAFailures))
		return
	}
	if _, err := store.PutJSON(r.Context(), s.cfg.Store, inventory.Settings, ps, store.AnyRevision); err != nil {
		writeErr(w, err)
		return
	}
	s.getSettings(w, r)
}
