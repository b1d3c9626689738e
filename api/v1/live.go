package v1

import "time"

// Live views of the pool: a VM's usage, sampled history, alerts and the
// server-sent event stream (GET /api/v1/events).

// VMUsage is a running VM's usage as its host reads it now
// (GET /api/v1/vms/{name}/usage). CPU and memory come from the VM's cgroup;
// where the host has none (a network namespace without a cgroup file
// system) from its QEMU process (Source "process"), with no memory limit.
// Disk figures are QMP query-blockstats summed over the VM's disks; network
// figures the bridged NICs' tap counters (user-mode NICs have none), from
// the guest's side. Counters run from the QEMU process's start.
type VMUsage struct {
	CPUSeconds float64 `json:"cpuSeconds"`
	// CPUCores is the CPU used over the host's last sample interval
	// (History.Interval; 0 before the second sample).
	CPUCores         float64 `json:"cpuCores"`
	MemoryBytes      int64   `json:"memoryBytes"`
	MemoryLimitBytes int64   `json:"memoryLimitBytes"`
	DiskReadBytes    int64   `json:"diskReadBytes"`
	DiskWriteBytes   int64   `json:"diskWriteBytes"`
	DiskReadOps      int64   `json:"diskReadOps"`
	DiskWriteOps     int64   `json:"diskWriteOps"`
	NetRxBytes       int64   `json:"netRxBytes"`
	NetTxBytes       int64   `json:"netTxBytes"`
	// BalloonBytes is the guest's memory as its balloon leaves it (QMP
	// query-balloon's actual); absent without a balloon device.
	BalloonBytes int64     `json:"balloonBytes,omitempty"`
	At           time.Time `json:"at"`
	// Source of CPU and memory: "cgroup" or "process".
	Source string `json:"source,omitempty"`
}

// Usage sources (VMUsage.Source).
const (
	UsageCgroup  = "cgroup"
	UsageProcess = "process"
)

// History is the last hour of a VM's or a host's usage, sampled in memory
// by the host concerned (GET /api/v1/vms/{name}/history,
// GET /api/v1/hosts/{name}/history); lost when its serve restarts.
type History struct {
	// Interval between samples in seconds.
	Interval float64         `json:"interval"`
	Samples  []HistorySample `json:"samples"` // oldest first
}

// HistorySample is one sample: rates over the interval before T.
type HistorySample struct {
	T            int64   `json:"t"` // unix seconds
	CPUCores     float64 `json:"cpuCores"`
	MemoryBytes  int64   `json:"memoryBytes"`
	DiskReadBps  float64 `json:"diskReadBps"`
	DiskWriteBps float64 `json:"diskWriteBps"`
	NetRxBps     float64 `json:"netRxBps"`
	NetTxBps     float64 `json:"netTxBps"`
}

// Alert severities and kinds.
const (
	SeverityCritical = "critical"
	SeverityWarning  = "warning"

	AlertHostDown   = "host-down"
	AlertVMCrashed  = "vm-crashed"
	AlertStorageLow = "storage-low"
)

// Alert is an active problem of the pool (GET /api/v1/alerts). ID is
// kind/target and stays the same while the problem lasts.
type Alert struct {
	ID       string    `json:"id"`
	Severity string    `json:"severity"`
	Kind     string    `json:"kind"`
	Target   string    `json:"target"`
	Message  string    `json:"message"`
	Since    time.Time `json:"since"`
}

// AlertList answers GET /api/v1/alerts.
type AlertList struct {
	Alerts []Alert `json:"alerts"`
}

// Event names of GET /api/v1/events (text/event-stream).
const (
	EventHost         = "host"
	EventHostDeleted  = "host-deleted"
	EventVM           = "vm"
	EventVMDeleted    = "vm-deleted"
	EventOperation    = "operation"
	EventAlert        = "alert"
	EventAlertCleared = "alert-cleared"
	EventPool         = "pool"
	EventSynced       = "synced"
	// EventWhoami: the caller's rights changed while its stream was open
	// (data: the Whoami it has now, as GET /whoami answers).
	EventWhoami = "whoami"
)

// Synced is the data of the synced event. Full: the stream began with the
// whole state, and what it did not name is gone; false on a resume, which
// sent only the changes since the client's Last-Event-ID (its VMs and
// operations stand as it has them).
type Synced struct {
	Full bool `json:"full"`
}

// Deleted is the data of host-deleted and vm-deleted events.
type Deleted struct {
	Name string `json:"name"`
}

// AlertCleared is the data of an alert-cleared event.
type AlertCleared struct {
	ID string `json:"id"`
}
