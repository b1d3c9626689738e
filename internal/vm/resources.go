package vm

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	v1 "hangar/api/v1"
)

// Bounds of a VM's resource controls.
const (
	MinCPUShares = 2
	MaxCPUShares = 262144
	MinCPULimit  = 0.01
	// MinNICMbps and MaxNICMbps bound a NIC's bandwidth limits.
	MinNICMbps = 0.1
	MaxNICMbps = 100000
	// MinBalloonMiB bounds a balloon target from below: a guest squeezed
	// further stops answering.
	MinBalloonMiB = 32
)

// validateResources checks s.Resources; nil is valid (defaults).
func validateResources(s v1.VMSpec) error {
	r := s.Resources
	if r == nil {
		return nil
	}
	if r.CPUShares != 0 && (r.CPUShares < MinCPUShares || r.CPUShares > MaxCPUShares) {
		return invalid("resources.cpuShares", "must be between %d and %d, got %d", MinCPUShares, MaxCPUShares, r.CPUShares)
	}
	if math.IsNaN(r.CPULimit) || r.CPULimit < 0 || (r.CPULimit > 0 && r.CPULimit < MinCPULimit) {
		return invalid("resources.cpuLimit", "must be 0 (no cap) or at least %g CPU, got %g", MinCPULimit, r.CPULimit)
	}
	if r.CPULimit > float64(MaxCPUs) {
		return invalid("resources.cpuLimit", "must be at most %d CPUs, got %g", MaxCPUs, r.CPULimit)
	}
	if r.MemoryLimitMiB < 0 {
		return invalid("resources.memoryLimitMiB", "must not be negative, got %d", r.MemoryLimitMiB)
	}
	if _, err := CPUPinning(s); err != nil {
		return invalid("resources.cpuPinning", "%v", err)
	}
	if r.BalloonMiB != 0 && (r.BalloonMiB < MinBalloonMiB || r.BalloonMiB > s.MemoryMiB) {
		return invalid("resources.balloonMiB", "must be 0 (no balloon) or between %d MiB and the guest's memory (%d MiB), got %d", MinBalloonMiB, s.MemoryMiB, r.BalloonMiB)
	}
	if r.MemoryLimitMiB > 0 && r.MemoryLimitMiB < s.MemoryMiB {
		return invalid("resources.memoryLimitMiB", "%d MiB is less than the guest's memory (%d MiB): the guest would be killed when it uses its RAM", r.MemoryLimitMiB, s.MemoryMiB)
	}
	return nil
}

// MaxHostCPU bounds the host CPU numbers a pinning names.
const MaxHostCPU = 4095

// CPUPinning is s's vCPU pinning: for each vCPU the host CPUs its thread
// may run on (nil: no pinning). The spec's string is one host CPU list
// per vCPU separated by ";" or one list for all of them; a list is
// comma-separated CPUs and ranges ("0-1,4").
func CPUPinning(s v1.VMSpec) ([][]int, error) {
	if s.Resources == nil || s.Resources.CPUPinning == "" {
		return nil, nil
	}
	parts := strings.Split(s.Resources.CPUPinning, ";")
	if len(parts) != 1 && len(parts) != s.CPUs {
		return nil, fmt.Errorf("%q has %d CPU lists; give one for all vCPUs or one per vCPU (%d)", s.Resources.CPUPinning, len(parts), s.CPUs)
	}
	out := make([][]int, s.CPUs)
	for i := range out {
		p := parts[min(i, len(parts)-1)]
		cpus, err := ParseCPUList(p)
		if err != nil {
			return nil, err
		}
		out[i] = cpus
	}
	return out, nil
}

