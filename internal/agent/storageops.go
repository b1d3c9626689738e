package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/qemu/blockops"
	"hangar/internal/qemu/config"
	"hangar/internal/qemu/guestagent"
	"hangar/internal/qemu/img"
	"hangar/internal/revert"
	"hangar/internal/storage"
	"hangar/internal/store"
)

// ownedFiles lists what a VM's deletion removes: the volumes it created,
// its snapshot overlays and state files.
func ownedFiles(st v1.VMStatus) []v1.DiskStatus {
	out := append([]v1.DiskStatus(nil), st.Disks...)
	add := func(name, path string) {
		if path != "" {
			out = append(out, v1.DiskStatus{Name: name, Path: path, Created: true})
		}
	}
	for _, sn := range st.Snapshots {
		for d, p := range sn.Overlays {
			add(d+"@"+sn.Name, p)
		}
		add("state@"+sn.Name, sn.StateFile)
	}
	add("suspend-state", st.StateFile)
	return out
}

// tops are the disks as QEMU has them open now (snapshottable disks only:
// cdroms and shared volumes are left out).
func tops(st v1.VMStatus, spec v1.VMSpec) []blockops.Disk {
	skip := map[string]bool{}
	for _, d := range spec.Disks {
		if d.Media == "cdrom" || d.Shareable {
			skip[d.Name] = true
		}
	}
	var out []blockops.Disk
	for _, d := range st.Disks {
		if skip[d.Name] {
			continue
		}
		bd := blockops.Disk{Name: d.Name, Node: d.Node, Path: d.Path, Format: d.Format}
		if bd.Node == "" {
			bd.Node = config.NodeName(d.Name)
		}
		if d.Top != "" {
			bd.Path, bd.Format = d.Top, "qcow2"
		}
		out = append(out, bd)
	}
	return out
}

func (m *machine) vmFile(name string) (string, error) {
	return m.a.cfg.Pool.Resolve("vms", m.name, name)
}

// suspend saves RAM and device state to a file in the VM's pool and stops
// QEMU; start or resume continues from it.
func (m *machine) suspend(ctx context.Context, progress progressFunc) error {
	if m.inst == nil {
		return errdefs.Precondition("suspend %s: vm is not running", m.name)
	}
	path, err := m.vmFile("suspend.state")
	if err != nil {
		return err
	}
	if err := m.saveState(ctx, path, func(f float64) { progress(0.1+0.8*f, "saving memory") }); err != nil {
		return err
	}
	if err := m.setStatus(ctx, func(st *v1.VMStatus) { st.StateFile = path }); err != nil {
		return err
	}
	inst := m.inst
	m.inst = nil
	if err := inst.Quit(ctx); err != nil {
		return err
	}
	m.deleteTaps(ctx)
	return m.setStatus(ctx, func(st *v1.VMStatus) {
		st.State, st.PID, st.StartedAt, st.Reason = v1.StateSuspended, 0, nil, "suspended to "+filepath.Base(path)
	})
}

// saveState writes the running VM's state to path (atomically). The VM is
// left paused.
func (m *machine) saveState(ctx context.Context, path string, progress func(float64)) error {
	tmp := path + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("save state of %s: %w", m.name, err)
	}
	err = blockops.SaveState(ctx, m.inst.Mon, f, progress)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp) // SaveState resumed the VM if it paused it
		return fmt.Errorf("save state of %s: %w", m.name, err)
	}
	return nil
}

func (m *machine) media(ctx context.Context, a v1.MediaArgs) error {
	if m.inst == nil {
		return nil // the spec carries the medium for the next start
	}
	id := "dev-" + a.Disk
	if a.Image == "" {
		return m.inst.Mon.Execute(ctx, "eject", map[string]any{"id": id, "force": true}, nil)
	}
	iso, err := m.isoFile(ctx, a.Image)
	if err != nil {
		return errdefs.Field("image", err)
	}
	return m.changeMedium(ctx, id, iso.Path)
}

