package migrate

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	v1 "hangar/api/v1"
	"hangar/internal/vm"
)

// Blocker is a reason a VM cannot be migrated, found before anything
// starts.
type Blocker struct {
	Field  string // the spec field at fault, e.g. "disks[1].image"
	Reason string
}

func (b Blocker) String() string { return b.Field + ": " + b.Reason }

// CheckInput is what the blocker checks look at.
type CheckInput struct {
	Spec   v1.VMSpec
	Status v1.VMStatus
	// Pools are the storage pools of the source host (by name); a disk or
	// ISO under a pool of type "shared" is reachable from the target.
	Pools []v1.StoragePool
	// Source is the host the owner record names; Target where to go.
	Source, Target string
	// TargetFreeMiB is the memory the target can still book (after its
	// overcommit policy); TargetAlive its liveness; TargetMaintenance
	// whether it is in maintenance.
	TargetFreeMiB     int64
	TargetAlive       bool
	TargetMaintenance bool
	// TargetPools are the storage pools the target reaches (nil: not
	// known, every shared pool is taken as reached).
	TargetPools map[string]bool
}

// Blockers lists everything that keeps in.Spec from migrating to
// in.Target. It is pure; the master calls it before the first step, so a
// blocked migration touches nothing.
func Blockers(in CheckInput) []Blocker {
	var bs []Blocker
	add := func(f, format string, a ...any) { bs = append(bs, Blocker{f, fmt.Sprintf(format, a...)}) }
	if in.Target == in.Source {
		add("to", "the vm already runs on %s", in.Target)
	}
	if !in.TargetAlive {
		add("to", "host %s is not alive", in.Target)
	}
	if in.TargetMaintenance {
		add("to", "host %s is in maintenance", in.Target)
	}
	if in.Status.State != v1.StateRunning && in.Status.State != v1.StatePaused {
		add("status.state", "only a running or paused vm migrates live (it is %s)", in.Status.State)
	}
	if in.TargetPools != nil {
		for _, p := range SharedPools(in.Spec, in.Status, in.Pools) {
			if !in.TargetPools[p] {
				add("to", "host %s does not reach shared storage pool %s (is it mounted there?)", in.Target, p)
			}
		}
	}
	if int64(in.Spec.MemoryMiB) > in.TargetFreeMiB {
		add("memoryMiB", "host %s has %d MiB free, the vm needs %d MiB", in.Target, in.TargetFreeMiB, in.Spec.MemoryMiB)
	}
	if in.Spec.CPUModel == "host" || in.Spec.CPUModel == "max" {
		// max is whatever this host's QEMU and accelerator offer: not a
		// stable model, so not one the two ends can be held to.
		add("cpuModel", "cpu model %s cannot migrate between hosts; use the pool's named model", in.Spec.CPUModel)
	}
	for i, d := range in.Spec.Disks {
		f := fmt.Sprintf("disks[%d]", i)
		if d.Media == "cdrom" {
			if d.Name == vm.CloudInitDisk || d.Image == "" {
				continue // the target writes the seed again from the spec; an empty drive has nothing
			}
			if !onShared(in.Pools, d.Image) {
				add(f+".image", "cdrom %s holds %s, a file of host %s only (eject it or put it on a shared pool)", d.Name, d.Image, in.Source)
			}
			continue
		}
		ds := diskStatus(in.Status, d.Name)
		if ds == nil {
			add(f, "disk %s has no volume yet", d.Name)
			continue
		}
		shared := diskOnShared(in.Pools, *ds)
		if d.Shareable && !shared {
			add(f+".shareable", "disk %s is shared with other vms on a local pool: it cannot be copied while they write it", d.Name)
		}
		if !shared && ds.Top != "" && ds.Top != ds.Path {
			add(f, "disk %s has snapshot overlays on a local pool: commit or discard its snapshots first", d.Name)
		}
	}
	return bs
}

func diskStatus(st v1.VMStatus, name string) *v1.DiskStatus {
	for i := range st.Disks {
		if st.Disks[i].Name == name {
			return &st.Disks[i]
		}
	}
	return nil
}

// diskOnShared says whether a disk's volume is on a pool of type shared,
// by the pool its status names (a file outside the pools is on none).
func diskOnShared(pools []v1.StoragePool, ds v1.DiskStatus) bool {
	for _, pl := range pools {
		if pl.Name == ds.Pool {
			return pl.Type == "shared"
		}
	}
	return false
}

// onShared says whether path lies inside a pool of type shared.
func onShared(pools []v1.StoragePool, path string) bool { return sharedPoolOf(pools, path) != "" }

// sharedPoolOf names the pool of type shared that path lies inside ("":
// none).
func sharedPoolOf(pools []v1.StoragePool, path string) string {
	if !filepath.IsAbs(path) {
		return ""
	}
	p := filepath.Clean(path)
	for _, pl := range pools {
		if pl.Type != "shared" || pl.Path == "" {
			continue
		}
		root := filepath.Clean(pl.Path)
		if strings.HasPrefix(p, root+string(filepath.Separator)) {
			return pl.Name
		}
	}
	return ""
}

// SharedPools names, sorted, the storage pools of type shared that a VM's
// disks use: every host that runs it must reach them. From the spec — a
// disk's volume and a linked clone's base by the pool their reference
// names, an image or an ISO by its path — and the status (each disk's
// pool, for a VM that has its disks).
func SharedPools(spec v1.VMSpec, st v1.VMStatus, pools []v1.StoragePool) []string {
	shared := map[string]bool{}
	for _, pl := range pools {
		if pl.Type == "shared" {
			shared[pl.Name] = true
		}
	}
	used := map[string]bool{}
	ref := func(r string) {
		if name, _, ok := strings.Cut(r, "/"); ok && shared[name] {
			used[name] = true
		}
	}
	for _, d := range spec.Disks {
		ref(d.Volume)
		if d.Clone != nil {
			ref(d.Clone.Volume)
		}
		if name := sharedPoolOf(pools, d.Image); name != "" {
			used[name] = true
		}
	}
	for _, ds := range st.Disks {
		if shared[ds.Pool] {
			used[ds.Pool] = true
		}
	}
	return slices.Sorted(maps.Keys(used))
}

// LocalDisks lists the disks of a VM that must be mirrored to the target
// (on a pool of the source host only), in spec order.
func LocalDisks(spec v1.VMSpec, st v1.VMStatus, pools []v1.StoragePool) []v1.DiskStatus {
	var out []v1.DiskStatus
	for _, d := range spec.Disks {
		if d.Media == "cdrom" {
			continue
		}
		if ds := diskStatus(st, d.Name); ds != nil && !diskOnShared(pools, *ds) {
			out = append(out, *ds)
		}
	}
	return out
}

// ReportBlockers compares the source agent's report of local disks with
// the disks the VM's records put on local pools: the target makes volumes
// from the report, so it must name each of them once and nothing else.
func ReportBlockers(local []v1.DiskStatus, reported []Disk) []Blocker {
	var bs []Blocker
	want := map[string]bool{}
	for _, d := range local {
		want[d.Name] = true
	}
	got := map[string]bool{}
	for _, d := range reported {
		got[d.Name] = true
		if !want[d.Name] {
			bs = append(bs, Blocker{"disks", fmt.Sprintf("the source reports disk %s on a local pool, the vm's status does not", d.Name)})
		}
	}
	for _, d := range local {
		if !got[d.Name] {
			bs = append(bs, Blocker{"disks", fmt.Sprintf("disk %s is on a local pool, the source did not report it", d.Name)})
		}
	}
	return bs
}
