package manager

import (
	"context"
	"net/http"

	v1 "hangar/api/v1"
	"hangar/internal/capacity"
	"hangar/internal/qemu"
)

// capacity reads the pool's records at this moment and computes the
// capacity overview (internal/capacity): each host's facts with liveness,
// maintenance, booked CPU and memory and VM counts, and the pool's sums and
// CPU model.
func (s *Server) capacity(ctx context.Context) (v1.Capacity, error) {
	hosts, err := s.inv.HostInfos(ctx)
	if err != nil {
		return v1.Capacity{}, err
	}
	alive, err := s.inv.LiveHosts(ctx)
	if err != nil {
		return v1.Capacity{}, err
	}
	inMaint, err := s.inv.HostsInMaintenance(ctx)
	if err != nil {
		return v1.Capacity{}, err
	}
	judged, err := s.inv.HostLivenesses(ctx)
	if err != nil {
		return v1.Capacity{}, err
	}
	var live []v1.Host
	for i := range hosts {
		hosts[i].Alive = alive[hosts[i].Name]
		if j, ok := judged[hosts[i].Name]; ok && !hosts[i].Alive {
			hosts[i].Liveness, hosts[i].LivenessWhy = j.State, j.Why
		}
		hosts[i].Maintenance = hosts[i].Maintenance || inMaint[hosts[i].Name]
		if hosts[i].Alive {
			live = append(live, hosts[i])
		}
	}
	vms, err := s.inv.VMList(ctx)
	if err != nil {
		return v1.Capacity{}, err
	}
	allocs, err := s.inv.AllocsByHost(ctx)
	if err != nil {
		return v1.Capacity{}, err
	}
	specs := make([]v1.VMSpec, len(vms))
	for i, v := range vms {
		specs[i] = v.Spec
	}
	pol, err := s.inv.Admission(ctx)
	if err != nil {
		return v1.Capacity{}, err
	}
	return capacity.Overview(hosts, vms, capacity.Allocated(specs, allocs), pol, qemu.PoolCPUModel(live)), nil
}

// poolCPUModel is the CPU model of a VM that names none: one every live
// host runs (qemu.PoolCPUModel), so the VM starts and migrates anywhere.
func poolCPUModel(hosts []v1.Host) string {
	var live []v1.Host
	for _, h := range hosts {
		if h.Alive {
			live = append(live, h)
		}
	}
	return qemu.PoolCPUModel(live)
}

func (s *Server) getCapacity(w http.ResponseWriter, r *http.Request) {
	c, err := s.capacity(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, c)
}
