package manager

import (
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	v1 "hangar/api/v1"
)

// Alerts (GET /api/v1/alerts and the alert events of GET /api/v1/events)
// are derived from the records, not stored: a host the pool master judges
// suspect (warning), isolated or dead (critical); a VM whose status is
// crashed or error (critical); a storage pool with less than 10 % free
// (warning; critical under 5 %). An alert's ID is kind/target.

// lowStorage is the free fraction under which a storage pool alerts.
const lowStorage = 0.10

// hostAlert is the alert of a host, or nil. since is when the master
// judged it (its liveness record).
func hostAlert(h v1.Host, since time.Time) *v1.Alert {
	sev := v1.SeverityCritical
	switch h.State {
	case v1.HostSuspect:
		sev = v1.SeverityWarning
	case v1.HostIsolated, v1.HostDead:
	default:
		return nil
	}
	msg := fmt.Sprintf("host %s is %s since %s", h.Name, h.State, since.UTC().Format(time.RFC3339))
	if h.LivenessWhy != "" {
		msg += ": " + h.LivenessWhy
	}
	return &v1.Alert{ID: v1.AlertHostDown + "/" + h.Name, Severity: sev, Kind: v1.AlertHostDown, Target: h.Name,
		Message: msg, Since: since.UTC()}
}

// vmAlert is the alert of a VM, or nil.
func vmAlert(v v1.VM) *v1.Alert {
	st := v.Status
	if st.State != v1.StateCrashed && st.State != v1.StateError {
		return nil
	}
	msg := fmt.Sprintf("vm %s is %s", v.Spec.Name, st.State)
	if st.Host != "" {
		msg += " on host " + st.Host
	}
	if st.Reason != "" {
		msg += ": " + st.Reason
	}
	return &v1.Alert{ID: v1.AlertVMCrashed + "/" + v.Spec.Name, Severity: v1.SeverityCritical, Kind: v1.AlertVMCrashed,
		Target: v.Spec.Name, Message: msg, Since: st.UpdatedAt.UTC()}
}

// storageAlert is the alert of a storage pool, or nil. since is when this
// server first saw it low.
func storageAlert(u v1.StorageUsage, since func(id string) time.Time) *v1.Alert {
	if u.TotalBytes <= 0 || u.FreeBytes < 0 || float64(u.FreeBytes) >= lowStorage*float64(u.TotalBytes) {
		return nil
	}
	sev := v1.SeverityWarning
	if float64(u.FreeBytes) < lowStorage/2*float64(u.TotalBytes) {
		sev = v1.SeverityCritical
	}
	id := v1.AlertStorageLow + "/" + u.Pool
	return &v1.Alert{ID: id, Severity: sev, Kind: v1.AlertStorageLow, Target: u.Pool, Since: since(id).UTC(),
		Message: fmt.Sprintf("storage pool %s has %.1f%% free (%d MiB of %d MiB)", u.Pool,
			100*float64(u.FreeBytes)/float64(u.TotalBytes), u.FreeBytes>>20, u.TotalBytes>>20)}
}

// firstSeen remembers when this server first saw an alert that has no
// time of its own (storage-low), and forgets it once it clears.
type firstSeen struct {
	mu sync.Mutex
	m  map[string]time.Time
}

func (f *firstSeen) since(id string) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]time.Time{}
	}
	t, ok := f.m[id]
	if !ok {
		t = time.Now()
		f.m[id] = t
	}
	return t
}

// keep forgets the ids not in active.
func (f *firstSeen) keep(active map[string]v1.Alert) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range f.m {
		if _, ok := active[id]; !ok {
			delete(f.m, id)
		}
	}
}

// poolAlerts are the host and storage alerts of the capacity overview (a
// stream's VM alerts come with its VM events).
func (s *Server) poolAlerts(p poolRead) map[string]v1.Alert {
	out := map[string]v1.Alert{}
	for _, h := range p.capa.Hosts {
		if a := hostAlert(h, p.judged[h.Name].Since); a != nil {
			out[a.ID] = *a
		}
	}
	for _, u := range p.capa.Pool.Storage {
		if a := storageAlert(u, s.alertSince.since); a != nil {
			out[a.ID] = *a
		}
	}
	s.alertSince.keep(out)
	return out
}

func sortedAlerts(m map[string]v1.Alert) []v1.Alert {
	out := make([]v1.Alert, 0, len(m))
	for _, a := range m {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *Server) listAlerts(w http.ResponseWriter, r *http.Request) {
	p, err := s.readPool(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	active := s.poolAlerts(p)
	for _, v := range p.vms {
		if a := vmAlert(v); a != nil {
			active[a.ID] = *a
		}
	}
	writeJSON(w, 200, v1.AlertList{Alerts: sortedAlerts(active)})
}