// snapshot puts an overlay on every disk at one instant (and with Memory
// saves RAM and device state at that same instant).
func (m *machine) snapshot(ctx context.Context, a v1.SnapshotArgs, progress progressFunc) error {
	spec, st, err := m.load(ctx)
	if err != nil {
		return err
	}
	for _, sn := range st.Snapshots {
		if sn.Name == a.Name {
			return nil // done by an earlier attempt
		}
	}
	disks := tops(st, spec)
	sn := v1.Snapshot{Name: a.Name, Created: time.Now().UTC(), Memory: a.Memory, Overlays: map[string]string{}, Bases: map[string]string{}}
	taken := len(disks) > 0
	for _, d := range disks {
		p, err := m.vmFile(d.Name + "." + a.Name + ".qcow2")
		if err != nil {
			return err
		}
		sn.Overlays[d.Name], sn.Bases[d.Name] = p, d.Path
		taken = taken && d.Path == p
	}
	if taken {
		// An earlier attempt switched QEMU to the overlays (the transaction
		// is all-or-nothing) but died before recording it.
		for _, d := range disks {
			info, err := storage.Info(ctx, d.Path)
			if err != nil {
				return err
			}
			sn.Bases[d.Name] = info.FullBacking
		}
		sn.Memory = false
		if err := m.setStatus(ctx, func(st *v1.VMStatus) { st.Snapshots = append(st.Snapshots, sn) }); err != nil {
			return err
		}
		if a.Memory {
			return errdefs.Precondition("snapshot %s was interrupted after its disks were taken: it holds the disks only, not the memory", a.Name)
		}
		return nil
	}
	for _, p := range sn.Overlays {
		_ = os.Remove(p) // a leftover of an interrupted attempt, not in use: QEMU writes d.Path
	}
	rev := revert.New()
	defer rev.Fail()
	newTops := map[string]blockops.Disk{}
	if m.inst == nil {
		if a.Memory {
			return errdefs.Precondition("a snapshot with memory needs a running vm")
		}
		for _, d := range disks {
			if err := qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", d.Format, "-b", d.Path, sn.Overlays[d.Name]); err != nil {
				return err
			}
			p := sn.Overlays[d.Name]
			rev.Add(func() { _ = os.Remove(p) })
			newTops[d.Name] = blockops.Disk{Name: d.Name, Node: config.NodeName(d.Name), Path: p, Format: "qcow2"}
		}
	} else {
		qs, err := m.inst.Mon.QueryStatus(ctx)
		if err != nil {
			return err
		}
		if a.Memory && qs.Running {
			if err := m.inst.Mon.Stop(ctx); err != nil {
				return err
			}
			defer func() { _ = m.inst.Mon.Cont(context.Background()) }()
		}
		progress(0.1, "snapshotting disks")
		nt, err := blockops.Snapshot(ctx, m.inst.Mon, disks, sn.Overlays)
		if err != nil {
			return err
		}
		for _, d := range nt {
			newTops[d.Name] = d
		}
		if a.Memory {
			progress(0.3, "saving memory")
			sf, err := m.vmFile("snap-" + a.Name + ".state")
			if err == nil {
				err = m.saveState(ctx, sf, func(f float64) { progress(0.3+0.6*f, "saving memory") })
			}
			if err != nil {
				// The disks are switched already: keep a disk-only snapshot.
				sn.Memory = false
				if serr := m.recordSnapshot(ctx, sn, newTops); serr != nil {
					return errors.Join(err, serr)
				}
				rev.Success()
				return fmt.Errorf("snapshot %s holds the disks only: saving memory failed: %w", a.Name, err)
			}
			sn.StateFile = sf
		}
	}
	if err := m.recordSnapshot(ctx, sn, newTops); err != nil {
		return err
	}
	rev.Success()
	return nil
}

func (m *machine) recordSnapshot(ctx context.Context, sn v1.Snapshot, newTops map[string]blockops.Disk) error {
	return m.setStatus(ctx, func(st *v1.VMStatus) {
		for i := range st.Disks {
			if t, ok := newTops[st.Disks[i].Name]; ok {
				st.Disks[i].Top, st.Disks[i].Node = t.Path, t.Node
			}
		}
		st.Snapshots = append(st.Snapshots, sn)
	})
}

