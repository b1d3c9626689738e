package manager

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
)

var (
	descVMs      = prometheus.NewDesc("hangar_vms", "VMs by observed state.", []string{"state"}, nil)
	descHostUp   = prometheus.NewDesc("hangar_host_up", "1 when the host's agent holds its lease.", []string{"host"}, nil)
	descHostCPUs = prometheus.NewDesc("hangar_host_cpus", "Logical CPUs of the host.", []string{"host"}, nil)
	descHostMem  = prometheus.NewDesc("hangar_host_memory_bytes", "Memory of the host.", []string{"host"}, nil)
	descHostUsed = prometheus.NewDesc("hangar_host_memory_allocated_bytes", "Memory allocated to VMs that are not stopped.", []string{"host"}, nil)
	descHostVMs  = prometheus.NewDesc("hangar_host_vms", "VMs placed on the host (counted from the VM records at scrape time).", []string{"host"}, nil)
	descOps      = prometheus.NewDesc("hangar_operations", "Operations by state.", []string{"state"}, nil)

	// The capacity overview (GET /api/v1/capacity), per host and for the pool.
	descHostState     = prometheus.NewDesc("hangar_host_state", "1 for the host's state (alive, down, maintenance; for a host without a lease the pool master's judgement: suspect, isolated, dead), 0 for the others.", []string{"host", "state"}, nil)
	descHostVCPUs     = prometheus.NewDesc("hangar_host_vcpus_allocated", "vCPUs booked on the host.", []string{"host"}, nil)
	descHostVCPUsFree = prometheus.NewDesc("hangar_host_vcpus_free", "vCPUs the host still takes under the CPU overcommit ratio.", []string{"host"}, nil)
	descHostMemFree   = prometheus.NewDesc("hangar_host_memory_free_bytes", "Memory the host still takes under the memory overcommit ratio.", []string{"host"}, nil)
	descHostVMState   = prometheus.NewDesc("hangar_host_vms_in_state", "VMs placed on the host by observed state.", []string{"host", "state"}, nil)
	descHostStSize    = prometheus.NewDesc("hangar_host_storage_size_bytes", "Size of the file system of a storage pool's directory, as the host sees it.", []string{"host", "pool"}, nil)
	descHostStUsed    = prometheus.NewDesc("hangar_host_storage_used_bytes", "Used bytes of a storage pool's file system, as the host sees it.", []string{"host", "pool"}, nil)
	descHostStFree    = prometheus.NewDesc("hangar_host_storage_free_bytes", "Free bytes of a storage pool's file system, as the host sees it.", []string{"host", "pool"}, nil)
	descPoolHosts     = prometheus.NewDesc("hangar_pool_hosts", "Hosts of the pool by state.", []string{"state"}, nil)
	descPoolCPUs      = prometheus.NewDesc("hangar_pool_cpus", "Logical CPUs of all hosts.", nil, nil)
	descPoolVCPUs     = prometheus.NewDesc("hangar_pool_vcpus_allocated", "vCPUs booked on all hosts.", nil, nil)
	descPoolVCPUsFree = prometheus.NewDesc("hangar_pool_vcpus_free", "vCPUs the hosts that take new VMs still take.", nil, nil)
	descPoolMem       = prometheus.NewDesc("hangar_pool_memory_bytes", "Memory of all hosts.", nil, nil)
	descPoolMemUsed   = prometheus.NewDesc("hangar_pool_memory_allocated_bytes", "Memory booked on all hosts.", nil, nil)
	descPoolMemFree   = prometheus.NewDesc("hangar_pool_memory_free_bytes", "Memory the hosts that take new VMs still take.", nil, nil)
	descPoolCPURatio  = prometheus.NewDesc("hangar_pool_cpu_overcommit_ratio", "vCPUs admitted per logical CPU.", nil, nil)
	descPoolMemRatio  = prometheus.NewDesc("hangar_pool_memory_overcommit_ratio", "Memory admitted per byte of host memory.", nil, nil)
	descPoolCPUModel  = prometheus.NewDesc("hangar_pool_cpu_model_info", "The pool's CPU model (the default of a VM that names none).", []string{"model"}, nil)
	descStorageSize   = prometheus.NewDesc("hangar_storage_pool_size_bytes", "Size of a storage pool (shared: once; dir: summed over its hosts).", []string{"pool", "type"}, nil)
	descStorageUsed   = prometheus.NewDesc("hangar_storage_pool_used_bytes", "Used bytes of a storage pool.", []string{"pool"}, nil)
	descStorageFree   = prometheus.NewDesc("hangar_storage_pool_free_bytes", "Free bytes of a storage pool.", []string{"pool"}, nil)
)

var capacityDescs = []*prometheus.Desc{descHostState, descHostVCPUs, descHostVCPUsFree, descHostMemFree, descHostVMState,
	descHostStSize, descHostStUsed, descHostStFree, descPoolHosts, descPoolCPUs, descPoolVCPUs, descPoolVCPUsFree,
	descPoolMem, descPoolMemUsed, descPoolMemFree, descPoolCPURatio, descPoolMemRatio, descPoolCPUModel,
	descStorageSize, descStorageUsed, descStorageFree}

