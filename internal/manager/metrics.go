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
)

// vmStates are the states hangar_vms always reports, 0 when no VM is in one.
var vmStates = []string{v1.StateCreating, v1.StateStopped, v1.StateStarting, v1.StateRunning, v1.StatePaused,
	v1.StateStopping, v1.StateCrashed, v1.StateSuspended, v1.StateError}

// collector reads the inventory at scrape time, so a VM deleted a moment
// ago is gone from every count of the next scrape.
type collector struct{ inv inventory.Inventory }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVMs, descHostUp, descHostCPUs, descHostMem, descHostUsed, descHostVMs, descOps} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	vms, vmErr := c.inv.VMList(ctx)
	if vmErr == nil {
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
	placed := map[string]int{}
	for _, v := range vms {
		placed[v.Spec.Host]++
	}
	if hosts, err := c.inv.HostInfos(ctx); err == nil {
		for _, h := range hosts {
			up := 0.0
			if alive, err := c.inv.HostAlive(ctx, h.Name); err == nil && alive {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descHostUp, prometheus.GaugeValue, up, h.Name)
			ch <- prometheus.MustNewConstMetric(descHostCPUs, prometheus.GaugeValue, float64(h.CPUs), h.Name)
			ch <- prometheus.MustNewConstMetric(descHostMem, prometheus.GaugeValue, float64(h.MemoryMiB)*(1<<20), h.Name)
			ch <- prometheus.MustNewConstMetric(descHostUsed, prometheus.GaugeValue, float64(h.AllocatedMemoryMiB)*(1<<20), h.Name)
			if vmErr == nil {
				ch <- prometheus.MustNewConstMetric(descHostVMs, prometheus.GaugeValue, float64(placed[h.Name]), h.Name)
			}
		}
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