// commitSnapshot merges the newest snapshot's overlays into their bases —
// live with block-commit when the VM runs — and forgets the snapshot.
func (m *machine) commitSnapshot(ctx context.Context, name string, progress progressFunc) error {
	st, err := m.a.inv.Status(ctx, m.name)
	if err != nil {
		return err
	}
	n := len(st.Snapshots)
	for k := 0; k < n-1; k++ {
		if st.Snapshots[k].Name == name {
			return m.commitInner(ctx, st, k, progress)
		}
	}
	if n == 0 || st.Snapshots[n-1].Name != name {
		return nil // merged by an earlier attempt
	}
	sn := st.Snapshots[n-1]
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		return err
	}
	disks := tops(st, spec)
	newTops := map[string]blockops.Disk{}
	for i, d := range disks {
		overlay := sn.Overlays[d.Name]
		if overlay == "" || d.Path != overlay {
			continue
		}
		report := func(f float64) {
			progress((float64(i)+f)/float64(len(disks)), "merging "+d.Name)
		}
		base := blockops.Disk{Name: d.Name, Node: config.NodeName(d.Name), Path: sn.Bases[d.Name]}
		if m.inst != nil {
			if base, err = blockops.Commit(ctx, m.inst.Mon, d, report); err != nil {
				return err
			}
		} else if err := qemuImg(ctx, "commit", "-q", "-f", "qcow2", "-d", overlay); err != nil {
			return err
		}
		newTops[d.Name] = base
	}
	if err := m.setStatus(ctx, func(st *v1.VMStatus) {
		for i := range st.Disks {
			if t, ok := newTops[st.Disks[i].Name]; ok {
				st.Disks[i].Top, st.Disks[i].Node = t.Path, t.Node
				if t.Path == st.Disks[i].Path {
					st.Disks[i].Top = ""
				}
			}
		}
		st.Snapshots = st.Snapshots[:len(st.Snapshots)-1]
	}); err != nil {
		return err
	}
	removeSnapshotFiles(sn)
	return nil
}

// revertSnapshot goes back to a snapshot's point: newer snapshots and the
// changes since are dropped; a running VM continues from the snapshot's
// memory when it has one, else boots from the snapshot's disks. With
// discard the snapshot itself is dropped too.
func (m *machine) revertSnapshot(ctx context.Context, name string, discard bool, progress progressFunc) error {
	st, err := m.a.inv.Status(ctx, m.name)
	if err != nil {
		return err
	}
	idx := -1
	for i, sn := range st.Snapshots {
		if sn.Name == name {
			idx = i
		}
	}
	if idx < 0 {
		return nil // done by an earlier attempt (discard)
	}
	sn := st.Snapshots[idx]
	wasRunning := m.inst != nil || st.State == v1.StateRunning || st.State == v1.StatePaused
	if m.inst != nil {
		progress(0.1, "stopping qemu")
		inst := m.inst
		m.inst = nil
		if err := inst.Quit(ctx); err != nil {
			return err
		}
		m.deleteTaps(ctx)
	}
	for _, newer := range st.Snapshots[idx+1:] {
		removeSnapshotFiles(newer)
	}
	progress(0.3, "resetting disks")
	for d, overlay := range sn.Overlays {
		_ = os.Remove(overlay)
		if discard {
			continue
		}
		info, err := storage.Info(ctx, sn.Bases[d])
		if err != nil {
			return err
		}
		if err := qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", info.Format, "-b", sn.Bases[d], overlay); err != nil {
			return err
		}
	}
	keep := idx + 1
	if discard {
		keep = idx
	}
	if err := m.setStatus(ctx, func(st *v1.VMStatus) {
		for i := range st.Disks {
			d := &st.Disks[i]
			if _, ok := sn.Overlays[d.Name]; !ok {
				continue
			}
			d.Top, d.Node = sn.Overlays[d.Name], config.NodeName(d.Name)
			if discard {
				d.Top = sn.Bases[d.Name]
				if d.Top == d.Path {
					d.Top = ""
				}
			}
		}
		st.Snapshots = st.Snapshots[:keep]
		st.State, st.PID, st.StartedAt = v1.StateStopped, 0, nil
		st.Reason = "reverted to snapshot " + name
	}); err != nil {
		return err
	}
	if !wasRunning {
		if discard && sn.StateFile != "" {
			_ = os.Remove(sn.StateFile)
		}
		return nil
	}
	progress(0.6, "starting qemu")
	if sn.Memory {
		err = m.startFrom(ctx, sn.StateFile)
	} else {
		err = m.startFrom(ctx, "")
	}
	if discard && sn.StateFile != "" {
		_ = os.Remove(sn.StateFile)
	}
	return err
}

