// Package v1 holds the public types of Hangar's REST API (/api/v1).
package v1

import (
	"encoding/json"
	"time"
)

// Power states a user asks for (VMSpec.Power).
const (
	PowerRunning = "running"
	PowerStopped = "stopped"
	PowerPaused  = "paused"
)

// Placement modes (VMSpec.Placement).
const (
	PlacementAuto      = "auto"
	PlacementPreferred = "preferred"
	PlacementManual    = "manual"
)

// Observed VM states (VMStatus.State).
const (
	StateCreating  = "creating"
	StateStopped   = "stopped"
	StateStarting  = "starting"
	StateRunning   = "running"
	StatePaused    = "paused"
	StateStopping  = "stopping"
	StateCrashed   = "crashed"
	StateSuspended = "suspended"
	StateError     = "error"
	// StateLost: the VM's host is dead and the VM was not restarted
	// elsewhere (not highly available, or it cannot be); the reason says
	// why. Written by the pool master.
	StateLost = "lost"
)

// Restart policies (VMSpec.RestartPolicy).
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
)

// I/O error policies (VMSpec.IOErrorPolicy, Disk.IOErrorPolicy): what
// happens when the storage under a disk fails a guest's read or write
// (QEMU's werror/rerror of the disk's device).
const (
	// IOErrorStop pauses the VM (state paused, reason "io-error: …");
	// Hangar resumes it by itself once the disk's storage answers again.
	// The default.
	IOErrorStop = "stop"
	// IOErrorReport hands the error to the guest (an EIO on its request);
	// the VM keeps running and the error is recorded (VMStatus.IOErrors).
	IOErrorReport = "report"
	// IOErrorIgnore drops the error: the guest believes the request
	// succeeded (its data may be lost). Recorded like report.
	IOErrorIgnore = "ignore"
)

// ReasonIOError begins VMStatus.Reason of a VM paused by an I/O error.
const ReasonIOError = "io-error"

// NIC modes.
const (
	NICUser   = "user"
	NICBridge = "bridge"
)

// VM is a virtual machine: what the user asked for and what the host observed.
type VM struct {
	Spec     VMSpec   `json:"spec"`
	Status   VMStatus `json:"status"`
	Revision int64    `json:"revision"`
}

// VMSpec is the desired state of a VM.
type VMSpec struct {
	Name          string   `json:"name"`
	CPUs          int      `json:"cpus"`
	MemoryMiB     int      `json:"memoryMiB"`
	Machine       string   `json:"machine,omitempty"`
	CPUModel      string   `json:"cpuModel,omitempty"`
	Disks         []Disk   `json:"disks,omitempty"`
	NICs          []NIC    `json:"nics,omitempty"`
	Boot          []string `json:"boot,omitempty"`
	RestartPolicy string   `json:"restartPolicy,omitempty"`
	// Power is the state the user wants: running, stopped or paused.
	Power string `json:"power,omitempty"`
	// Host is where the VM is placed; set by the manager.
	Host string `json:"host,omitempty"`
	// Placement is how the pool master picks Host: "auto" (the freest
	// eligible host), "preferred" (the freest of PreferredHosts that can
	// take the VM, else the freest of the pool) or "manual" (only
	// PreferredHosts; with one host, exactly that host, or an error).
	// Default: preferred when PreferredHosts are given, else auto.
	Placement string `json:"placement,omitempty"`
	// PreferredHosts are host names for placement preferred or manual.
	PreferredHosts []string `json:"preferredHosts,omitempty"`
	// AntiAffinityGroup: no two VMs of one group are placed on one host.
	AntiAffinityGroup string `json:"antiAffinityGroup,omitempty"`
	// Tags label the VM for access grants scoped to a tag ("tag:web");
	// each is a lower-case name like a VM's, at most 16.
	Tags []string `json:"tags,omitempty"`
	// HA: restart the VM on another host when its host dies (nil: off).
	// An HA restart places the VM like a create: Placement and
	// PreferredHosts apply.
	HA *HA `json:"ha,omitempty"`
	// Parked is set by the pool master: the VM was shut down because no
	// host could take it when its host was evacuated; it starts by itself
	// when a host can (its own host leaving maintenance, or — when all its
	// disks are on shared pools — any host).
	Parked bool `json:"parked,omitempty"`
	// UUID is the VM's SMBIOS UUID; set by the manager on create.
	UUID string `json:"uuid,omitempty"`
	// CloudInit, when set, is served to the guest as a NoCloud seed ISO on
	// a cdrom named "cidata".
	CloudInit *CloudInit `json:"cloudInit,omitempty"`
	// IOErrorPolicy is what a storage error on one of the VM's disks does:
	// stop (default), report or ignore (IOErrorStop…); a disk's own
	// IOErrorPolicy overrides it. It applies from the VM's next start
	// (QEMU fixes it when it creates the disk's device).
	IOErrorPolicy string `json:"ioErrorPolicy,omitempty"`
	// Resources are the VM's CPU and memory controls, enforced through
	// the VM's cgroup on its host (nil: defaults).
	Resources *Resources `json:"resources,omitempty"`
}

