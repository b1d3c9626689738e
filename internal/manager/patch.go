package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/master"
	"hangar/internal/scheduler"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// offline are the observed states in which no QEMU runs for a VM and none
// is about to: settings of the machine itself (CPUs, memory) change only
// then.
var offline = []string{v1.StateStopped, v1.StateCrashed, v1.StateError}

// applyPatch applies p to spec and returns the fields it changed.
func applyPatch(spec *v1.VMSpec, p v1.VMPatch) []string {
	var changed []string
	if p.CPUs != nil && *p.CPUs != spec.CPUs {
		spec.CPUs = *p.CPUs
		changed = append(changed, "cpus")
	}
	if p.MemoryMiB != nil && *p.MemoryMiB != spec.MemoryMiB {
		spec.MemoryMiB = *p.MemoryMiB
		changed = append(changed, "memoryMiB")
	}
	if p.RestartPolicy != nil && *p.RestartPolicy != spec.RestartPolicy {
		spec.RestartPolicy = *p.RestartPolicy
		changed = append(changed, "restartPolicy")
	}
	if p.HA != nil && applyHAPatch(spec, *p.HA) {
		changed = append(changed, "ha")
	}
	if p.IOErrorPolicy != nil && *p.IOErrorPolicy != spec.IOErrorPolicy {
		spec.IOErrorPolicy = *p.IOErrorPolicy
		changed = append(changed, "ioErrorPolicy")
	}
	if p.Resources != nil && applyResourcesPatch(spec, *p.Resources) {
		changed = append(changed, "resources")
	}
	for i := range spec.Disks {
		d := &spec.Disks[i]
		if dp, ok := p.Disks[d.Name]; ok && dp.IOErrorPolicy != nil && *dp.IOErrorPolicy != d.IOErrorPolicy {
			d.IOErrorPolicy = *dp.IOErrorPolicy
			changed = append(changed, fmt.Sprintf("disks[%d].ioErrorPolicy", i))
		}
		if dp, ok := p.Disks[d.Name]; ok && applyDiskLimitsPatch(d, dp) {
			changed = append(changed, fmt.Sprintf("disks[%d].limits", i))
		}
	}
	for i := range spec.NICs {
		if np, ok := p.NICs[strconv.Itoa(i)]; ok && applyNICLimitsPatch(&spec.NICs[i], np) {
			changed = append(changed, fmt.Sprintf("nics[%d].limits", i))
		}
	}
	return changed
}

// applyNICLimitsPatch merges p into n's bandwidth limits and reports
// whether they changed; limits all zero are dropped.
func applyNICLimitsPatch(n *v1.NIC, p v1.NICPatch) bool {
	return mergeOptional(&n.Limits, func(l *v1.NICLimits) {
		for _, f := range []struct {
			dst *float64
			src *float64
		}{{&l.Mbps, p.Mbps}, {&l.RxMbps, p.RxMbps}, {&l.TxMbps, p.TxMbps}} {
			if f.src != nil {
				*f.dst = *f.src
			}
		}
	})
}

// applyResourcesPatch merges p into spec's resources and reports whether
// they changed; resources all at their defaults are dropped.
func applyResourcesPatch(spec *v1.VMSpec, p v1.ResourcesPatch) bool {
	return mergeOptional(&spec.Resources, func(r *v1.Resources) {
		if p.CPUShares != nil {
			r.CPUShares = *p.CPUShares
		}
		if p.CPULimit != nil {
			r.CPULimit = *p.CPULimit
		}
		if p.MemoryLimitMiB != nil {
			r.MemoryLimitMiB = *p.MemoryLimitMiB
		}
		if p.CPUPinning != nil {
			r.CPUPinning = *p.CPUPinning
		}
		if p.BalloonMiB != nil {
			r.BalloonMiB = *p.BalloonMiB
		}
		if p.Hugepages != nil {
			r.Hugepages = *p.Hugepages
		}
	})
}

// applyDiskLimitsPatch merges p's limits into d's and reports whether
// they changed; limits all zero are dropped.
func applyDiskLimitsPatch(d *v1.Disk, p v1.DiskPatch) bool {
	return mergeOptional(&d.Limits, func(l *v1.DiskLimits) {
		if p.IOPS != nil {
			l.IOPS = *p.IOPS
		}
		if p.BPS != nil {
			l.BPS = *p.BPS
		}
	})
}