// ParseCPUList parses a host CPU list like "0-2,5" into its CPUs, in
// order and without repeats.
func ParseCPUList(s string) ([]int, error) {
	seen := map[int]bool{}
	var out []int
	for _, item := range strings.Split(strings.TrimSpace(s), ",") {
		lo, hi, isRange := strings.Cut(item, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a || b > MaxHostCPU {
			return nil, fmt.Errorf("%q is not a list of host CPUs like 0-1,4 (CPUs 0 to %d)", s, MaxHostCPU)
		}
		for c := a; c <= b; c++ {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	sort.Ints(out)
	return out, nil
}

// MemoryLimitMiB is the hard memory limit of s's QEMU: the spec's, or the
// guest's memory plus QEMU's overhead (256 MiB and an eighth of the guest's
// memory; under TCG also its translation cache, up to 1 GiB).
func MemoryLimitMiB(s v1.VMSpec, accel string) int {
	if s.Resources != nil && s.Resources.MemoryLimitMiB > 0 {
		return s.Resources.MemoryLimitMiB
	}
	limit := s.MemoryMiB + 256 + s.MemoryMiB/8
	if accel != "kvm" {
		limit += 1024
	}
	return limit
}

// validateDiskLimits checks a disk's throttling as QEMU would, naming the
// field.
func validateDiskLimits(f string, d v1.Disk) error {
	l := d.Limits
	if l == nil {
		return nil
	}
	if d.Media == "cdrom" {
		return invalid(f, "%s is a cdrom: limits are for disks", d.Name)
	}
	for _, v := range []struct {
		name string
		n    int64
	}{{"iops", l.IOPS}, {"iopsRead", l.IOPSRead}, {"iopsWrite", l.IOPSWrite}, {"bps", l.BPS}, {"bpsRead", l.BPSRead}, {"bpsWrite", l.BPSWrite}, {"iopsMax", l.IOPSMax}, {"bpsMax", l.BPSMax}} {
		if v.n < 0 || v.n > 1e15 {
			return invalid(f+"."+v.name, "must be between 0 and 1e15, got %d", v.n)
		}
	}
	if l.IOPS > 0 && (l.IOPSRead > 0 || l.IOPSWrite > 0) {
		return invalid(f+".iops", "a total and a read/write split exclude each other")
	}
	if l.BPS > 0 && (l.BPSRead > 0 || l.BPSWrite > 0) {
		return invalid(f+".bps", "a total and a read/write split exclude each other")
	}
	if l.IOPSMax > 0 && l.IOPSMax < l.IOPS {
		return invalid(f+".iopsMax", "a burst (%d) below the base (%d)", l.IOPSMax, l.IOPS)
	}
	if l.IOPSMax > 0 && l.IOPS == 0 {
		return invalid(f+".iopsMax", "a burst needs iops")
	}
	if l.BPSMax > 0 && l.BPSMax < l.BPS {
		return invalid(f+".bpsMax", "a burst (%d) below the base (%d)", l.BPSMax, l.BPS)
	}
	if l.BPSMax > 0 && l.BPS == 0 {
		return invalid(f+".bpsMax", "a burst needs bps")
	}
	if l.Group != "" {
		if err := ValidateName(f+".group", l.Group); err != nil {
			return err
		}
	}
	return nil
}

// validateNICLimits checks a NIC's bandwidth limits, naming the field: only
// a bridge NIC has a tap of Hangar's on the host to shape; a user-mode
// NIC's packets leave through QEMU's own sockets.
func validateNICLimits(f string, n v1.NIC) error {
	l := n.Limits
	if l == nil {
		return nil
	}
	if n.Mode != v1.NICBridge {
		return invalid(f, "a %s-mode NIC has no tap on the host to shape: bandwidth limits need mode bridge", n.Mode)
	}
	for _, v := range []struct {
		name string
		mbps float64
	}{{"mbps", l.Mbps}, {"rxMbps", l.RxMbps}, {"txMbps", l.TxMbps}} {
		if math.IsNaN(v.mbps) || v.mbps < 0 || (v.mbps > 0 && v.mbps < MinNICMbps) || v.mbps > MaxNICMbps {
			return invalid(f+"."+v.name, "must be 0 (none) or between %g and %d Mbit/s, got %g", MinNICMbps, MaxNICMbps, v.mbps)
		}
	}
	return nil
}

// HugepagesProblem says why s's RAM cannot be backed by huge pages on a
// host with accelerator accel and, when known (pageKiB > 0), free huge
// pages of pageKiB each (/proc/meminfo's HugePages_Free, Hugepagesize);
// "" when it can or s does not ask. Under TCG every guest's RAM carries
// the 8 KiB pad of config.TCGRAMPadKiB (a QEMU 7.2 migration fix), which
// is no whole number of huge pages: huge pages are KVM's only.
func HugepagesProblem(s v1.VMSpec, host, accel string, free, pageKiB int64) string {
	if s.Resources == nil || !s.Resources.Hugepages {
		return ""
	}
	if accel != "kvm" {
		return fmt.Sprintf("host %s runs guests under %s, whose RAM carries an 8 KiB pad (a QEMU 7.2 migration fix) that is no whole number of huge pages: huge pages need KVM", host, accel)
	}
	if pageKiB <= 0 {
		return ""
	}
	need := int64(s.MemoryMiB) << 10
	if need%pageKiB != 0 {
		return fmt.Sprintf("memoryMiB %d is no whole number of host %s's huge pages of %d KiB", s.MemoryMiB, host, pageKiB)
	}
	if n := need / pageKiB; free < n {
		return fmt.Sprintf("host %s has %d free huge pages of %d KiB (HugePages_Free in /proc/meminfo), the guest needs %d: reserve them with vm.nr_hugepages", host, free, pageKiB, n)
	}
	return ""
}