// toTemplate turns a stopped VM into a read-only template: its disks are
// flattened into templates/<name>/ and the VM is removed.
func (m *machine) toTemplate(ctx context.Context, tname string, progress progressFunc) error {
	if m.inst != nil {
		return errdefs.Precondition("template from %s: the vm runs", m.name)
	}
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil // converted by an earlier attempt
		}
		return err
	}
	st, err := m.a.inv.Status(ctx, m.name)
	if err != nil {
		return err
	}
	pool := m.a.cfg.Pool
	t := v1.Template{Name: tname, Host: m.a.cfg.Host, Pool: pool.Name, CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		Machine: spec.Machine, Source: m.name, Created: time.Now().UTC()}
	for _, n := range spec.NICs {
		t.NICs = append(t.NICs, v1.NIC{Mode: n.Mode, Bridge: n.Bridge})
	}
	rev := revert.New()
	defer rev.Fail()
	tdir, err := pool.Resolve("templates", tname)
	if err != nil {
		return err
	}
	rev.Add(func() { _ = os.RemoveAll(tdir) })
	disks := tops(st, spec)
	for i, d := range disks {
		rel, err := filepath.Rel(pool.Path, d.Path)
		if err != nil || strings.HasPrefix(rel, "..") {
			return errdefs.Precondition("template from %s: disk %s (%s) is not in pool %s", m.name, d.Name, d.Path, pool.Name)
		}
		dst := "templates/" + tname + "/" + d.Name + ".qcow2"
		lo, span := float64(i)/float64(len(disks)), 1/float64(len(disks))
		if err := m.a.io.run(ctx, func() error {
			var total int64
			if src, err := pool.Volume(ctx, rel); err == nil {
				total = src.VirtualSize
			}
			_, err := pool.Copy(ctx, rel, dst, "qcow2", copyProgress(progress, lo, span*0.9, "copying "+d.Name, total))
			return err
		}); err != nil && !errors.Is(err, storage.ErrExists) {
			return err
		}
		full, _ := pool.Resolve(dst)
		if err := os.Chmod(full, 0o444); err != nil {
			return err
		}
		bus := "virtio"
		for _, sd := range spec.Disks {
			if sd.Name == d.Name {
				bus = sd.Bus
			}
		}
		t.Disks = append(t.Disks, v1.Disk{Name: d.Name, Bus: bus, Volume: pool.Name + "/" + dst})
	}
	if _, err := m.a.cfg.Store.Txn(ctx, nil, append(m.releaseUID(ctx),
		store.PutOp(inventory.TemplateKey(tname), inventory.Marshal(t), store.MustNotExist),
		store.DeleteOp(inventory.StatusKey(m.name), store.AnyRevision))...); err != nil {
		return fmt.Errorf("record template %s: %w", tname, err)
	}
	rev.Success()
	m.handOff = true // the master removes the vm's spec, owner and booking
	if err := pool.DeleteVM(m.name, ownedFiles(st)); err != nil {
		m.log.Warn("remove the converted vm's volumes", "err", err)
	}
	if dir, err := m.a.runDir(m.name); err == nil {
		_ = os.RemoveAll(dir)
	}
	if dir, err := m.a.logDir(m.name); err == nil {
		_ = os.RemoveAll(dir)
	}
	m.gone = true
	return nil
}