// mergeOptional applies set to a copy of *dst (the zero value when nil)
// and reports whether that changed it; a result left at the zero value is
// stored as nil.
func mergeOptional[T comparable](dst **T, set func(*T)) bool {
	var v, zero T
	if *dst != nil {
		v = **dst
	}
	old := v
	set(&v)
	if v == old {
		return false
	}
	if v == zero {
		*dst = nil
	} else {
		*dst = &v
	}
	return true
}

// liveLimits tells whether changed holds limits a running VM's host
// applies live.
func liveLimits(changed []string) bool {
	for _, f := range changed {
		if f == "resources" || strings.HasSuffix(f, ".limits") {
			return true
		}
	}
	return false
}

// checkPatch checks what a patch sets that the spec's validation would
// name by another path: a disk's settings are given by its name.
func checkPatch(spec v1.VMSpec, p v1.VMPatch) error {
	if p.IOErrorPolicy != nil {
		if err := vm.CheckIOErrorPolicy("ioErrorPolicy", *p.IOErrorPolicy, false); err != nil {
			return err
		}
	}
	for name, dp := range p.Disks {
		f := "disks." + name
		i := slices.IndexFunc(spec.Disks, func(d v1.Disk) bool { return d.Name == name })
		if i < 0 {
			return invalidArg(f, "vm %q has no disk %q", spec.Name, name)
		}
		if dp.IOErrorPolicy == nil {
			continue
		}
		if err := vm.CheckIOErrorPolicy(f+".ioErrorPolicy", *dp.IOErrorPolicy, true); err != nil {
			return err
		}
		if spec.Disks[i].Media == "cdrom" && *dp.IOErrorPolicy != "" {
			return invalidArg(f+".ioErrorPolicy", "%s is a cdrom: it reports read errors to the guest; the policy is for disks", name)
		}
	}
	for key := range p.NICs {
		if i, err := strconv.Atoi(key); err != nil || i < 0 || i >= len(spec.NICs) || strconv.Itoa(i) != key {
			return invalidArg("nics."+key, "vm %q has no NIC %q (NICs are named by their index, 0 to %d)", spec.Name, key, len(spec.NICs)-1)
		}
	}
	return nil
}

// applyHAPatch merges p into spec's HA settings (created with their
// defaults on a VM without any) and reports whether they changed.
func applyHAPatch(spec *v1.VMSpec, p v1.HAPatch) bool {
	var h v1.HA
	if spec.HA != nil {
		h = *spec.HA
	} else {
		vm.HADefaults(&h)
	}
	set := func(dst *int, src *int) {
		if src != nil {
			*dst = *src
		}
	}
	if p.Enabled != nil {
		h.Enabled = *p.Enabled
	}
	set(&h.Priority, p.Priority)
	set(&h.RestartOrder, p.RestartOrder)
	set(&h.MaxRestarts, p.MaxRestarts)
	if p.RestartWindow != nil {
		h.RestartWindow = *p.RestartWindow
	}
	if spec.HA != nil && h == *spec.HA {
		return false
	}
	spec.HA = &h
	return true
}

// checkOffline refuses changes of the machine itself (CPUs, memory) unless
// no QEMU runs for the VM (state is its observed state).
func checkOffline(name, state string, changed []string) error {
	if contains(offline, state) {
		return nil
	}
	for _, f := range changed {
		if f == "cpus" || f == "memoryMiB" {
			return &v1.Error{Code: v1.CodeFailedPrecondition, Field: f,
				Message: fmt.Sprintf("vm %q is %s: %s can change only while it is stopped", name, state, f)}
		}
	}
	return nil
}

