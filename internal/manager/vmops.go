package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/imports"
	"hangar/internal/inventory"
	"hangar/internal/storage"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// storageRoutes adds storage-side VM actions: templates, clones, snapshots,
// suspend, media and imports.
func (s *Server) storageRoutes() {
	s.route("POST /api/v1/vms/{name}/template", s.makeTemplate)
	s.route("POST /api/v1/vms/{name}/clone", s.cloneVM)
	s.route("POST /api/v1/vms/{name}/suspend", s.suspendVM)
	s.route("POST /api/v1/vms/{name}/media", s.changeMedia)
	s.route("POST /api/v1/vms/{name}/migrate", s.migrateVM)
	s.route("GET /api/v1/vms/{name}/snapshots", s.listSnapshots)
	s.route("POST /api/v1/vms/{name}/snapshots", s.createSnapshot)
	s.route("POST /api/v1/vms/{name}/snapshots/{snap}/revert", s.revertSnapshot)
	s.route("DELETE /api/v1/vms/{name}/snapshots/{snap}", s.deleteSnapshot)
	s.route("GET /api/v1/templates", s.listTemplates)
	s.route("GET /api/v1/templates/{name}", s.getTemplate)
	s.route("DELETE /api/v1/templates/{name}", s.deleteTemplate)
	s.route("POST /api/v1/templates/{name}/deploy", s.deployTemplate)
	s.route("POST /api/v1/imports", s.importVM)
}

// submitArgs decodes an action's JSON arguments, checks them and submits the
// operation.
func submitArgs[T any](s *Server, w http.ResponseWriter, r *http.Request, kind string, check func(*T, v1.VM) error, mutate func(*T, *v1.VMSpec), need ...string) {
	var args T
	if err := decode(r, &args); err != nil {
		writeErr(w, err)
		return
	}
	name := r.PathValue("name")
	if err := vm.ValidateName("name", name); err != nil {
		writeErr(w, err)
		return
	}
	if check != nil {
		v, err := s.inv.VM(r.Context(), name)
		if err != nil {
			writeErr(w, err)
			return
		}
		if err := check(&args, v); err != nil {
			writeErr(w, err)
			return
		}
	}
	var m func(*v1.VMSpec)
	if mutate != nil {
		m = func(sp *v1.VMSpec) { mutate(&args, sp) }
	}
	s.submitSpec(w, r, name, kind, args, m, need)
}

func invalidArg(field, format string, a ...any) error {
	return &v1.Error{Code: v1.CodeInvalidArgument, Field: field, Message: field + ": " + fmt.Sprintf(format, a...)}
}

func (s *Server) makeTemplate(w http.ResponseWriter, r *http.Request) {
	submitArgs(s, w, r, "template", func(a *v1.TemplateArgs, v v1.VM) error {
		if err := vm.ValidateName("template", a.Template); err != nil {
			return err
		}
		if _, err := s.inv.S.Get(r.Context(), inventory.TemplateKey(a.Template)); err == nil {
			return &v1.Error{Code: v1.CodeConflict, Field: "template", Message: fmt.Sprintf("template: %q already exists", a.Template)}
		}
		if len(v.Status.Snapshots) > 0 {
			return errdefs.Precondition("vm %q has snapshots: merge or revert them first", v.Spec.Name)
		}
		return nil
	}, nil, v1.StateStopped)
}

func (s *Server) suspendVM(w http.ResponseWriter, r *http.Request) {
	s.submit(w, r, r.PathValue("name"), "suspend", nil, v1.PowerStopped, []string{v1.StateRunning, v1.StatePaused})
}