// clone copies this VM's disks into the VM the manager recorded as
// args.Name: at one instant while it runs (crash-consistent), or plainly
// when it is stopped.
func (m *machine) clone(ctx context.Context, a v1.CloneArgs, progress progressFunc) error {
	dst, _, err := m.a.inv.Spec(ctx, a.Name)
	if err != nil {
		return err
	}
	spec, st, err := m.load(ctx)
	if err != nil {
		return err
	}
	rev := revert.New()
	defer rev.Fail()
	rev.Add(func() {
		bg := context.Background()
		_, _ = m.a.cfg.Store.Txn(bg, nil, store.DeleteOp(inventory.StatusKey(a.Name), store.AnyRevision))
		m.handOff = true // the master removes the clone's spec
		_ = m.a.cfg.Pool.DeleteVM(a.Name, nil)
	})
	targets := map[string]string{}
	var out []v1.DiskStatus
	for _, d := range dst.Disks {
		switch {
		case d.Media == "cdrom":
			out = append(out, v1.DiskStatus{Name: d.Name, Path: d.Image, Format: "raw"})
		case d.Shareable:
			pn, rel, _ := strings.Cut(d.Volume, "/")
			pool, err := m.a.pool(ctx, pn)
			if err != nil {
				return err
			}
			p, err := pool.Resolve(rel)
			if err != nil {
				return err
			}
			out = append(out, v1.DiskStatus{Name: d.Name, Path: p, Format: "raw"})
		default:
			p, err := m.a.cfg.Pool.Resolve("vms", a.Name, d.Name+".qcow2")
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				return err
			}
			_ = os.Remove(p)
			rev.Add(func() { _ = os.Remove(p) })
			targets[d.Name] = p
			out = append(out, v1.DiskStatus{Name: d.Name, Path: p, Format: "qcow2", Created: true})
		}
	}
	disks := tops(st, spec)
	report := func(f float64) { progress(0.05+0.9*f, "copying disks") }
	consistency := "copied while stopped"
	if m.inst != nil {
		consistency = "crash-consistent"
		dir, err := m.a.cfg.Pool.VMDir(a.Name)
		if err == nil {
			err = m.shareForBackup(ctx, dir) // its QEMU writes the copies
		}
		if err != nil {
			return fmt.Errorf("clone %s: %w", m.name, err)
		}
		thaw := m.freeze(ctx)
		if thaw != nil {
			consistency = "filesystem-consistent"
		}
		err = blockops.Backup(ctx, m.inst.Mon, disks, targets, report)
		if thaw != nil {
			thaw() // always, also when the copy failed
		}
		if err != nil {
			return err
		}
	} else {
		pool := m.a.cfg.Pool
		for i, d := range disks {
			lo := float64(i) / float64(len(disks))
			src, err1 := filepath.Rel(pool.Path, d.Path)
			dst, err2 := filepath.Rel(pool.Path, targets[d.Name])
			if err1 != nil || err2 != nil || strings.HasPrefix(src, "..") {
				return errdefs.Precondition("clone %s: disk %s (%s) is not in pool %s", m.name, d.Name, d.Path, pool.Name)
			}
			if err := m.a.io.run(ctx, func() error {
				_, err := pool.Copy(ctx, src, dst, "qcow2", func(f float64) { report(lo + f/float64(len(disks))) })
				return err
			}); err != nil {
				return err
			}
		}
	}
	clone := v1.VMStatus{State: v1.StateStopped, Host: m.a.cfg.Host, Disks: out,
		Reason: "cloned from " + m.name + " (" + consistency + ")", UpdatedAt: time.Now().UTC()}
	m.a.nameDisks(ctx, &clone)
	if err := m.a.inv.PutStatus(ctx, a.Name, clone); err != nil {
		return err
	}
	rev.Success()
	m.log.Info("vm cloned", "clone", a.Name, "live", m.inst != nil, "consistency", consistency)
	return nil
}