// patchVM changes a VM's settings: PATCH /vms/{name} with a v1.VMPatch.
// The spec is written with a compare-and-swap on the revision it was read
// at (and, with If-Match, on the revision the caller saw).
func (s *Server) patchVM(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	name := r.PathValue("name")
	if err := vm.ValidateName("name", name); err != nil {
		writeErr(w, err)
		return
	}
	var p v1.VMPatch
	if err := decode(r, &p); err != nil {
		writeErr(w, err)
		return
	}
	ifMatch := int64(0)
	if h := r.Header.Get("If-Match"); h != "" {
		n, err := strconv.ParseInt(trimETag(h), 10, 64)
		if err != nil || n <= 0 {
			writeErr(w, invalidArg("If-Match", "%q is not a revision", h))
			return
		}
		ifMatch = n
	}
	hosts, err := s.hosts(ctx)
	if err != nil {
		writeErr(w, err)
		return
	}
	for attempt := 0; ; attempt++ {
		v, err := s.inv.VM(ctx, name)
		if err != nil {
			writeErr(w, err)
			return
		}
		if ifMatch != 0 && v.Revision != ifMatch {
			writeErr(w, &v1.Error{Code: v1.CodeFailedPrecondition, Field: "If-Match",
				Message: fmt.Sprintf("vm %q changed: revision %d, the request expects %d", name, v.Revision, ifMatch)})
			return
		}
		spec := v.Spec
		if err := checkPatch(spec, p); err != nil {
			writeErr(w, err)
			return
		}
		changed := applyPatch(&spec, p)
		if len(changed) == 0 {
			writeJSON(w, 200, redactVM(v))
			return
		}
		if err := vm.Validate(spec, scheduler.LargestHostMemory(hosts)); err != nil {
			writeErr(w, err)
			return
		}
		if err := checkOffline(name, v.Status.State, changed); err != nil {
			writeErr(w, err)
			return
		}
		if err := checkPinning(hosts, spec); err != nil {
			writeErr(w, err)
			return
		}
		if err := checkHugepages(hosts, spec, spec.Host); err != nil {
			writeErr(w, err)
			return
		}
		var conds []store.Cond
		if spec.CPUs > v.Spec.CPUs || spec.MemoryMiB > v.Spec.MemoryMiB {
			if conds, err = s.checkResize(ctx, hosts, spec); err != nil {
				writeErr(w, err)
				return
			}
		}
		if slices.Contains(changed, "ha") && (v.Spec.HA == nil || !v.Spec.HA.Enabled) {
			if err := master.AdmitHA(ctx, s.cfg.Store, s.cfg.Log, spec); err != nil {
				writeErr(w, err)
				return
			}
		}
		// A running VM's new resources go to its host as a "limits"
		// operation written with the spec, and the answer waits for it.
		var op *v1.Operation
		writes := []store.Op{store.PutOp(inventory.VMKey(name), inventory.Marshal(spec), v.Revision)}
		if liveLimits(changed) && !contains(offline, v.Status.State) && spec.Host != "" {
			o := s.newOp("limits", name, spec.Host, v1.LimitsArgs{Previous: vm.LimitsOf(v.Spec), Next: vm.LimitsOf(spec)})
			op, writes = &o, append(inventory.NewOpWrites(o), writes...)
		}
		rev, err := s.cfg.Store.Txn(ctx, conds, writes...)
		if errors.Is(err, store.ErrConflict) && attempt < 5 {
			continue // read again (a changed VM answers If-Match above)
		}
		if errors.Is(err, store.ErrConflict) {
			err = &v1.Error{Code: v1.CodeConflict, Field: "name", Message: fmt.Sprintf("vm %q changed meanwhile: read it again", name)}
		}
		if err != nil {
			writeErr(w, err)
			return
		}
		s.cfg.Log.Info("vm settings changed", "vm", name, "fields", changed, "revision", rev)
		if op != nil {
			if err := s.awaitLimits(ctx, name, spec.Host, op.ID); err != nil {
				writeErr(w, err)
				return
			}
		}
		v.Spec, v.Revision = spec, rev
		writeJSON(w, 200, redactVM(v))
		return
	}
}

// awaitLimits waits for a running VM's live change (operation id) to end.
// When the host refuses or fails it, the pool master writes the limits
// before it back over the spec and asks the host to apply them again
// (v1.LimitsArgs) before it ends the operation, whose error says so: a
// refused change loses nothing, even when this process dies meanwhile. A
// change not ended in time stays pending (503): the host applies it, or
// the master rolls it back, later.
func (s *Server) awaitLimits(ctx context.Context, name, host, id string) error {
	done, err := s.waitOp(ctx, id, limitsWait)
	if err != nil {
		return err
	}
	if !done.Done() {
		return &v1.Error{Code: v1.CodeUnavailable, Field: "resources",
			Message: fmt.Sprintf("vm %q: the settings are saved but host %s has not applied them yet (operation %s)", name, host, id)}
	}
	if done.State != v1.OpFailed {
		return nil
	}
	if done.Error != nil {
		return done.Error
	}
	return &v1.Error{Code: v1.CodeInternal, Message: "the host failed the change"}
}

