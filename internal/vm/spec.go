// Package vm holds the pure rules about a VM spec: defaults, validation and
// the state machine of its power state. It does no I/O.
package vm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"

	v1 "hangar/api/v1"
)

// Limits.
const (
	MinMemoryMiB = 32
	MaxCPUs      = 255
	MaxDisks     = 16
	MaxTags      = 16
	MaxNICs      = 8
	MaxDiskMiB   = 64 << 20 // 64 TiB
	MaxDiskName  = 20
	// MaxPreferredHosts bounds VMSpec.PreferredHosts.
	MaxPreferredHosts = 32
)

// FieldError is a validation failure of one field.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// ErrInvalid is matched by every FieldError (errors.Is(err, vm.ErrInvalid)).
var ErrInvalid = errors.New("invalid argument")

func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateName checks that name is a DNS label (RFC 1123): it is used in
// paths, etcd keys and the guest's hostname.
func ValidateName(field, name string) error {
	if name == "" {
		return invalid(field, "is required")
	}
	if !dnsLabel.MatchString(name) {
		return invalid(field, "%q is not a DNS label (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit)", name)
	}
	return nil
}

// Machines and CPU models Hangar accepts.
var (
	machines  = map[string]bool{"q35": true, "pc": true}
	cpuModels = map[string]bool{"host": true, "max": true, "qemu64": true, "kvm64": true,
		"Nehalem": true, "Westmere": true, "SandyBridge": true, "IvyBridge": true, "Haswell": true,
		"Broadwell": true, "Skylake-Server": true, "Cascadelake-Server": true, "Icelake-Server": true,
		"EPYC": true, "EPYC-Rome": true, "EPYC-Milan": true}
	bootDevices = map[string]bool{"disk": true, "cdrom": true, "network": true}
	diskBuses   = map[string]bool{"virtio": true, "sata": true, "scsi": true}
)

// Defaults fills the fields a user may leave out. accel is "kvm" or "tcg":
// a CPU model still unset becomes "host" with KVM and "max" under TCG — for
// one process on one host (the benchmarks); the API sets the pool's CPU
// model first (qemu.PoolCPUModel), one every host runs, so a VM migrates.
func Defaults(s *v1.VMSpec, accel string) {
	if s.CPUs == 0 {
		s.CPUs = 1
	}
	if s.Machine == "" {
		s.Machine = "q35"
	}
	if s.CPUModel == "" {
		if accel == "kvm" {
			s.CPUModel = "host"
		} else {
			s.CPUModel = "max"
		}
	}
	if s.RestartPolicy == "" {
		s.RestartPolicy = v1.RestartOnFailure
	}
	if s.Power == "" {
		s.Power = v1.PowerStopped
	}
	if s.Placement == "" {
		s.Placement = v1.PlacementAuto
		if len(s.PreferredHosts) > 0 {
			s.Placement = v1.PlacementPreferred
		}
	}
	HADefaults(s.HA)
	if s.IOErrorPolicy == "" {
		s.IOErrorPolicy = v1.IOErrorStop
	}
	if s.CloudInit != nil {
		has := false
		for _, d := range s.Disks {
			has = has || d.Name == CloudInitDisk
		}
		if !has {
			s.Disks = append(s.Disks, v1.Disk{Name: CloudInitDisk, Media: "cdrom"})
		}
	}
	for i := range s.Disks {
		d := &s.Disks[i]
		if d.Name == "" {
			d.Name = fmt.Sprintf("disk%d", i)
		}
		if d.Media == "" {
			d.Media = "disk"
		}
		if d.Bus == "" {
			d.Bus = "virtio"
			if d.Media == "cdrom" {
				d.Bus = "sata"
			}
		}
	}
	for i := range s.NICs {
		n := &s.NICs[i]
		if n.Mode == "" {
			n.Mode = v1.NICUser
		}
		if n.MAC == "" {
			n.MAC = RandomMAC()
		}
		for j := range n.Forwards {
			if n.Forwards[j].Protocol == "" {
				n.Forwards[j].Protocol = "tcp"
			}
		}
	}
	if len(s.Boot) == 0 {
		s.Boot = []string{"disk", "cdrom", "network"}
	}
}