func qemuImg(ctx context.Context, args ...string) error { return img.Run(ctx, nil, args...) }

// VolumeInfo describes a pool volume ("pool/name").
func (a *Agent) VolumeInfo(ctx context.Context, ref string) (v1.Volume, error) {
	p, name, err := a.volumeRef(ctx, ref)
	if err != nil {
		return v1.Volume{}, err
	}
	v, err := p.Volume(ctx, name)
	if err != nil {
		return v1.Volume{}, fmt.Errorf("volume %s: %w", ref, err)
	}
	return toAPIVolume(v), nil
}

func toAPIVolume(v storage.Volume) v1.Volume {
	return v1.Volume{Pool: v.Pool, Name: v.Name, Format: v.Format, VirtualSize: v.VirtualSize, ActualSize: v.ActualSize,
		Backing: v.Backing, ChainDepth: v.ChainDepth}
}

// DeleteTemplate removes a template's volumes and record; a template whose
// volumes back linked clones stays.
func (a *Agent) DeleteTemplate(ctx context.Context, t v1.Template) error {
	t, err := a.inv.Template(ctx, t.Name) // the stored record, checked
	if err != nil {
		return err
	}
	p, err := a.pool(ctx, t.Pool)
	if err != nil {
		return err
	}
	for _, d := range t.Disks {
		_, name, _ := strings.Cut(d.Volume, "/")
		deps, err := p.Dependents(ctx, name)
		if err != nil {
			return err
		}
		if len(deps) > 0 {
			return fmt.Errorf("template %s: %d linked clones use %s (%s): %w", t.Name, len(deps), d.Name, strings.Join(deps, ", "), storage.ErrInUse)
		}
	}
	if err := a.cfg.Store.Delete(ctx, inventory.TemplateKey(t.Name), store.AnyRevision); err != nil {
		return err
	}
	dir, err := p.Resolve("templates", t.Name)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	for _, d := range t.Disks {
		_, name, _ := strings.Cut(d.Volume, "/")
		a.releaseFileGroup(ctx, p.Name, name)
	}
	return nil
}

// resize grows one of the VM's disks: live through QEMU while it runs,
// with qemu-img when it does not.
func (m *machine) resize(ctx context.Context, a v1.ResizeArgs) error {
	spec, st, err := m.load(ctx)
	if err != nil {
		return err
	}
	size := a.SizeMiB << 20
	for _, d := range tops(st, spec) {
		if d.Name != a.Disk {
			continue
		}
		info, err := m.a.DiskInfo(ctx, d.Path) // in a pool, its chain too
		if err != nil {
			return err
		}
		if size < info.VirtualSize {
			return errdefs.Field("sizeMiB", fmt.Errorf("disk %s is %d MiB: disks only grow: %w", d.Name, info.VirtualSize>>20, errdefs.ErrInvalid))
		}
		if m.inst != nil {
			return blockops.BlockResize(ctx, m.inst.Mon, d, size)
		}
		return qemuImg(ctx, "resize", "-q", "-f", d.Format, d.Path, fmt.Sprint(size))
	}
	return errdefs.Field("disk", fmt.Errorf("vm %s has no disk %q: %w", m.name, a.Disk, errdefs.ErrInvalid))
}

// freeze asks the guest agent, if one answers, to freeze the guest's
// filesystems; it returns the thaw to call, or nil when nothing was frozen
// (no agent: the copy is crash-consistent).
func (m *machine) freeze(ctx context.Context) func() {
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	runDir, err := m.a.runDir(m.name)
	if err != nil {
		return nil
	}
	ga, err := guestagent.Dial(sctx, filepath.Join(runDir, config.GuestAgentSocket))
	if err != nil {
		m.log.Info("no guest agent: copying crash-consistent", "err", err)
		return nil
	}
	fctx, cancel2 := context.WithTimeout(ctx, 30*time.Second)
	defer cancel2()
	if _, err := ga.Freeze(fctx); err != nil {
		m.log.Warn("guest agent could not freeze; copying crash-consistent", "err", err)
		tctx, cancel3 := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel3()
		_, _ = ga.Thaw(tctx) // a partial freeze must not stay
		ga.Close()
		return nil
	}
	return func() {
		tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := ga.Thaw(tctx); err != nil {
			m.log.Error("guest agent thaw failed", "err", err)
		}
		ga.Close()
	}
}