// Resources are a VM's CPU and memory controls.
type Resources struct {
	// CPUShares is the VM's relative CPU weight under contention
	// (2..262144, default 1024).
	CPUShares int `json:"cpuShares,omitempty"`
	// CPULimit caps the VM's QEMU at this many host CPUs (0: no cap).
	CPULimit float64 `json:"cpuLimit,omitempty"`
	// MemoryLimitMiB is the hard memory limit of the VM's QEMU process;
	// 0 computes one from the guest's memory plus QEMU's overhead, so the
	// host's OOM killer picks the VM that outgrows it.
	MemoryLimitMiB int `json:"memoryLimitMiB,omitempty"`
	// CPUPinning pins the vCPU threads to host CPUs: one host CPU list
	// per vCPU separated by ";" ("2;3": vCPU 0 on CPU 2, vCPU 1 on CPU
	// 3), or one list for every vCPU ("0-1,4"). "" leaves them to the
	// host's scheduler.
	CPUPinning string `json:"cpuPinning,omitempty"`
	// BalloonMiB, when set at start, gives the VM a virtio-balloon device
	// and is the guest's memory target in MiB (32 to memoryMiB): the
	// guest's balloon driver hands the rest back to the host. Changed
	// live on a VM started with one; 0 live gives the guest all its
	// memory back (the device stays until the next start).
	BalloonMiB int `json:"balloonMiB,omitempty"`
	// Hugepages backs the guest's RAM with huge pages (hugetlbfs at
	// /dev/hugepages) from the next start: KVM only (TCG's RAM carries
	// an 8 KiB pad, no whole number of huge pages), on a host that has
	// enough reserved (vm.nr_hugepages).
	Hugepages bool `json:"hugepages,omitempty"`
}

// HA is a VM's high-availability settings. When its host is declared dead
// (its lease expired, its storage heartbeat stopped and its self-fencing
// timer has surely fired), an enabled VM that was meant to run is
// restarted on another host, higher Priority first and, within a
// priority, lower RestartOrder first; at most MaxRestarts times within
// RestartWindow, after which it stays down (a VM that kills every host it
// lands on must not walk the pool).
type HA struct {
	Enabled bool `json:"enabled"`
	// Priority: higher restarts first (-1000…1000, default 0).
	Priority int `json:"priority,omitempty"`
	// RestartOrder: lower restarts first within one priority (0…1000).
	RestartOrder int `json:"restartOrder,omitempty"`
	// MaxRestarts within RestartWindow (1…100, default 3).
	MaxRestarts int `json:"maxRestarts,omitempty"`
	// RestartWindow is a Go duration ("1h"; 1m…168h, default 1h).
	RestartWindow string `json:"restartWindow,omitempty"`
}

// CloudInit is NoCloud seed data for guests that run cloud-init.
// UserData is write-only: the API never returns it (it often holds
// passwords); answers carry UserDataSHA256 instead.
type CloudInit struct {
	UserData string `json:"userData,omitempty"`
	MetaData string `json:"metaData,omitempty"`
	// UserDataSHA256 is the hex SHA-256 of the user-data; set by hangar in
	// answers, refused in requests.
	UserDataSHA256 string `json:"userDataSHA256,omitempty"`
	// UserDataSealed is the user-data as the state store keeps it: sealed
	// with the hosts' key (internal/secrets). Set by hangar, in no answer.
	UserDataSealed string `json:"userDataSealed,omitempty"`
}

