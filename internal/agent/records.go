package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/storage"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// records is the agent's view of the inventory. Everything it reads from
// the store — operations, VM specs, statuses, pools, templates — is checked
// as strictly as the API checks a request before the agent builds a path,
// an argv or a decision from it: anyone who can write to etcd must not be
// able to steer the (root) agent outside its pools, data and run dirs. A
// record that fails is refused with inventory.ErrInvalidRecord. The lists
// it does not override (VMList, Ops) serve display and in-use checks only:
// nothing is built from them.
type records struct {
	inventory.Inventory
	a *Agent
}

func badRecord(what string, err error) error {
	return fmt.Errorf("%s: %v: %w", what, err, inventory.ErrInvalidRecord)
}

// Op returns a checked operation and its revision.
func (r records) Op(ctx context.Context, id string) (v1.Operation, int64, error) {
	if err := vm.ValidateOpID("id", id); err != nil {
		return v1.Operation{}, 0, badRecord("operation", err)
	}
	op, rev, err := r.Inventory.Op(ctx, id)
	if err != nil {
		return op, rev, err
	}
	if err := checkOp(inventory.OpKey(id), op); err != nil {
		return op, rev, err
	}
	return op, rev, nil
}

// checkOp checks an operation record read from key.
func checkOp(key string, op v1.Operation) error {
	if err := vm.ValidateOp(op); err != nil {
		return badRecord(fmt.Sprintf("operation record %q", key), err)
	}
	if inventory.OpKey(op.ID) != key {
		return badRecord(fmt.Sprintf("operation record %q", key), fmt.Errorf("id %q does not match its key", op.ID))
	}
	return nil
}

// Spec returns a checked VM spec and its revision.
func (r records) Spec(ctx context.Context, name string) (v1.VMSpec, int64, error) {
	if err := vm.ValidateName("name", name); err != nil {
		return v1.VMSpec{}, 0, badRecord("vm", err)
	}
	spec, rev, err := r.Inventory.Spec(ctx, name)
	if err != nil {
		return spec, rev, err
	}
	if err := checkSpec(name, spec); err != nil {
		return v1.VMSpec{}, 0, err
	}
	return spec, rev, nil
}

// Specs lists the VM specs that pass the checks; the others are logged and
// left out.
func (r records) Specs(ctx context.Context) ([]v1.VMSpec, []int64, int64, error) {
	kvs, rev, err := store.ListJSON[v1.VMSpec](ctx, r.S, inventory.VMs)
	if err != nil {
		return nil, nil, 0, err
	}
	var specs []v1.VMSpec
	var revs []int64
	for _, kv := range kvs {
		if err := checkSpec(inventory.NameFromKey(kv.Key), kv.Value); err != nil || kv.Key != inventory.VMKey(kv.Value.Name) {
			r.a.cfg.Log.Warn("refusing vm record", "key", kv.Key, "err", err)
			continue
		}
		specs, revs = append(specs, kv.Value), append(revs, kv.Rev)
	}
	return specs, revs, rev, nil
}

// checkSpec runs the API's full validation on a spec stored under name.
func checkSpec(name string, spec v1.VMSpec) error {
	what := fmt.Sprintf("vm record %q", name)
	if err := vm.ValidateName("name", name); err != nil {
		return badRecord(what, err)
	}
	if spec.Name != name {
		return badRecord(what, fmt.Errorf("it names vm %q", spec.Name))
	}
	if err := vm.Validate(spec, 0); err != nil {
		return badRecord(what, err)
	}
	return nil
}

// Status returns a VM's checked status.
func (r records) Status(ctx context.Context, name string) (v1.VMStatus, error) {
	st, err := r.statusForUpdate(ctx, name)
	return st.VMStatus, err
}

// statusRecord is a checked status with what a conditioned update needs:
// its revision, and the spec (nil: none) and spec revision it was checked
// against (store.MustNotExist for either when there is none).
type statusRecord struct {
	v1.VMStatus
	Rev     int64
	Spec    *v1.VMSpec
	SpecRev int64
	// Owner is the VM's owner record (nil: none yet) and OwnerRev its
	// revision (0: none).
	Owner    *inventory.Owner
	OwnerRev int64
}