// CloudInitDisk is the cdrom that carries a VM's cloud-init seed.
const CloudInitDisk = "cidata"

// RandomMAC returns a locally administered unicast MAC in the 52:54:00 range QEMU uses.
func RandomMAC() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}

// Validate checks a spec after Defaults. hostMemoryMiB, when > 0, is the
// memory of the largest host the VM could run on.
func Validate(s v1.VMSpec, hostMemoryMiB int) error {
	if err := ValidateName("name", s.Name); err != nil {
		return err
	}
	if s.CPUs < 1 || s.CPUs > MaxCPUs {
		return invalid("cpus", "must be between 1 and %d, got %d", MaxCPUs, s.CPUs)
	}
	if s.MemoryMiB < MinMemoryMiB {
		return invalid("memoryMiB", "must be at least %d MiB, got %d", MinMemoryMiB, s.MemoryMiB)
	}
	if hostMemoryMiB > 0 && s.MemoryMiB > hostMemoryMiB {
		return invalid("memoryMiB", "%d MiB is more than the host's %d MiB", s.MemoryMiB, hostMemoryMiB)
	}
	if !machines[s.Machine] {
		return invalid("machine", "unknown machine type %q (q35 or pc)", s.Machine)
	}
	if !cpuModels[s.CPUModel] {
		return invalid("cpuModel", "unknown CPU model %q", s.CPUModel)
	}
	switch s.RestartPolicy {
	case v1.RestartAlways, v1.RestartOnFailure, v1.RestartNever:
	default:
		return invalid("restartPolicy", "must be always, on-failure or never, got %q", s.RestartPolicy)
	}
	switch s.Power {
	case v1.PowerRunning, v1.PowerStopped, v1.PowerPaused:
	default:
		return invalid("power", "must be running, stopped or paused, got %q", s.Power)
	}
	if err := validateResources(s); err != nil {
		return err
	}
	if s.IOErrorPolicy != "" { // empty: a record from before the setting (stop)
		if err := CheckIOErrorPolicy("ioErrorPolicy", s.IOErrorPolicy, false); err != nil {
			return err
		}
	}
	if len(s.Tags) > MaxTags {
		return invalid("tags", "at most %d tags", MaxTags)
	}
	for i, t := range s.Tags {
		f := fmt.Sprintf("tags[%d]", i)
		if err := ValidateName(f, t); err != nil {
			return err
		}
		if slices.Contains(s.Tags[:i], t) {
			return invalid(f, "tag %q given twice", t)
		}
	}
	if len(s.Disks) > MaxDisks {
		return invalid("disks", "at most %d disks", MaxDisks)
	}
	seen := map[string]bool{}
	for i, d := range s.Disks {
		f := fmt.Sprintf("disks[%d]", i)
		if err := ValidateName(f+".name", d.Name); err != nil {
			return err
		}
		if err := validateDiskLimits(f+".limits", d); err != nil {
			return err
		}
		if len(d.Name) > MaxDiskName {
			// QEMU node names ("drive-<disk>-s<N>") are limited to 31 bytes.
			return invalid(f+".name", "at most %d characters, got %q", MaxDiskName, d.Name)
		}
		if seen[d.Name] {
			return invalid(f+".name", "duplicate disk name %q", d.Name)
		}
		seen[d.Name] = true
		if !diskBuses[d.Bus] {
			return invalid(f+".bus", "must be virtio, sata or scsi, got %q", d.Bus)
		}
		if d.SizeMiB < 0 || d.SizeMiB > MaxDiskMiB {
			return invalid(f+".sizeMiB", "must be between 1 and %d MiB, got %d", MaxDiskMiB, d.SizeMiB)
		}
		if d.Image != "" && (strings.ContainsRune(d.Image, 0) || !strings.HasPrefix(d.Image, "/")) {
			return invalid(f+".image", "must be an absolute path, got %q", d.Image)
		}
		if err := validateSource(f, d); err != nil {
			return err
		}
		if err := CheckIOErrorPolicy(f+".ioErrorPolicy", d.IOErrorPolicy, true); err != nil {
			return err
		}
		if d.Media == "cdrom" && d.IOErrorPolicy != "" {
			return invalid(f+".ioErrorPolicy", "a cdrom reports read errors to the guest; the policy is for disks")
		}
	}
	if s.CloudInit != nil && len(s.CloudInit.UserData)+len(s.CloudInit.MetaData) > 64<<10 {
		return invalid("cloudInit", "at most 64 KiB of seed data")
	}
	if s.CloudInit != nil && len(s.CloudInit.UserDataSealed) > 96<<10 { // 64 KiB sealed and in base64
		return invalid("cloudInit.userDataSealed", "at most 96 KiB")
	}
	if len(s.NICs) > MaxNICs {
		return invalid("nics", "at most %d NICs", MaxNICs)
	}
	hostPorts := map[string]bool{}
	for i, n := range s.NICs {
		f := fmt.Sprintf("nics[%d]", i)
		hw, err := net.ParseMAC(n.MAC)
		if err != nil || len(n.MAC) != 17 {
			return invalid(f+".mac", "%q is not a MAC address", n.MAC)
		}
		if hw[0]&1 != 0 {
			return invalid(f+".mac", "%s is a multicast address; a NIC needs a unicast one (like 52:54:00:12:34:56)", n.MAC)
		}
		if hw.String() == "00:00:00:00:00:00" {
			return invalid(f+".mac", "00:00:00:00:00:00 is not a usable address")
		}
		switch n.Mode {
		case v1.NICUser:
			if n.Bridge != "" {
				return invalid(f+".bridge", "only for mode bridge")
			}
		case v1.NICBridge:
			if !validIfName(n.Bridge) {
				return invalid(f+".bridge", "%q is not an interface name", n.Bridge)
			}
			if len(n.Forwards) > 0 {
				return invalid(f+".forwards", "port forwards need mode user")
			}
		default:
			return invalid(f+".mode", "must be user or bridge, got %q", n.Mode)
		}
		if err := validateNICLimits(f+".limits", n); err != nil {
			return err
		}
		for j, fw := range n.Forwards {
			ff := fmt.Sprintf("%s.forwards[%d]", f, j)
			if fw.HostPort < 1 || fw.HostPort > 65535 {
				return invalid(ff+".hostPort", "must be 1-65535, got %d", fw.HostPort)
			}
			if fw.GuestPort < 1 || fw.GuestPort > 65535 {
				return invalid(ff+".guestPort", "must be 1-65535, got %d", fw.GuestPort)
			}
			if fw.Protocol != "tcp" && fw.Protocol != "udp" {
				return invalid(ff+".protocol", "must be tcp or udp, got %q", fw.Protocol)
			}
			k := fmt.Sprintf("%s/%d", fw.Protocol, fw.HostPort)
			if hostPorts[k] {
				return invalid(ff+".hostPort", "host port %d is forwarded twice", fw.HostPort)
			}
			hostPorts[k] = true
		}
	}
	for i, b := range s.Boot {
		if !bootDevices[b] {
			return invalid(fmt.Sprintf("boot[%d]", i), "must be disk, cdrom or network, got %q", b)
		}
	}
	if err := validatePlacement(s); err != nil {
		return err
	}
	return ValidateHA(s.HA)
}

