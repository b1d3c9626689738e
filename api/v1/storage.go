package v1

import "time"

// StoragePool is a place volumes live: a local directory ("dir") or a
// directory every host of the pool mounts ("shared"). Every host has its
// own dir pool, local-<host> (Host names it); pools added through the API
// are recorded for every host.
type StoragePool struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Path is the directory, as the host that answers sees it ("" for
	// another host's own pool).
	Path string `json:"path,omitempty"`
	// Host is the host whose own pool this is (set by the server).
	Host string `json:"host,omitempty"`
}

// Volume is a disk image in a pool.
type Volume struct {
	Pool        string   `json:"pool"`
	Name        string   `json:"name"`
	Format      string   `json:"format"`
	VirtualSize int64    `json:"virtualSize"`
	ActualSize  int64    `json:"actualSize"`
	Backing     string   `json:"backing,omitempty"`
	ChainDepth  int      `json:"chainDepth"`
	UsedBy      []string `json:"usedBy,omitempty"`
}

// Template is a read-only VM image that VMs are deployed from.
type Template struct {
	Name      string    `json:"name"`
	Host      string    `json:"host"`
	Pool      string    `json:"pool"`
	CPUs      int       `json:"cpus"`
	MemoryMiB int       `json:"memoryMiB"`
	Machine   string    `json:"machine,omitempty"`
	Disks     []Disk    `json:"disks"` // Volume set to the template's read-only volumes
	NICs      []NIC     `json:"nics,omitempty"`
	Source    string    `json:"source,omitempty"` // the VM it was made from
	Created   time.Time `json:"created"`
}

// Snapshot is a point in time of all of a VM's disks (and, with Memory,
// of its RAM and devices).
type Snapshot struct {
	Name      string    `json:"name"`
	Created   time.Time `json:"created"`
	Memory    bool      `json:"memory"`
	StateFile string    `json:"stateFile,omitempty"`
	// Overlays per disk: the files written after this point.
	Overlays map[string]string `json:"overlays"`
	// Bases per disk: the files that hold the disk as it was at this point.
	Bases map[string]string `json:"bases"`
}

// SnapshotArgs create a snapshot.
type SnapshotArgs struct {
	Name   string `json:"name"`
	Memory bool   `json:"memory,omitempty"`
}

// SnapshotActionArgs name a snapshot to revert to or delete.
type SnapshotActionArgs struct {
	Name string `json:"name"`
}

// TemplateArgs turn a stopped VM into a template.
type TemplateArgs struct {
	Template string `json:"template"`
}

// DeployArgs deploy a VM from a template.
type DeployArgs struct {
	Name     string    `json:"name"`
	Linked   bool      `json:"linked,omitempty"`
	Start    bool      `json:"start,omitempty"`
	Forwards []Forward `json:"forwards,omitempty"`
}

// CloneArgs clone a VM (running or not) into a new VM.
type CloneArgs struct {
	Name string `json:"name"`
	// Forwards for the clone's user-mode NIC (the source's would clash).
	Forwards []Forward `json:"forwards,omitempty"`
}

// ImportArgs import a foreign VM or disk.
type ImportArgs struct {
	Path      string `json:"path"`
	Name      string `json:"name,omitempty"`
	CPUs      int    `json:"cpus,omitempty"`
	MemoryMiB int    `json:"memoryMiB,omitempty"`
	Start     bool   `json:"start,omitempty"`
	// Forwards for the (first) user-mode NIC of the imported VM.
	Forwards []Forward `json:"forwards,omitempty"`
	// Networks map an OVF network name to a host bridge ("user" for a
	// user-mode NIC); the NICs of an unmapped network are user-mode NICs,
	// with a warning.
	Networks map[string]string `json:"networks,omitempty"`
	// DeploymentOption is the OVF DeploymentOptionSection configuration
	// to import ("" for the appliance's default).
	DeploymentOption string `json:"deploymentOption,omitempty"`
	// VM is the one VirtualSystem (ovf:id or Name) of a multi-VM vApp to
	// import; without it every VM of the vApp is created (one transaction),
	// named VAPP-VM (Name, when given, in place of VAPP), and CPUs,
	// MemoryMiB and Forwards, which belong to one VM, are refused.
	VM string `json:"vm,omitempty"`
}

// MediaArgs insert (Image set) or eject (Image empty) a cdrom's medium.
type MediaArgs struct {
	Disk  string `json:"disk"`
	Image string `json:"image,omitempty"`
}

// VolumeCreateArgs create an empty volume.
type VolumeCreateArgs struct {
	Name    string `json:"name"`
	Format  string `json:"format,omitempty"`
	SizeMiB int64  `json:"sizeMiB"`
}

// ResizeArgs grow a volume or a VM's disk.
type ResizeArgs struct {
	Disk    string `json:"disk,omitempty"`
	SizeMiB int64  `json:"sizeMiB"`
}

// VolumeCopyArgs copy a volume into a new standalone one (a full clone or
// a format conversion) in the same pool.
type VolumeCopyArgs struct {
	Pool   string `json:"pool,omitempty"`   // set by the API from the path
	Source string `json:"source,omitempty"` // set by the API from the path
	Name   string `json:"name"`
	Format string `json:"format,omitempty"`
}
