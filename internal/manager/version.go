package manager

import (
	"net/http"

	v1 "hangar/api/v1"
	"hangar/internal/buildinfo"
)

// getVersion answers the server's build and each host's QEMU.
func (s *Server) getVersion(w http.ResponseWriter, r *http.Request) {
	hosts, err := s.inv.HostInfos(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	b := buildinfo.Get()
	out := v1.Version{Version: b.Version, Commit: b.Commit, Modified: b.Modified, GoVersion: b.GoVersion, QEMU: []v1.HostQEMU{}}
	for _, h := range hosts {
		out.QEMU = append(out.QEMU, v1.HostQEMU{Host: h.Name, Version: h.QEMUVersion, Accelerator: h.Accelerator})
	}
	writeJSON(w, http.StatusOK, out)
}