// Disk is one virtual disk. Where its data comes from is exactly one of:
//   - SizeMiB alone: a new empty qcow2 volume;
//   - Image: a new copy-on-write overlay of an image file (SizeMiB may grow it);
//   - Clone: a new volume copied from (or, Linked, layered on) a pool volume;
//   - Import: a new qcow2 volume converted from a foreign disk;
//   - Volume: an existing pool volume, attached as it is (not deleted with the VM).
//
// A cdrom (Media "cdrom") is read-only: Image is an ISO file or empty (no medium).
type Disk struct {
	Name      string        `json:"name,omitempty"`
	SizeMiB   int64         `json:"sizeMiB,omitempty"`
	Image     string        `json:"image,omitempty"`
	Clone     *CloneSource  `json:"clone,omitempty"`
	Import    *ImportSource `json:"import,omitempty"`
	Volume    string        `json:"volume,omitempty"`
	Media     string        `json:"media,omitempty"`
	Bus       string        `json:"bus,omitempty"`
	Shareable bool          `json:"shareable,omitempty"`
	// IOErrorPolicy overrides the VM's for this disk (stop, report or
	// ignore; "" takes the VM's). Not for cdroms, which report read errors
	// to the guest.
	IOErrorPolicy string `json:"ioErrorPolicy,omitempty"`
	// Limits throttle the disk in QEMU (block_set_io_throttle): applied at
	// start and changed live on a running VM.
	Limits *DiskLimits `json:"limits,omitempty"`
}

// DiskLimits are a disk's I/O limits (0: none). A total (IOPS, BPS) and
// its read/write split exclude each other; the Max fields are bursts
// (at least the base); disks of one VM with the same Group share one
// throttle group's limits.
type DiskLimits struct {
	IOPS      int64  `json:"iops,omitempty"`
	IOPSRead  int64  `json:"iopsRead,omitempty"`
	IOPSWrite int64  `json:"iopsWrite,omitempty"`
	BPS       int64  `json:"bps,omitempty"`
	BPSRead   int64  `json:"bpsRead,omitempty"`
	BPSWrite  int64  `json:"bpsWrite,omitempty"`
	IOPSMax   int64  `json:"iopsMax,omitempty"`
	BPSMax    int64  `json:"bpsMax,omitempty"`
	Group     string `json:"group,omitempty"`
}

// CloneSource is a pool volume ("pool/name") a new disk is made from: a full
// copy, or with Linked a qcow2 overlay on it.
type CloneSource struct {
	Volume string `json:"volume"`
	Linked bool   `json:"linked,omitempty"`
}

// ImportSource is a foreign disk (VMDK, VHD, VHDX, qcow2, raw, or a disk
// inside an OVA at Offset/Size) converted to qcow2 on create.
type ImportSource struct {
	Path   string `json:"path"`
	Format string `json:"format"`
	Offset int64  `json:"offset,omitempty"`
	Size   int64  `json:"size,omitempty"`
	// Base is the disk this one is a delta of (an OVF ovf:parentRef): the
	// new volume holds the chain flattened.
	Base *ImportSource `json:"base,omitempty"`
	// Chunks continue the file at Path/Offset/Size, in order (an OVF file
	// stored in chunks, ovf:chunkSize): the disk file is their bytes joined.
	Chunks []ImportChunk `json:"chunks,omitempty"`
	// Compression is "gzip" for a gzip-compressed file (OVF
	// ovf:compression); it is decompressed before it is converted, and may
	// hold a disk of at most Capacity bytes (the OVF's ovf:capacity).
	Compression string `json:"compression,omitempty"`
	Capacity    int64  `json:"capacity,omitempty"`
	// Extents are the ranges the extents of the VMDK descriptor at
	// Path/Offset/Size read, in its order (members of an OVA, when one is
	// SPARSE); they are written out beside the volume to be converted.
	Extents []ImportChunk `json:"extents,omitempty"`
}

// ImportChunk is a byte range of a file (a whole file, or a member of an
// OVA at Offset/Size).
type ImportChunk struct {
	Path   string `json:"path"`
	Offset int64  `json:"offset,omitempty"`
	Size   int64  `json:"size"`
}

// NIC is one network interface.
type NIC struct {
	Mode     string    `json:"mode"`
	Bridge   string    `json:"bridge,omitempty"`
	MAC      string    `json:"mac,omitempty"`
	Forwards []Forward `json:"forwards,omitempty"`
	// Limits cap the NIC's bandwidth (bridge NICs only: tc on the tap
	// Hangar made for it).
	Limits *NICLimits `json:"limits,omitempty"`
}

// NICLimits are a NIC's bandwidth limits in megabits per second (10^6
// bit/s; 0: none), as the guest sees them: Mbps caps both directions,
// RxMbps (what the guest receives) and TxMbps (what it sends) one each and
// take precedence over Mbps.
type NICLimits struct {
	Mbps   float64 `json:"mbps,omitempty"`
	RxMbps float64 `json:"rxMbps,omitempty"`
	TxMbps float64 `json:"txMbps,omitempty"`
}