// checkPinning refuses a vCPU pinning that names a CPU the VM's host does
// not have (by the CPUs it reports), before the spec is written; the agent
// checks again against the CPUs it may use.
func checkPinning(hosts []v1.Host, spec v1.VMSpec) error {
	sets, err := vm.CPUPinning(spec)
	i := slices.IndexFunc(hosts, func(h v1.Host) bool { return h.Name == spec.Host })
	if err != nil || sets == nil || i < 0 || hosts[i].CPUs <= 0 {
		return nil // Validate answers a malformed one
	}
	for n, set := range sets {
		if c := set[len(set)-1]; c >= hosts[i].CPUs {
			return &v1.Error{Code: v1.CodeFailedPrecondition, Field: "resources.cpuPinning",
				Message: fmt.Sprintf("resources.cpuPinning: vcpu %d: host %s has no CPU %d to pin it to (its CPUs: 0-%d)", n, spec.Host, c, hosts[i].CPUs-1)}
		}
	}
	return nil
}

// checkHugepages refuses huge pages (412 on resources.hugepages) where
// the VM's host, or with none known every host, runs guests under TCG
// (vm.HugepagesProblem); the agent checks its free huge pages at start.
func checkHugepages(hosts []v1.Host, spec v1.VMSpec, host string) error {
	if spec.Resources == nil || !spec.Resources.Hugepages {
		return nil
	}
	var p string
	for _, h := range hosts {
		if host != "" && h.Name != host {
			continue
		}
		if p = vm.HugepagesProblem(spec, h.Name, h.Accelerator, 0, 0); p == "" {
			return nil
		}
	}
	if p == "" {
		return nil // no host known: the agent that starts it checks
	}
	return &v1.Error{Code: v1.CodeFailedPrecondition, Field: "resources.hugepages", Message: "resources.hugepages: " + p}
}

// checkResize refuses to grow a VM placed on a host past what the host
// admits beside the other VMs there (a 412 naming memoryMiB or cpus and
// the numbers); the pool master books the new size (leader.rebook). A
// VM without a host is admitted when it is placed. Another VM counts at
// the larger of its booking and its spec: a resize admitted but not yet
// booked is counted. The answer's conditions hold the spec's write to
// what was checked: the host's bookings and the other VMs' specs
// unchanged, so two resizes on one host at once are not both admitted
// against the same bookings (the later one reads again).
func (s *Server) checkResize(ctx context.Context, hosts []v1.Host, spec v1.VMSpec) ([]store.Cond, error) {
	if spec.Host == "" {
		return nil, nil
	}
	i := slices.IndexFunc(hosts, func(h v1.Host) bool { return h.Name == spec.Host })
	if i < 0 {
		return nil, nil
	}
	pol, err := s.inv.Admission(ctx)
	if err != nil {
		return nil, err
	}
	allocs, allocRev, err := s.inv.AllocsByHostAt(ctx)
	if err != nil {
		return nil, err
	}
	specs, revs, _, err := s.inv.Specs(ctx)
	if err != nil {
		return nil, err
	}
	conds := []store.Cond{store.Unchanged(inventory.AllocPrefix(spec.Host), allocRev)}
	booked := map[string]scheduler.Alloc{}
	for vm, a := range allocs[spec.Host] {
		booked[vm] = scheduler.Alloc{Host: spec.Host, VM: vm, CPUs: a.CPUs, MemoryMiB: a.MemoryMiB}
	}
	for k, sp := range specs {
		if sp.Host != spec.Host || sp.Name == spec.Name {
			continue
		}
		conds = append(conds, store.Cond{Key: inventory.VMKey(sp.Name), ExpectRev: revs[k]})
		a := booked[sp.Name]
		a.Host, a.VM, a.CPUs, a.MemoryMiB = spec.Host, sp.Name, max(a.CPUs, sp.CPUs), max(a.MemoryMiB, sp.MemoryMiB)
		booked[sp.Name] = a
	}
	var others []scheduler.Alloc
	for vm, a := range booked {
		if vm != spec.Name {
			others = append(others, a)
		}
	}
	h := scheduler.Host{Name: spec.Host, CPUs: hosts[i].CPUs, MemoryMiB: hosts[i].MemoryMiB}
	return conds, pol.CheckResize(h, others, spec.Name, spec.CPUs, spec.MemoryMiB)
}

// trimETag accepts a revision as 42, "42" or W/"42".
func trimETag(h string) string {
	if len(h) > 2 && h[:2] == "W/" {
		h = h[2:]
	}
	if len(h) >= 2 && h[0] == '"' && h[len(h)-1] == '"' {
		h = h[1 : len(h)-1]
	}
	return h
}

// limitsWait is how long a resources change waits for the VM's host.
const limitsWait = 30 * time.Second