// validatePlacement checks placement, preferredHosts and
// antiAffinityGroup. An empty placement (a record from before these
// fields) means auto, or preferred when hosts are listed.
func validatePlacement(s v1.VMSpec) error {
	if len(s.PreferredHosts) > MaxPreferredHosts {
		return invalid("preferredHosts", "at most %d hosts, got %d", MaxPreferredHosts, len(s.PreferredHosts))
	}
	seen := make(map[string]bool, len(s.PreferredHosts))
	for i, h := range s.PreferredHosts {
		f := fmt.Sprintf("preferredHosts[%d]", i)
		if err := ValidateName(f, h); err != nil {
			return err
		}
		if seen[h] {
			return invalid(f, "host %q is listed twice", h)
		}
		seen[h] = true
	}
	switch s.Placement {
	case "":
	case v1.PlacementAuto:
		if len(s.PreferredHosts) > 0 {
			return invalid("placement", "auto takes no preferredHosts (use preferred, or manual to allow only them)")
		}
	case v1.PlacementPreferred, v1.PlacementManual:
		if len(s.PreferredHosts) == 0 {
			return invalid("preferredHosts", "placement %s needs at least one host", s.Placement)
		}
	default:
		return invalid("placement", "must be auto, preferred or manual, got %q", s.Placement)
	}
	if s.AntiAffinityGroup != "" {
		if err := ValidateName("antiAffinityGroup", s.AntiAffinityGroup); err != nil {
			return err
		}
	}
	return nil
}