// Rx is the limit on what the guest receives (0: none).
func (l *NICLimits) Rx() float64 { return l.or(func(l *NICLimits) float64 { return l.RxMbps }) }

// Tx is the limit on what the guest sends (0: none).
func (l *NICLimits) Tx() float64 { return l.or(func(l *NICLimits) float64 { return l.TxMbps }) }

// or is one direction's own limit, else Mbps.
func (l *NICLimits) or(dir func(*NICLimits) float64) float64 {
	switch {
	case l == nil:
		return 0
	case dir(l) > 0:
		return dir(l)
	default:
		return l.Mbps
	}
}

// Forward is a host port forwarded to a guest port (user-mode NICs only).
// The host side is bound to 127.0.0.1.
type Forward struct {
	HostPort  int    `json:"hostPort"`
	GuestPort int    `json:"guestPort"`
	Protocol  string `json:"protocol,omitempty"`
}

// VMStatus is what the host agent observed.
type VMStatus struct {
	State       string       `json:"state"`
	Host        string       `json:"host,omitempty"`
	PID         int          `json:"pid,omitempty"`
	StartedAt   *time.Time   `json:"startedAt,omitempty"`
	Accelerator string       `json:"accelerator,omitempty"`
	UID         int          `json:"uid,omitempty"` // the unprivileged uid (= gid) its QEMU runs as
	Restarts    int          `json:"restarts,omitempty"`
	Reason      string       `json:"reason,omitempty"`
	Disks       []DiskStatus `json:"disks,omitempty"`
	// Snapshots of the running disk chain, oldest first.
	Snapshots []Snapshot `json:"snapshots,omitempty"`
	// StateFile holds RAM and device state while the VM is suspended.
	StateFile string `json:"stateFile,omitempty"`
	// IOErrors are the storage errors QEMU met on the VM's disks, one
	// record per disk, kept across restarts of QEMU and of the agent.
	IOErrors  []DiskIOError `json:"ioErrors,omitempty"`
	UpdatedAt time.Time     `json:"updatedAt"`
}

// DiskIOError sums the storage errors of one disk (QMP BLOCK_IO_ERROR
// events): the last one, how many, and how often they paused the VM.
type DiskIOError struct {
	Disk string `json:"disk"`
	// Action QEMU took on the last error: stop, report or ignore.
	Action string `json:"action"`
	// Operation of the last error: read or write.
	Operation string `json:"operation"`
	// NoSpace: the last error was ENOSPC (the storage is full).
	NoSpace bool `json:"noSpace,omitempty"`
	// Message is the host's error text ("No space left on device").
	Message string `json:"message,omitempty"`
	// Count of errors recorded (a burst of errors reported to the guest
	// is counted, not written one by one).
	Count int64 `json:"count"`
	// Pauses: how many times an error of this disk paused the VM.
	Pauses int64     `json:"pauses,omitempty"`
	Last   time.Time `json:"last"`
	// Resumed is when Hangar (or a user) last resumed the VM after a pause
	// of this disk.
	Resumed *time.Time `json:"resumed,omitempty"`
}

// DiskStatus is a disk's volume as created on the host.
type DiskStatus struct {
	Name string `json:"name"`
	// Pool and Volume name the volume that holds the disk, the same from
	// every host ("local-h1", "vms/web/disk0.qcow2"); empty for a file
	// outside the pools (a cdrom's medium from an import directory).
	Pool   string `json:"pool,omitempty"`
	Volume string `json:"volume,omitempty"`
	// Path is the file on the VM's host.
	Path    string `json:"path"`
	Format  string `json:"format"`
	Backing string `json:"backing,omitempty"`
	Created bool   `json:"created"`
	// Top is the file QEMU writes now: Path, or the newest snapshot overlay.
	Top  string `json:"top,omitempty"`
	Node string `json:"node,omitempty"`
}