// statusForUpdate returns a VM's checked status with its revisions.
func (r records) statusForUpdate(ctx context.Context, name string) (statusRecord, error) {
	if err := vm.ValidateName("name", name); err != nil {
		return statusRecord{}, badRecord("vm status", err)
	}
	st, rev, err := r.StatusRev(ctx, name)
	if err != nil {
		return statusRecord{}, err
	}
	out := statusRecord{VMStatus: st, Rev: rev, SpecRev: store.MustNotExist}
	if s, srev, err := r.Spec(ctx, name); err == nil {
		out.Spec, out.SpecRev = &s, srev
	} else if !errors.Is(err, store.ErrNotFound) {
		return statusRecord{}, err
	}
	if o, orev, err := r.OwnerOf(ctx, name); err == nil {
		out.Owner, out.OwnerRev = &o, orev
	} else if !errors.Is(err, store.ErrNotFound) {
		return statusRecord{}, err
	}
	if err := r.a.checkStatus(ctx, name, st, out.Spec); err != nil {
		return statusRecord{}, err
	}
	return out, nil
}

var knownStates = map[string]bool{v1.StateCreating: true, v1.StateStopped: true, v1.StateStarting: true,
	v1.StateRunning: true, v1.StatePaused: true, v1.StateStopping: true, v1.StateCrashed: true,
	v1.StateSuspended: true, v1.StateError: true, v1.StateLost: true}

// checkStatus checks a status record: every file it names must be inside
// the VM's storage pools (the host's default pool and the pools its disks'
// volumes and clone sources are in), snapshot overlays and state files
// inside the VM's own directory, and formats must be ones Hangar writes.
func (a *Agent) checkStatus(ctx context.Context, name string, st v1.VMStatus, spec *v1.VMSpec) error {
	what := fmt.Sprintf("status record of vm %q", name)
	if !knownStates[st.State] {
		return badRecord(what, fmt.Errorf("unknown state %q", st.State))
	}
	if st.PID < 0 {
		return badRecord(what, fmt.Errorf("pid %d", st.PID))
	}
	pools := []*storage.Pool{a.cfg.Pool}
	cdroms := map[string]bool{}
	if spec != nil {
		seen := map[string]bool{a.cfg.Pool.Name: true}
		for _, d := range spec.Disks {
			if d.Media == "cdrom" && d.Name != vm.CloudInitDisk {
				cdroms[d.Name] = true
			}
			for _, ref := range []string{d.Volume, cloneRef(d)} {
				pn, _, _ := strings.Cut(ref, "/")
				if _, other := storage.LocalPoolHost(pn); ref == "" || seen[pn] || other {
					// Another host's own pool (a migration's source, before
					// the switch-over names this host's): none of its files
					// is this host's.
					continue
				}
				seen[pn] = true
				p, err := a.pool(ctx, pn)
				if err != nil {
					return fmt.Errorf("%s: %w", what, err)
				}
				pools = append(pools, p)
			}
		}
	}
	inPools := func(field, path string) error {
		var err error
		for _, p := range pools {
			if err = inPool(p, path); err == nil {
				return nil
			}
		}
		return badRecord(what, fmt.Errorf("%s: %w", field, err))
	}
	for i, d := range st.Disks {
		f := fmt.Sprintf("disks[%d]", i)
		if err := vm.ValidateName(f+".name", d.Name); err != nil {
			return badRecord(what, err)
		}
		if d.Format != "qcow2" && d.Format != "raw" {
			return badRecord(what, fmt.Errorf("%s.format: %q is not qcow2 or raw", f, d.Format))
		}
		if strings.ContainsRune(d.Node, 0) || len(d.Node) > 64 {
			return badRecord(what, fmt.Errorf("%s.node: %q is not a node name", f, d.Node))
		}
		if cdroms[d.Name] || (d.Path == "" && d.Top == "" && !d.Created) {
			// A cdrom's medium comes from the spec; the status path is
			// never opened, and Hangar never deletes it.
			if d.Created || d.Top != "" {
				return badRecord(what, fmt.Errorf("%s: a cdrom's medium is not a volume of the vm", f))
			}
			continue
		}
		if err := inPools(f+".path", d.Path); err != nil {
			return err
		}
		if d.Top != "" {
			if err := inPools(f+".top", d.Top); err != nil {
				return err
			}
		}
	}
	for i, sn := range st.Snapshots {
		f := fmt.Sprintf("snapshots[%d]", i)
		if err := vm.ValidateName(f+".name", sn.Name); err != nil {
			return badRecord(what, err)
		}
		for d, p := range sn.Overlays {
			// Overlays are the VM's own files (deleted with the snapshot).
			if err := inVMDir(a.cfg.Pool, name, p); err != nil {
				return badRecord(what, fmt.Errorf("%s.overlays.%s: %w", f, d, err))
			}
		}
		for d, p := range sn.Bases {
			if err := inPools(f+".bases."+d, p); err != nil {
				return err
			}
		}
		if sn.StateFile != "" {
			if err := inVMDir(a.cfg.Pool, name, sn.StateFile); err != nil {
				return badRecord(what, fmt.Errorf("%s.stateFile: %w", f, err))
			}
		}
	}
	if st.StateFile != "" {
		if err := inVMDir(a.cfg.Pool, name, st.StateFile); err != nil {
			return badRecord(what, fmt.Errorf("stateFile: %w", err))
		}
	}
	return nil
}

