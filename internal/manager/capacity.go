package manager

import (
	"context"
	"net/http"

	v1 "hangar/api/v1"
	"hangar/internal/capacity"
	"hangar/internal/inventory"
	"hangar/internal/qemu"
)

// poolRead is one read of the records that the capacity overview and the
// alerts are made of, so that an answer needing both reads each kind once.
type poolRead struct {
	capa   v1.Capacity
	vms    []v1.VM
	judged map[string]inventory.HostLiveness // the master's judgements
}

// capacity reads the pool's records at this moment and computes the
// capacity overview (internal/capacity): each host's facts with liveness,
// maintenance, booked CPU and memory and VM counts, and the pool's sums and
// CPU model.
func (s *Server) capacity(ctx context.Context) (v1.Capacity, error) {
	p, err := s.readPool(ctx)
	return p.capa, err
}

func (s *Server) readPool(ctx context.Context) (poolRead, error) {
	hosts, err := s.inv.HostInfos(ctx)
	if err != nil {
		return poolRead{}, err
	}
	alive, err := s.inv.LiveHosts(ctx)
	if err != nil {
		return poolRead{}, err
	}
	inMaint, err := s.inv.HostsInMaintenance(ctx)
	if err != nil {
		return poolRead{}, err
	}
	judged, err := s.inv.HostLivenesses(ctx)
	if err != nil {
		return poolRead{}, err
	}
	for i := range hosts {
		hosts[i].Alive = alive[hosts[i].Name]
		if j, ok := judged[hosts[i].Name]; ok && !hosts[i].Alive {
			hosts[i].Liveness, hosts[i].LivenessWhy = j.State, j.Why
		}
		hosts[i].Maintenance = hosts[i].Maintenance || inMaint[hosts[i].Name]
	}
	vms, err := s.inv.VMList(ctx)
	if err != nil {
		return poolRead{}, err
	}
	allocs, err := s.inv.AllocsByHost(ctx)
	if err != nil {
		return poolRead{}, err
	}
	specs := make([]v1.VMSpec, len(vms))
	for i, v := range vms {
		specs[i] = v.Spec
	}
	pol, err := s.inv.Admission(ctx)
	if err != nil {
		return poolRead{}, err
	}
	capa := capacity.Overview(hosts, vms, capacity.Allocated(specs, allocs), pol, poolCPUModel(hosts))
	return poolRead{capa: capa, vms: vms, judged: judged}, nil
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