// Host describes one host of the pool.
type Host struct {
	Name               string    `json:"name"`
	Arch               string    `json:"arch"`
	Kernel             string    `json:"kernel"`
	CPUs               int       `json:"cpus"`
	CPUModel           string    `json:"cpuModel"`
	MemoryMiB          int       `json:"memoryMiB"`
	AllocatedMemoryMiB int       `json:"allocatedMemoryMiB"`
	Accelerator        string    `json:"accelerator"`
	QEMUVersion        string    `json:"qemuVersion"`
	VMs                int       `json:"vms"`
	Alive              bool      `json:"alive"`
	UpdatedAt          time.Time `json:"updatedAt"`
	// Address is where other hosts and remote clients reach this host's
	// TLS API (host:port of serve --listen); "" for a host without one.
	Address string `json:"address,omitempty"`
	// Role in the manager: "member" (an etcd member), "learner", "client"
	// (reaches the members' etcd), "external" (an external etcd cluster).
	Role string `json:"role,omitempty"`
	// Maintenance: the host takes no new VMs (evacuated or being evacuated).
	Maintenance bool `json:"maintenance,omitempty"`

	// Capacity, computed by the API when it answers (the agent publishes
	// the facts above, Storage and UsableCPUModels; the rest is counted
	// from the records at that moment).

	// State is alive, down (no lease), maintenance, or — for a host
	// without a lease, as the pool master judges it — suspect, isolated or
	// dead.
	State string `json:"state,omitempty"`
	// Liveness is the pool master's judgement of a host without a lease
	// (suspect, isolated, dead) and LivenessWhy its reason; "" while the
	// lease is held.
	Liveness    string `json:"liveness,omitempty"`
	LivenessWhy string `json:"livenessWhy,omitempty"`
	// AllocatedCPUs are the vCPUs booked on the host (the pool master's
	// allocation records; before it writes any, the VMs placed there that
	// are not stopped), like AllocatedMemoryMiB.
	AllocatedCPUs int `json:"allocatedCPUs"`
	// CPUOvercommit and MemoryOvercommit are the admission ratios: the host
	// takes vCPUs up to CPUs×CPUOvercommit and memory up to
	// MemoryMiB×MemoryOvercommit.
	CPUOvercommit    float64 `json:"cpuOvercommit,omitempty"`
	MemoryOvercommit float64 `json:"memoryOvercommit,omitempty"`
	// FreeCPUs and FreeMemoryMiB are what is left under those ratios (0
	// when booked past them).
	FreeCPUs      int `json:"freeCPUs"`
	FreeMemoryMiB int `json:"freeMemoryMiB"`
	// VMStates counts the VMs placed on the host by observed state.
	VMStates map[string]int `json:"vmStates,omitempty"`
	// Storage is each storage pool's file system as the host sees it: the
	// pools it reaches.
	Storage []StorageUsage `json:"storage,omitempty"`
	// StorageRevision is the etcd revision of the storage pool records
	// Storage answers for: a pool recorded or changed after it is not
	// known to the host yet (placement takes it as reached).
	StorageRevision int64 `json:"storageRevision,omitempty"`
	// UsableCPUModels are the named QEMU CPU models this host runs with its
	// accelerator (QMP query-cpu-definitions, no unavailable features);
	// probed under KVM only (TCG hosts use a fixed model).
	UsableCPUModels []string `json:"usableCPUModels,omitempty"`
}

// Host states (Host.State).
const (
	HostAlive       = "alive"
	HostDown        = "down"
	HostMaintenance = "maintenance"
	// The pool master's judgement of a host whose lease expired (HA,
	// docs/architecture.md "High availability"): suspect (waiting to be
	// sure), isolated (lost management only: its storage heartbeat moves,
	// its VMs keep running there) or dead (its HA VMs restart elsewhere).
	HostSuspect  = "suspect"
	HostIsolated = "isolated"
	HostDead     = "dead"
)

// StorageUsage is the file system of a storage pool's directory (statfs):
// size, used and free (available to unprivileged writers) bytes.
type StorageUsage struct {
	Pool       string `json:"pool"`
	Type       string `json:"type"`
	TotalBytes int64  `json:"totalBytes"`
	UsedBytes  int64  `json:"usedBytes"`
	FreeBytes  int64  `json:"freeBytes"`
}

// Capacity is the pool's capacity overview (GET /api/v1/capacity,
// `hangar host list -o json`): every host and the pool's totals.
type Capacity struct {
	Pool  PoolCapacity `json:"pool"`
	Hosts []Host       `json:"hosts"`
}