// vmStates are the states hangar_vms always reports, 0 when no VM is in one.
var vmStates = []string{v1.StateCreating, v1.StateStopped, v1.StateStarting, v1.StateRunning, v1.StatePaused,
	v1.StateStopping, v1.StateCrashed, v1.StateSuspended, v1.StateError}

// collector reads the inventory at scrape time, so a VM deleted a moment
// ago is gone from every count of the next scrape.
type collector struct {
	inv      inventory.Inventory
	capacity func(context.Context) (v1.Capacity, error)
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVMs, descHostUp, descHostCPUs, descHostMem, descHostUsed, descHostVMs, descOps} {
		ch <- d
	}
	for _, d := range capacityDescs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if vms, err := c.inv.VMList(ctx); err == nil {
		counts := map[string]int{}
		for _, s := range vmStates {
			counts[s] = 0
		}
		for _, v := range vms {
			if _, known := counts[v.Status.State]; known {
				counts[v.Status.State]++
			} else {
				counts[v1.StateError]++ // a record with no or an unknown state
			}
		}
		for s, n := range counts {
			ch <- prometheus.MustNewConstMetric(descVMs, prometheus.GaugeValue, float64(n), s)
		}
	}
	if capa, err := c.capacity(ctx); err == nil {
		collectCapacity(ch, capa)
	}
	if ops, _, _, err := c.inv.Ops(ctx); err == nil {
		counts := map[string]int{}
		for _, st := range []string{v1.OpPending, v1.OpRunning, v1.OpSucceeded, v1.OpFailed, v1.OpCancelled} {
			counts[st] = 0
		}
		for _, o := range ops {
			if _, known := counts[o.State]; known {
				counts[o.State]++
			}
		}
		for s, n := range counts {
			ch <- prometheus.MustNewConstMetric(descOps, prometheus.GaugeValue, float64(n), s)
		}
	}
}

// collectCapacity reports the capacity overview: per host, then for the
// pool and its storage pools.
func collectCapacity(ch chan<- prometheus.Metric, capa v1.Capacity) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	const mib = 1 << 20
	for _, h := range capa.Hosts {
		up := 0.0
		if h.Alive {
			up = 1
		}
		gauge(descHostUp, up, h.Name)
		gauge(descHostCPUs, float64(h.CPUs), h.Name)
		gauge(descHostMem, float64(h.MemoryMiB)*mib, h.Name)
		gauge(descHostUsed, float64(h.AllocatedMemoryMiB)*mib, h.Name)
		gauge(descHostVMs, float64(h.VMs), h.Name)
		for _, st := range []string{v1.HostAlive, v1.HostDown, v1.HostMaintenance, v1.HostSuspect, v1.HostIsolated, v1.HostDead} {
			v := 0.0
			if h.State == st {
				v = 1
			}
			gauge(descHostState, v, h.Name, st)
		}
		gauge(descHostVCPUs, float64(h.AllocatedCPUs), h.Name)
		gauge(descHostVCPUsFree, float64(h.FreeCPUs), h.Name)
		gauge(descHostMemFree, float64(h.FreeMemoryMiB)*mib, h.Name)
		for st, n := range h.VMStates {
			gauge(descHostVMState, float64(n), h.Name, st)
		}
		for _, u := range h.Storage {
			gauge(descHostStSize, float64(u.TotalBytes), h.Name, u.Pool)
			gauge(descHostStUsed, float64(u.UsedBytes), h.Name, u.Pool)
			gauge(descHostStFree, float64(u.FreeBytes), h.Name, u.Pool)
		}
	}
	p := capa.Pool
	gauge(descPoolHosts, float64(p.HostsAlive), v1.HostAlive)
	gauge(descPoolHosts, float64(p.HostsDown), v1.HostDown)
	gauge(descPoolHosts, float64(p.HostsMaintenance), v1.HostMaintenance)
	gauge(descPoolCPUs, float64(p.CPUs))
	gauge(descPoolVCPUs, float64(p.AllocatedCPUs))
	gauge(descPoolVCPUsFree, float64(p.FreeCPUs))
	gauge(descPoolMem, float64(p.MemoryMiB)*mib)
	gauge(descPoolMemUsed, float64(p.AllocatedMemoryMiB)*mib)
	gauge(descPoolMemFree, float64(p.FreeMemoryMiB)*mib)
	gauge(descPoolCPURatio, p.CPUOvercommit)
	gauge(descPoolMemRatio, p.MemoryOvercommit)
	gauge(descPoolCPUModel, 1, p.CPUModel)
	for _, u := range p.Storage {
		gauge(descStorageSize, float64(u.TotalBytes), u.Pool, u.Type)
		gauge(descStorageUsed, float64(u.UsedBytes), u.Pool)
		gauge(descStorageFree, float64(u.FreeBytes), u.Pool)
	}
}