// reconcileTops reads from QEMU which file each disk writes now and records
// it: after an agent restart an interrupted snapshot or commit may have
// switched files without the status saying so.
func (m *machine) reconcileTops(ctx context.Context) error {
	var blocks []struct {
		QDev     string `json:"qdev"`
		Inserted *struct {
			NodeName string `json:"node-name"`
			File     string `json:"file"`
		} `json:"inserted"`
	}
	if err := m.inst.Mon.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return fmt.Errorf("query-block: %w", err)
	}
	return m.setStatus(ctx, func(st *v1.VMStatus) {
		for i := range st.Disks {
			d := &st.Disks[i]
			for _, b := range blocks {
				if b.Inserted == nil || !strings.HasPrefix(b.Inserted.File, "/") || !slicesContains(strings.Split(b.QDev, "/"), "dev-"+d.Name) {
					continue
				}
				d.Node, d.Top = b.Inserted.NodeName, b.Inserted.File
				if d.Top == d.Path {
					d.Top = ""
				}
			}
		}
	})
}

func slicesContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// commitInner deletes snapshot k that has newer ones above it: its overlay
// (the changes between it and snapshot k+1) is merged into its base, and
// snapshot k+1 then builds on that base. Live with a non-active
// block-commit while the VM runs, with qemu-img commit + rebase when not.
func (m *machine) commitInner(ctx context.Context, st v1.VMStatus, k int, progress progressFunc) error {
	sn, above := st.Snapshots[k], st.Snapshots[k+1]
	spec, _, err := m.a.inv.Spec(ctx, m.name)
	if err != nil {
		return err
	}
	disks := tops(st, spec)
	for i, d := range disks {
		overlay := sn.Overlays[d.Name]
		if overlay == "" {
			continue
		}
		report := func(f float64) { progress((float64(i)+f)/float64(len(disks)), "merging "+d.Name) }
		if m.inst != nil {
			chain, err := blockops.Chain(ctx, m.inst.Mon, d)
			if err != nil {
				return err
			}
			if !slicesContains(chain, overlay) {
				continue // merged by an earlier attempt
			}
			if err := blockops.CommitBelow(ctx, m.inst.Mon, d, overlay, report); err != nil {
				return err
			}
			continue
		}
		info, err := storage.Info(ctx, sn.Bases[d.Name])
		if err != nil {
			return err
		}
		if err := qemuImg(ctx, "commit", "-q", "-f", "qcow2", "-d", overlay); err != nil {
			return err
		}
		if err := qemuImg(ctx, "rebase", "-u", "-f", "qcow2", "-F", info.Format, "-b", sn.Bases[d.Name], above.Overlays[d.Name]); err != nil {
			return err
		}
	}
	if err := m.setStatus(ctx, func(st *v1.VMStatus) {
		for i := range st.Snapshots {
			if st.Snapshots[i].Name == above.Name {
				for d, b := range sn.Bases {
					st.Snapshots[i].Bases[d] = b
				}
			}
		}
		kept := st.Snapshots[:0]
		for _, x := range st.Snapshots {
			if x.Name != sn.Name {
				kept = append(kept, x)
			}
		}
		st.Snapshots = kept
	}); err != nil {
		return err
	}
	removeSnapshotFiles(sn)
	return nil
}

// removeSnapshotFiles deletes a dropped snapshot's overlays and state file.
func removeSnapshotFiles(sn v1.Snapshot) {
	for _, p := range sn.Overlays {
		_ = os.Remove(p)
	}
	if sn.StateFile != "" {
		_ = os.Remove(sn.StateFile)
	}
}