func (s *Server) changeMedia(w http.ResponseWriter, r *http.Request) {
	if s.forwardToVMHost(w, r, r.PathValue("name")) {
		return // the medium is a file on the VM's host: checked there
	}
	submitArgs(s, w, r, "media", func(a *v1.MediaArgs, v v1.VM) error {
		for _, d := range v.Spec.Disks {
			if d.Name == a.Disk {
				if d.Media != "cdrom" {
					return invalidArg("disk", "%q is not a cdrom", a.Disk)
				}
				if a.Image != "" && !strings.HasPrefix(a.Image, "/") {
					return invalidArg("image", "must be an absolute path, got %q", a.Image)
				}
				return s.checkMedium(r.Context(), "image", a.Image)
			}
		}
		return invalidArg("disk", "vm %q has no disk %q", v.Spec.Name, a.Disk)
	}, func(a *v1.MediaArgs, sp *v1.VMSpec) {
		for i := range sp.Disks {
			if sp.Disks[i].Name == a.Disk {
				sp.Disks[i].Image = a.Image
			}
		}
	})
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	if err := vm.ValidateName("name", r.PathValue("name")); err != nil {
		writeErr(w, err)
		return
	}
	v, err := s.inv.VM(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	snaps := v.Status.Snapshots
	if snaps == nil {
		snaps = []v1.Snapshot{}
	}
	writeJSON(w, 200, snaps)
}

func findSnapshot(v v1.VM, name string) int {
	for i, sn := range v.Status.Snapshots {
		if sn.Name == name {
			return i
		}
	}
	return -1
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	submitArgs(s, w, r, "snapshot", func(a *v1.SnapshotArgs, v v1.VM) error {
		if err := vm.ValidateName("name", a.Name); err != nil {
			return err
		}
		if findSnapshot(v, a.Name) >= 0 {
			return &v1.Error{Code: v1.CodeConflict, Field: "name", Message: fmt.Sprintf("name: vm %q has a snapshot %q already", v.Spec.Name, a.Name)}
		}
		if len(v.Status.Snapshots) >= 15 {
			return errdefs.Precondition("vm %q has %d snapshots: merge some first", v.Spec.Name, len(v.Status.Snapshots))
		}
		if a.Memory && v.Status.State != v1.StateRunning && v.Status.State != v1.StatePaused {
			return errdefs.Precondition("vm %q is %s: a snapshot with memory needs it running (start it, or snapshot without memory)", v.Spec.Name, v.Status.State)
		}
		return nil
	}, nil, v1.StateRunning, v1.StatePaused, v1.StateStopped, v1.StateCrashed)
}

func (s *Server) snapshotAction(w http.ResponseWriter, r *http.Request, kind string, extra func(v v1.VM, i int) error) {
	name, snap := r.PathValue("name"), r.PathValue("snap")
	if err := vm.ValidateName("name", name); err != nil {
		writeErr(w, err)
		return
	}
	if err := vm.ValidateName("snap", snap); err != nil {
		writeErr(w, err)
		return
	}
	v, err := s.inv.VM(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	i := findSnapshot(v, snap)
	if i < 0 {
		writeErr(w, &v1.Error{Code: v1.CodeNotFound, Field: "snap", Message: fmt.Sprintf("vm %q has no snapshot %q", name, snap)})
		return
	}
	if extra != nil {
		if err := extra(v, i); err != nil {
			writeErr(w, err)
			return
		}
	}
	s.submit(w, r, name, kind, v1.SnapshotActionArgs{Name: snap}, "", []string{v1.StateRunning, v1.StatePaused, v1.StateStopped, v1.StateCrashed})
}

// revertSnapshot goes back to a snapshot's point; ?discard=true also drops
// the snapshot (hot mode "discard").
func (s *Server) revertSnapshot(w http.ResponseWriter, r *http.Request) {
	discard, err := boolParam(r.URL.Query().Get("discard"), "discard")
	if err != nil {
		writeErr(w, err)
		return
	}
	kind := "snapshot-revert"
	if discard {
		kind = "snapshot-discard"
	}
	s.snapshotAction(w, r, kind, nil)
}

// deleteSnapshot deletes a snapshot by merging its changes into its base
// while the VM runs; for the newest snapshot that is hot mode's "commit".
func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	s.snapshotAction(w, r, "snapshot-commit", nil)
}

// cloneVM copies a VM — running or not — into a new one; of a running VM
// all disks are copied at one instant (crash-consistent).
func (s *Server) cloneVM(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	args, wait, ok := decodeOp[v1.CloneArgs](s, w, r)
	if !ok {
		return
	}
	if err := vm.ValidateName("name", r.PathValue("name")); err != nil {
		writeErr(w, err)
		return
	}
	if err := vm.ValidateName("name", args.Name); err != nil {
		writeErr(w, err)
		return
	}
	src, err := s.inv.VM(ctx, r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if len(src.Status.Snapshots) > 0 && src.Status.State != v1.StateRunning {
		writeErr(w, errdefs.Precondition("vm %q has snapshots and is not running: start it or merge them first", src.Spec.Name))
		return
	}
	spec := src.Spec
	spec.Name, spec.UUID, spec.Host, spec.Power = args.Name, "", "", v1.PowerStopped
	if err := mayCreate(ctx, spec); err != nil {
		writeErr(w, err)
		return
	}
	spec.Disks = nil
	for _, d := range src.Spec.Disks {
		nd := v1.Disk{Name: d.Name, Bus: d.Bus, Media: d.Media}
		switch {
		case d.Media == "cdrom":
			nd.Image = d.Image
		case d.Volume != "" && d.Shareable:
			nd.Volume, nd.Shareable = d.Volume, true
		default:
			// The source's agent writes the copy into its host's own pool.
			nd.Volume = storage.LocalPoolName(src.Spec.Host) + "/vms/" + args.Name + "/" + d.Name + ".qcow2"
		}
		spec.Disks = append(spec.Disks, nd)
	}
	spec.NICs = nil
	for _, n := range src.Spec.NICs {
		nic := v1.NIC{Mode: n.Mode, Bridge: n.Bridge} // new MACs; the source's forwards would clash
		if n.Mode == v1.NICUser && args.Forwards != nil {
			nic.Forwards, args.Forwards = args.Forwards, nil
		}
		spec.NICs = append(spec.NICs, nic)
	}
	vm.Defaults(&spec, "tcg")
	spec.CPUModel = src.Spec.CPUModel
	if err := vm.Validate(spec, 0); err != nil {
		writeErr(w, err)
		return
	}

	spec.Host = src.Spec.Host
	if err := s.checkPorts(ctx, spec); err != nil {
		writeErr(w, err)
		return
	}
	spec.UUID = uuid.NewString()
	op := s.newOp("clone", src.Spec.Name, src.Spec.Host, args)
	_, err = s.cfg.Store.Txn(ctx, nil, append(inventory.NewOpWrites(op),
		store.PutOp(inventory.VMKey(spec.Name), inventory.Marshal(spec), store.MustNotExist),
		store.PutOp(inventory.StatusKey(spec.Name), inventory.Marshal(v1.VMStatus{State: v1.StateCreating, Host: spec.Host, UpdatedAt: time.Now().UTC()}), store.MustNotExist))...)
	if errors.Is(err, store.ErrConflict) {
		writeErr(w, &v1.Error{Code: v1.CodeConflict, Field: "name", Message: fmt.Sprintf("name: vm %q already exists", spec.Name)})
		return
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	s.answerOp(w, r, op, wait)
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) {
	ts, err := s.inv.Templates(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, ts)
}

func (s *Server) template(ctx context.Context, name string) (v1.Template, error) {
	if err := vm.ValidateName("name", name); err != nil {
		return v1.Template{}, err
	}
	var t v1.Template
	if _, err := store.GetJSON(ctx, s.inv.S, inventory.TemplateKey(name), &t); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return t, &v1.Error{Code: v1.CodeNotFound, Field: "name", Message: fmt.Sprintf("template %q not found", name)}
		}
		return t, err
	}
	return t, nil
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request) {
	t, err := s.template(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, t)
}

// deleteTemplate removes a template whose base no linked clone uses.
func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request) {
	t, err := s.template(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if err := s.cfg.Volumes.DeleteTemplate(r.Context(), t); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) deployTemplate(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	args, wait, ok := decodeOp[v1.DeployArgs](s, w, r)
	if !ok {
		return
	}
	if err := vm.ValidateName("name", args.Name); err != nil {
		writeErr(w, err)
		return
	}
	t, err := s.template(ctx, r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	spec := v1.VMSpec{Name: args.Name, CPUs: t.CPUs, MemoryMiB: t.MemoryMiB, Machine: t.Machine}
	for _, d := range t.Disks {
		spec.Disks = append(spec.Disks, v1.Disk{Name: d.Name, Bus: d.Bus, Clone: &v1.CloneSource{Volume: d.Volume, Linked: args.Linked}})
	}
	for _, n := range t.NICs {
		nic := v1.NIC{Mode: n.Mode, Bridge: n.Bridge}
		if n.Mode == v1.NICUser {
			nic.Forwards = args.Forwards
		}
		spec.NICs = append(spec.NICs, nic)
	}
	op, err := s.create(ctx, spec, args.Start, t.Host)
	if err != nil {
		writeErr(w, err)
		return
	}
	s.answerOp(w, r, op, wait)
}

// importVM creates a VM from a foreign disk or appliance (OVA/OVF, VMDK,
// VHD, VHDX, qcow2, raw file or block device).
func (s *Server) importVM(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	// The source is a file on one host (?host=, default this one): it is
	// read there, and the VM is created there (its disks are converted
	// from that file).
	host, err := s.hostOf(ctx, "", r.URL.Query().Get("host"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if !s.servedHere(w, r, host) {
		return
	}
	pin := ""
	if s.cfg.Forward != nil {
		pin = s.cfg.Forward.Self()
	}
	args, wait, ok := decodeOp[v1.ImportArgs](s, w, r)
	if !ok {
		return
	}
	// Left out (0) means "as the appliance says"; anything else is checked
	// like a create's.
	if args.CPUs < 0 {
		writeErr(w, invalidArg("cpus", "must be between 1 and %d, got %d", vm.MaxCPUs, args.CPUs))
		return
	}
	if args.MemoryMiB < 0 {
		writeErr(w, invalidArg("memoryMiB", "must be at least %d MiB, got %d", vm.MinMemoryMiB, args.MemoryMiB))
		return
	}
	if args.Name != "" {
		if err := vm.ValidateName("name", args.Name); err != nil {
			writeErr(w, err)
			return
		}
	}
	if scheme, _, ok := strings.Cut(args.Path, "://"); ok && scheme != "" && !strings.Contains(scheme, "/") {
		writeErr(w, invalidArg("path", "%q is a URL: importing from a URL is out of scope; download the file into an import directory (hangar serve --import-dir) and import it from there", args.Path))
		return
	}
	if !strings.HasPrefix(args.Path, "/") {
		writeErr(w, invalidArg("path", "must be an absolute path, got %q", args.Path))
		return
	}
	hf, err := s.cfg.Volumes.CheckSource(ctx, storage.SourceImport, args.Path) // host path policy, before any read
	if err != nil {
		writeErr(w, errdefs.Field("path", err))
		return
	}
	plans, err := imports.InspectAll(ctx, hf.Path, imports.Options{DeploymentOption: args.DeploymentOption, VM: args.VM})
	if err != nil {
		if errors.Is(err, imports.ErrDeploymentOption) {
			err = &v1.Error{Code: v1.CodeInvalidArgument, Field: "deploymentOption", Message: "deploymentOption: " + err.Error()}
		} else if errors.Is(err, imports.ErrVirtualSystem) {
			err = &v1.Error{Code: v1.CodeInvalidArgument, Field: "vm", Message: "vm: " + err.Error()}
		} else if errors.Is(err, imports.ErrMalformed) || errors.Is(err, os.ErrNotExist) {
			err = &v1.Error{Code: v1.CodeInvalidArgument, Field: "path", Message: "path: " + err.Error()}
		}
		writeErr(w, err)
		return
	}
	if err := checkVAppArgs(plans, args); err != nil {
		writeErr(w, err)
		return
	}
	var vms []newVM
	var names []string
	for _, plan := range plans {
		spec, warnings, err := importSpec(plan, args, len(plans) > 1)
		if err != nil {
			writeErr(w, err)
			return
		}
		vms = append(vms, newVM{spec: spec, start: args.Start, host: pin, warnings: warnings})
		names = append(names, spec.Name)
	}
	for i := range vms {
		vms[i].warnings = append(vms[i].warnings, vappNote(plans, names, i)...)
		for _, msg := range vms[i].warnings {
			s.cfg.Log.Warn("import: the VM leaves out or changes part of the source", "vm", names[i], "path", hf.Path, "warning", msg)
		}
	}
	ops, err := s.createAll(ctx, vms)
	if err != nil {
		writeErr(w, err)
		return
	}
	s.answerOp(w, r, ops[0], wait)
}

// checkVAppArgs refuses, for a multi-VM vApp imported whole, what belongs
// to one VM (sizes, port forwards) and networks none of its VMs has.
func checkVAppArgs(plans []imports.Plan, args v1.ImportArgs) error {
	if len(plans) < 2 {
		return nil
	}
	switch {
	case args.CPUs > 0:
		return invalidArg("cpus", "the vApp's %d VMs keep their own sizes: import one of them (vm) to change it", len(plans))
	case args.MemoryMiB > 0:
		return invalidArg("memoryMiB", "the vApp's %d VMs keep their own sizes: import one of them (vm) to change it", len(plans))
	case len(args.Forwards) > 0:
		return invalidArg("forwards", "the vApp has %d VMs: import one of them (vm) to forward ports to it", len(plans))
	}
	all := imports.Plan{Kind: plans[0].Kind}
	for _, p := range plans {
		all.NICs = append(all.NICs, p.NICs...)
	}
	_, _, err := importNICs(all, v1.ImportArgs{Networks: args.Networks})
	return err
}

// vappNote records where VM i of a multi-VM vApp (names: the VMs created)
// stands in its start order (nothing for a VM of no vApp).
func vappNote(plans []imports.Plan, names []string, i int) []string {
	plan := plans[i]
	if plan.VApp == "" {
		return nil
	}
	var order []string
	for j, p := range plans {
		if p.StartOrder >= 0 {
			order = append(order, fmt.Sprintf("%s (ovf:order %d)", names[j], p.StartOrder))
		} else {
			order = append(order, names[j]+" (unordered)")
		}
	}
	if len(plans) == 1 {
		if plan.StartOrder < 0 {
			return []string{fmt.Sprintf("OVF vApp %q: VM %s is not in its StartupSection; its other VMs are not imported", plan.VApp, names[i])}
		}
		return []string{fmt.Sprintf("OVF vApp %q: VM %s starts in group ovf:order %d; its other VMs are not imported", plan.VApp, names[i], plan.StartOrder)}
	}
	return []string{fmt.Sprintf("OVF vApp %q: its %d VMs are created together; its start order (recorded, not enforced: each starts on its own): %s",
		plan.VApp, len(plans), strings.Join(order, ", "))}
}

// importSpec is the spec of the VM an import plan creates, with the
// warnings of its NIC mapping; of a vApp imported whole (several), args'
// name replaces the vApp's part of each VM's name.
func importSpec(plan imports.Plan, args v1.ImportArgs, several bool) (v1.VMSpec, []string, error) {
	spec := v1.VMSpec{Name: plan.Name, CPUs: plan.CPUs, MemoryMiB: plan.MemoryMiB, CPUModel: "qemu64"}
	switch {
	case args.Name != "" && several && plan.VApp != "" && strings.HasPrefix(plan.Name, plan.VApp+"-"):
		spec.Name = args.Name + strings.TrimPrefix(plan.Name, plan.VApp)
	case args.Name != "":
		spec.Name = args.Name
	}
	if err := vm.ValidateName("name", spec.Name); err != nil {
		return spec, nil, err
	}
	if args.CPUs > 0 {
		spec.CPUs = args.CPUs
	}
	if args.MemoryMiB > 0 {
		spec.MemoryMiB = args.MemoryMiB
	}
	if spec.MemoryMiB == 0 {
		spec.MemoryMiB = 512
	}
	for i, d := range plan.Disks {
		disk := v1.Disk{Name: d.Name, Bus: d.Bus}
		if len(disk.Name) > vm.MaxDiskName || vm.ValidateName("name", disk.Name) != nil {
			disk.Name = fmt.Sprintf("disk%d", i)
		}
		if d.Path == "" { // a blank disk of the appliance
			disk.SizeMiB = (d.VirtualSize + 1<<20 - 1) >> 20
		} else {
			disk.Import = d.API()
		}
		spec.Disks = append(spec.Disks, disk)
	}
	if len(plan.Disks) > vm.MaxDisks || len(plan.NICs) > vm.MaxNICs {
		opt := ""
		if plan.DeploymentOption != "" {
			opt = fmt.Sprintf(" in deployment option %q", plan.DeploymentOption)
		}
		what := "the appliance"
		if several {
			what = "VM " + spec.Name + " of the vApp"
		}
		return spec, nil, invalidArg("path", "%s has %d disks and %d NICs%s; a VM has at most %d disks and %d NICs",
			what, len(plan.Disks), len(plan.NICs), opt, vm.MaxDisks, vm.MaxNICs)
	}
	if several { // each VM maps the networks it has (checkVAppArgs checked them all)
		nets := map[string]string{}
		for _, n := range plan.NICs {
			if to, ok := args.Networks[n.Network]; ok {
				nets[n.Network] = to
			}
		}
		args.Networks = nets
	}
	warnings := slices.Clone(plan.Warnings)
	nics, more, err := importNICs(plan, args)
	if err != nil {
		return spec, nil, err
	}
	spec.NICs = nics
	return spec, append(warnings, more...), nil
}

// importNICs maps an import's NICs: an appliance's in order, with their
// MACs, on the bridge args.Networks names for their network (user-mode NICs
// and a warning for the others); one user-mode NIC for a single disk. The
// forwards go to the first user-mode NIC.
func importNICs(plan imports.Plan, args v1.ImportArgs) ([]v1.NIC, []string, error) {
	appliance := plan.Kind == "ova" || plan.Kind == "ovf"
	if !appliance {
		if len(args.Networks) > 0 {
			return nil, nil, invalidArg("networks", "only an OVA or OVF has networks to map")
		}
		return []v1.NIC{{Mode: v1.NICUser, Forwards: args.Forwards}}, nil, nil
	}
	known := map[string]bool{}
	var names []string
	for _, n := range plan.NICs {
		if !known[n.Network] {
			known[n.Network] = true
			names = append(names, strconv.Quote(n.Network))
		}
	}
	for net, to := range args.Networks {
		if !known[net] {
			if len(names) == 0 {
				return nil, nil, invalidArg("networks", "the appliance has no NIC on network %q (it has no NIC)", net)
			}
			return nil, nil, invalidArg("networks", "the appliance has no NIC on network %q (its NICs are on %s)", net, strings.Join(names, ", "))
		}
		if to == "" {
			return nil, nil, invalidArg("networks", "network %q: map it to a bridge or \"user\"", net)
		}
	}
	var nics []v1.NIC
	var warnings []string
	unmapped := map[string]bool{}
	forwarded := false
	for _, n := range plan.NICs {
		nic := v1.NIC{Mode: v1.NICUser, MAC: n.MAC}
		switch to, ok := args.Networks[n.Network]; {
		case ok && to != v1.NICUser:
			nic = v1.NIC{Mode: v1.NICBridge, Bridge: to, MAC: n.MAC}
		case !ok && !unmapped[n.Network] && n.Network == "":
			unmapped[n.Network] = true
			warnings = append(warnings, "OVF NICs without a network (rasd:Connection) are user-mode NICs")
		case !ok && !unmapped[n.Network]:
			unmapped[n.Network] = true
			warnings = append(warnings, fmt.Sprintf("OVF network %q is not mapped (--network %q): its NICs are user-mode NICs", n.Network, n.Network+"=BRIDGE"))
		}
		if nic.Mode == v1.NICUser && !forwarded {
			nic.Forwards, forwarded = args.Forwards, true
		}
		nics = append(nics, nic)
	}
	if len(args.Forwards) > 0 && !forwarded {
		return nil, nil, invalidArg("forwards", "the appliance has no user-mode NIC to forward ports to")
	}
	return nics, warnings, nil
}

// decodeOp reads an operation request's JSON body and its ?wait=; on a bad
// request it has answered already and returns false.
func decodeOp[T any](s *Server, w http.ResponseWriter, r *http.Request) (T, time.Duration, bool) {
	var args T
	if err := decode(r, &args); err != nil {
		writeErr(w, err)
		return args, 0, false
	}
	wait, err := s.waitParam(r)
	if err != nil {
		writeErr(w, err)
		return args, 0, false
	}
	return args, wait, true
}