var ifName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

func validIfName(s string) bool { return ifName.MatchString(s) && s != "." && s != ".." }

// HostPorts lists the host ports a spec forwards, as "tcp/8080".
func HostPorts(s v1.VMSpec) []string {
	var out []string
	for _, n := range s.NICs {
		for _, f := range n.Forwards {
			out = append(out, fmt.Sprintf("%s/%d", f.Protocol, f.HostPort))
		}
	}
	return out
}

var importFormats = map[string]bool{"vmdk": true, "vpc": true, "vhdx": true, "qcow2": true, "raw": true}

// validateSource checks that a disk says where its data comes from exactly once.
func validateSource(f string, d v1.Disk) error {
	switch d.Media {
	case "cdrom":
		if d.SizeMiB != 0 || d.Clone != nil || d.Import != nil || d.Volume != "" || d.Shareable {
			return invalid(f, "a cdrom takes only an ISO image")
		}
		if d.Bus != "sata" {
			return invalid(f+".bus", "a cdrom is on bus sata, got %q", d.Bus)
		}
		return nil
	case "disk":
	default:
		return invalid(f+".media", "must be disk or cdrom, got %q", d.Media)
	}
	n := 0
	for _, set := range []bool{d.Image != "", d.Clone != nil, d.Import != nil, d.Volume != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return invalid(f, "give only one of image, clone, import and volume")
	}
	if n == 0 && d.SizeMiB == 0 {
		return invalid(f+".sizeMiB", "a new disk needs a size (or give an image, clone, import or volume)")
	}
	if d.Volume != "" {
		if err := ValidateVolumeRef(f+".volume", d.Volume); err != nil {
			return err
		}
		if d.SizeMiB != 0 {
			return invalid(f+".sizeMiB", "an attached volume keeps its size")
		}
	}
	if d.Shareable && d.Volume == "" {
		return invalid(f+".shareable", "only an attached raw volume can be shared")
	}
	if d.Clone != nil {
		if err := ValidateVolumeRef(f+".clone.volume", d.Clone.Volume); err != nil {
			return err
		}
	}
	fi := f + ".import"
	for i, src := 0, d.Import; src != nil; i, src, fi = i+1, src.Base, fi+".base" {
		if i == MaxImportChain {
			return invalid(f+".import", "a chain of more than %d delta disks", MaxImportChain)
		}
		if !strings.HasPrefix(src.Path, "/") || strings.ContainsRune(src.Path, 0) {
			return invalid(fi+".path", "must be an absolute path, got %q", src.Path)
		}
		if !importFormats[src.Format] {
			return invalid(fi+".format", "must be vmdk, vpc, vhdx, qcow2 or raw, got %q", src.Format)
		}
		if src.Offset < 0 || src.Size < 0 {
			return invalid(fi, "offset and size must not be negative")
		}
	}
	return nil
}

// MaxImportChain is the longest chain of an import (a delta disk and the
// disks it builds on).
const MaxImportChain = 8

// ValidateVolumeRef checks "pool/relative/name.qcow2": a pool name, then a
// relative path without "..", empty or hidden elements.
func ValidateVolumeRef(field, ref string) error {
	pool, name, ok := strings.Cut(ref, "/")
	if !ok || name == "" {
		return invalid(field, "%q is not POOL/VOLUME", ref)
	}
	if err := ValidateName(field, pool); err != nil {
		return invalid(field, "pool %q is not a DNS label", pool)
	}
	for _, e := range strings.Split(name, "/") {
		if e == "" || e == "." || e == ".." || strings.HasPrefix(e, ".") || strings.ContainsRune(e, 0) {
			return invalid(field, "%q is not a volume name inside pool %s", name, pool)
		}
	}
	return nil
}