func cloneRef(d v1.Disk) string {
	if d.Clone == nil {
		return ""
	}
	return d.Clone.Volume
}

// inPool checks that path is a file inside pool p: absolute, clean, and
// resolving (symlinks included) inside the pool's directory.
func inPool(p *storage.Pool, path string) error {
	if path == "" || !filepath.IsAbs(path) || filepath.Clean(path) != path || strings.ContainsRune(path, 0) {
		return fmt.Errorf("%q is not a clean absolute path: %w", path, storage.ErrOutsidePool)
	}
	rel, err := filepath.Rel(p.Path, path)
	if err != nil || rel == "." {
		return fmt.Errorf("%q is not a file of pool %s: %w", path, p.Name, storage.ErrOutsidePool)
	}
	if _, err := p.Resolve(rel); err != nil {
		return fmt.Errorf("%q: %w", path, err)
	}
	return nil
}

// inVMDir checks that path is a file in the VM's directory of pool p.
func inVMDir(p *storage.Pool, name, path string) error {
	dir, err := p.VMDir(name)
	if err != nil {
		return err
	}
	if filepath.Dir(path) != dir {
		return fmt.Errorf("%q is not in %s: %w", path, dir, storage.ErrOutsidePool)
	}
	return inPool(p, path)
}

// Pool returns a checked storage pool record.
func (r records) Pool(ctx context.Context, name string) (v1.StoragePool, error) {
	var sp v1.StoragePool
	if err := vm.ValidateName("name", name); err != nil {
		return sp, badRecord("storage pool", err)
	}
	if _, err := store.GetJSON(ctx, r.S, inventory.PoolKey(name), &sp); errors.Is(err, store.ErrNotFound) {
		return sp, inventory.NotFound(err, "storage pool", name)
	} else if err != nil {
		return sp, fmt.Errorf("storage pool %q: %w", name, err)
	}
	if err := checkPool(name, sp); err != nil {
		return v1.StoragePool{}, err
	}
	return sp, nil
}

// checkPool checks a pool record stored under name.
func checkPool(name string, sp v1.StoragePool) error {
	what := fmt.Sprintf("storage pool record %q", name)
	switch {
	case sp.Name != name:
		return badRecord(what, fmt.Errorf("it names pool %q", sp.Name))
	case sp.Type != storage.TypeDir && sp.Type != storage.TypeShared:
		return badRecord(what, fmt.Errorf("unknown type %q", sp.Type))
	case !filepath.IsAbs(sp.Path) || filepath.Clean(sp.Path) != sp.Path || strings.ContainsRune(sp.Path, 0) || sp.Path == "/":
		return badRecord(what, fmt.Errorf("path %q is not a pool directory", sp.Path))
	}
	return nil
}

// Template returns a checked template record.
func (r records) Template(ctx context.Context, name string) (v1.Template, error) {
	var t v1.Template
	if err := vm.ValidateName("name", name); err != nil {
		return t, badRecord("template", err)
	}
	if _, err := store.GetJSON(ctx, r.S, inventory.TemplateKey(name), &t); errors.Is(err, store.ErrNotFound) {
		return t, inventory.NotFound(err, "template", name)
	} else if err != nil {
		return t, fmt.Errorf("template %q: %w", name, err)
	}
	if err := checkTemplate(name, t); err != nil {
		return v1.Template{}, err
	}
	return t, nil
}

// checkTemplate checks a template record stored under name: its volumes
// must be the template's own, in templates/<name>/ of its pool.
func checkTemplate(name string, t v1.Template) error {
	what := fmt.Sprintf("template record %q", name)
	if t.Name != name {
		return badRecord(what, fmt.Errorf("it names template %q", t.Name))
	}
	if err := vm.ValidateName("pool", t.Pool); err != nil {
		return badRecord(what, err)
	}
	prefix := t.Pool + "/templates/" + name + "/"
	for i, d := range t.Disks {
		f := fmt.Sprintf("disks[%d].volume", i)
		if err := vm.ValidateVolumeRef(f, d.Volume); err != nil {
			return badRecord(what, err)
		}
		if !strings.HasPrefix(d.Volume, prefix) || strings.Contains(strings.TrimPrefix(d.Volume, prefix), "/") {
			return badRecord(what, fmt.Errorf("%s: %q is not a volume of the template (%s…)", f, d.Volume, prefix))
		}
	}
	return nil
}