// PoolCapacity sums the pool's hosts. CPUs, MemoryMiB and the allocated
// figures count every host; the free figures count only the hosts that
// take new VMs (alive, not in maintenance).
type PoolCapacity struct {
	Hosts            int `json:"hosts"`
	HostsAlive       int `json:"hostsAlive"`
	HostsDown        int `json:"hostsDown"`
	HostsMaintenance int `json:"hostsMaintenance"`

	CPUs               int     `json:"cpus"`
	AllocatedCPUs      int     `json:"allocatedCPUs"`
	FreeCPUs           int     `json:"freeCPUs"`
	MemoryMiB          int     `json:"memoryMiB"`
	AllocatedMemoryMiB int     `json:"allocatedMemoryMiB"`
	FreeMemoryMiB      int     `json:"freeMemoryMiB"`
	CPUOvercommit      float64 `json:"cpuOvercommit"`
	MemoryOvercommit   float64 `json:"memoryOvercommit"`
	// CPUModel is the pool's CPU model: the default of a VM that names
	// none, one every host runs, so any VM starts and migrates anywhere.
	CPUModel string `json:"cpuModel"`
	// VMStates counts every VM by observed state.
	VMStates map[string]int `json:"vmStates"`
	// Storage per storage pool: a shared pool once (as its hosts see it),
	// a host-local (dir) pool summed over the hosts that have it.
	Storage []StorageUsage `json:"storage"`
}

// Version is the server's build (GET /api/v1/version) and the QEMU of
// each host of its pool.
type Version struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"goVersion"`
	// QEMU per host, from the facts each host's agent reported.
	QEMU []HostQEMU `json:"qemu"`
}

// HostQEMU is the QEMU version and accelerator one host runs guests with.
type HostQEMU struct {
	Host        string `json:"host"`
	Version     string `json:"version"`
	Accelerator string `json:"accelerator"`
}

// Operation states.
const (
	OpPending   = "pending"
	OpRunning   = "running"
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
	OpCancelled = "cancelled"
)

// Operation is a long action, recorded before it starts.
type Operation struct {
	ID       string          `json:"id"`
	Kind     string          `json:"kind"`
	Target   string          `json:"target"`
	Host     string          `json:"host,omitempty"`
	State    string          `json:"state"`
	Progress Progress        `json:"progress"`
	Error    *Error          `json:"error,omitempty"`
	Args     json.RawMessage `json:"args,omitempty"`
	Created  time.Time       `json:"created"`
	Updated  time.Time       `json:"updated"`
	Attempts int             `json:"attempts,omitempty"`
	// HandOff: the host's part is done and the pool master finishes the
	// operation (it alone removes a VM's records: delete, template, a
	// failed create or clone).
	HandOff bool `json:"handOff,omitempty"`
	// Warnings say what the operation left out or changed (an import's
	// unmapped networks, unattached disks…).
	Warnings []string `json:"warnings,omitempty"`
	// Timings are when the agent's last attempt passed its phases (in
	// order; informational, for `hangar bench start`). They travel in the
	// record writes the operation makes anyway: recording them costs no
	// extra write.
	Timings []Timing `json:"timings,omitempty"`
}

// Timing is the moment an operation finished one of its phases.
type Timing struct {
	Phase string    `json:"phase"`
	At    time.Time `json:"at"`
}

// Done reports whether the operation reached a final state.
func (o Operation) Done() bool {
	return o.State == OpSucceeded || o.State == OpFailed || o.State == OpCancelled
}

// Progress of an operation: a fraction 0–1 and the phase it is in.
type Progress struct {
	Fraction float64 `json:"fraction"`
	Phase    string  `json:"phase,omitempty"`
	// Bytes of TotalBytes the phase has moved, for phases that copy data
	// (volume copy and flatten, template); 0 where not known.
	Bytes      int64 `json:"bytes,omitempty"`
	TotalBytes int64 `json:"totalBytes,omitempty"`
	// Migration is the live figures of a migrate operation.
	Migration *MigrationProgress `json:"migration,omitempty"`
}

// MigrationProgress is where a live migration is: the local disks copied
// to the target first, then RAM, resent while the guest dirties it.
type MigrationProgress struct {
	DiskTransferred int64 `json:"diskTransferred"`
	DiskTotal       int64 `json:"diskTotal"`
	RAMTransferred  int64 `json:"ramTransferred"`
	RAMRemaining    int64 `json:"ramRemaining"`
	RAMTotal        int64 `json:"ramTotal"`
	// DirtyRate is how fast the guest dirties RAM, bytes/s.
	DirtyRate int64 `json:"dirtyRate"`
	// ExpectedDowntimeMs is QEMU's estimate of the switch-over pause.
	ExpectedDowntimeMs int64 `json:"expectedDowntimeMs"`
	// Iterations: passes over dirty RAM so far.
	Iterations int64 `json:"iterations"`
	// CPUThrottlePercent: auto-converge's current vCPU throttle.
	CPUThrottlePercent int `json:"cpuThrottlePercent"`
	// DowntimeMs and TotalMs: measured, once the migration completed.
	DowntimeMs int64 `json:"downtimeMs,omitempty"`
	TotalMs    int64 `json:"totalMs,omitempty"`
}

// Error codes.
const (
	CodeInvalidArgument    = "invalid_argument"
	CodeNotFound           = "not_found"
	CodeConflict           = "conflict"
	CodeFailedPrecondition = "failed_precondition"
	CodeUnavailable        = "unavailable"
	CodeInternal           = "internal"
	// Codes of the HTTP layer: a request the API cannot take as sent.
	CodePermissionDenied     = "permission_denied"      // 403: e.g. a cross-site browser request
	CodeMethodNotAllowed     = "method_not_allowed"     // 405, with an Allow header
	CodeTooLarge             = "too_large"              // 413: the body is over the route's limit
	CodeUnsupportedMediaType = "unsupported_media_type" // 415: wrong or missing Content-Type
	CodeUnauthenticated      = "unauthenticated"        // 401: TCP request without an accepted certificate or token
	CodeTooManyRequests      = "too_many_requests"      // 429: logins locked after repeated failures (Retry-After)
)

// Error is the API's error body: {"error": {...}}.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

func (e *Error) Error() string {
	if e.Field != "" && !startsWith(e.Message, e.Field) {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

func startsWith(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

// ErrorResponse wraps Error on the wire.
type ErrorResponse struct {
	Error *Error `json:"error"`
}

// StopArgs are the arguments of a stop operation.
type StopArgs struct {
	Force          bool `json:"force,omitempty"`
	TimeoutSeconds int  `json:"timeoutSeconds,omitempty"`
}

// LimitsArgs are the arguments of a "limits" operation that applies a
// live change (PATCH of a running VM's resources, disk or NIC limits): the
// VM's limits before and after it. When the host refuses or fails the
// change it hands the operation to the pool master, which writes Previous
// back over the spec — if the spec's limits are still Next: a change made
// since stands — and asks the host to apply them again, since a change
// refused half-way may have applied a part. A re-apply has no arguments.
type LimitsArgs struct {
	Previous VMLimits `json:"previous"`
	Next     VMLimits `json:"next"`
}

// VMLimits are a VM's resource controls: what a live change may change.
type VMLimits struct {
	Resources *Resources             `json:"resources,omitempty"`
	Disks     map[string]*DiskLimits `json:"disks,omitempty"` // by disk name, disks with limits
	NICs      []*NICLimits           `json:"nics,omitempty"`  // by index (null: none)
}

// MigrateArgs are the arguments of a migrate operation (POST
// /api/v1/vms/{name}/migrate): live migration of a running VM to host To,
// encrypted (TLS from the pool CA) unless Insecure.
type MigrateArgs struct {
	To       string `json:"to"`
	Insecure bool   `json:"insecure,omitempty"`
	// MaxBandwidth caps the migration stream, bytes/s (0: Hangar's default).
	MaxBandwidth int64 `json:"maxBandwidth,omitempty"`
	// DowntimeLimitMs is the longest pause allowed at switch-over (0: 300).
	DowntimeLimitMs int64 `json:"downtimeLimitMs,omitempty"`
	// ProgressTimeoutSec aborts a migration whose remaining data reaches no
	// new low for that long (0: Hangar's default, 150 s); the VM keeps
	// running on the source.
	ProgressTimeoutSec int64 `json:"progressTimeoutSec,omitempty"`
}

// EvacuateArgs are the arguments of an evacuation (POST
// /api/v1/hosts/{name}/evacuate): the host goes into maintenance and every
// running VM is live-migrated to the best other host; one that no host can
// take (or every one, with Shutdown) is shut down and parked.
type EvacuateArgs struct {
	// Shutdown parks every running VM instead of migrating it.
	Shutdown bool `json:"shutdown,omitempty"`
}

// MaintenanceArgs switch a host's maintenance mode (POST
// /api/v1/hosts/{name}/maintenance). Leaving it starts the VMs parked there.
type MaintenanceArgs struct {
	On bool `json:"on"`
}

// DeleteArgs are the arguments of a delete operation.
type DeleteArgs struct {
	Force bool `json:"force,omitempty"`
}

// CreateArgs are the arguments of a create operation.
type CreateArgs struct {
	Start bool `json:"start,omitempty"`
	// Host pins the placement: a deploy of a linked clone must land where
	// its template's volumes are. "" lets the pool master place the VM.
	Host string `json:"host,omitempty"`
}

// VMPatch changes settings of an existing VM (PATCH /api/v1/vms/{name});
// a field left out (or null) stays as it is. CPUs and memory change only
// while the VM is stopped (they apply at its next start); the restart
// policy, the HA settings and the I/O error policies change at any time.
type VMPatch struct {
	CPUs          *int     `json:"cpus,omitempty"`
	MemoryMiB     *int     `json:"memoryMiB,omitempty"`
	RestartPolicy *string  `json:"restartPolicy,omitempty"`
	HA            *HAPatch `json:"ha,omitempty"`
	// IOErrorPolicy changes the VM's I/O error policy at any time; it
	// applies from the VM's next start.
	IOErrorPolicy *string `json:"ioErrorPolicy,omitempty"`
	// Disks change settings of the named disks.
	Disks map[string]DiskPatch `json:"disks,omitempty"`
	// Resources change the VM's CPU and memory controls field by field;
	// a running VM's host applies them live (a "limits" operation).
	Resources *ResourcesPatch `json:"resources,omitempty"`
	// NICs change the bandwidth limits of NICs by their index ("0",
	// "1", …), live on a running VM.
	NICs map[string]NICPatch `json:"nics,omitempty"`
}

// NICPatch changes one NIC's bandwidth limits (VMPatch.NICs; 0: none).
type NICPatch struct {
	Mbps   *float64 `json:"mbps,omitempty"`
	RxMbps *float64 `json:"rxMbps,omitempty"`
	TxMbps *float64 `json:"txMbps,omitempty"`
}

// ResourcesPatch changes a VM's resource controls (0 restores a default).
type ResourcesPatch struct {
	CPUShares      *int     `json:"cpuShares,omitempty"`
	CPULimit       *float64 `json:"cpuLimit,omitempty"`
	MemoryLimitMiB *int     `json:"memoryLimitMiB,omitempty"`
	CPUPinning     *string  `json:"cpuPinning,omitempty"`
	BalloonMiB     *int     `json:"balloonMiB,omitempty"`
	Hugepages      *bool    `json:"hugepages,omitempty"`
}

// DiskPatch changes one disk's settings (VMPatch.Disks).
type DiskPatch struct {
	// IOErrorPolicy of the disk: stop, report, ignore, or "" to take the
	// VM's; applies from the VM's next start.
	IOErrorPolicy *string `json:"ioErrorPolicy,omitempty"`
	// IOPS and BPS set the disk's total limits (0: none), live on a
	// running VM.
	IOPS *int64 `json:"iops,omitempty"`
	BPS  *int64 `json:"bps,omitempty"`
}

// HAPatch changes a VM's HA settings field by field (a merge patch): a
// field left out stays as it is; on a VM without HA settings the others
// take their defaults.
type HAPatch struct {
	Enabled       *bool   `json:"enabled,omitempty"`
	Priority      *int    `json:"priority,omitempty"`
	RestartOrder  *int    `json:"restartOrder,omitempty"`
	MaxRestarts   *int    `json:"maxRestarts,omitempty"`
	RestartWindow *string `json:"restartWindow,omitempty"`
}

// PoolSettings are the pool's admission settings (GET and PUT
// /api/v1/pool/settings; `hangar pool settings`, `hangar pool set`). A host
// admits vCPUs up to its CPUs × CPUOvercommit and memory up to its memory ×
// MemoryOvercommit; placement, evacuation and migration refuse past them.
// Zero means the default (4 and 1). A change applies to what is placed next:
// VMs already booked past a lowered ratio stay where they are.
//
// HAFailures is how many hosts may fail at once with room left to restart
// all their HA VMs (N+1 admission control): starting an HA VM, or turning
// HA on for a running one, is refused when the HA VMs of that many of the
// largest hosts could not restart on the others. Left out: 1; 0 turns
// admission control off. A pool with no more live hosts than that has
// nowhere to keep the room and admits (its HA is best effort).
type PoolSettings struct {
	CPUOvercommit    float64 `json:"cpuOvercommit"`
	MemoryOvercommit float64 `json:"memoryOvercommit"`
	HAFailures       *int    `json:"haFailures,omitempty"`
	// ReserveCPUs and ReserveMemoryMiB are kept on every host for the
	// host itself (QEMU's I/O, hangar serve, the OS): the ratios apply to
	// the host's CPUs and memory less them. Default 0.
	ReserveCPUs      int `json:"reserveCPUs,omitempty"`
	ReserveMemoryMiB int `json:"reserveMemoryMiB,omitempty"`
}
