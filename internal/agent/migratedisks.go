package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	v1 "hangar/api/v1"
	"hangar/internal/migrate"
	"hangar/internal/qemu"
	"hangar/internal/qemu/config"
	"hangar/internal/storage"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// The local disks of a migrating VM. The source reports each disk on one of
// its local pools (pool, volume name, format, virtual size); the target
// makes an empty volume of the same name in its own pool (for the source's
// own pool) or its pool of that name, and
// exports it over NBD; the source mirrors into it. The target's volumes are
// the VM's once it runs there; before, an abort deletes them. The source's
// files go only after the switch-over, once the target runs the guest.

// volumeAt finds the pool of this host holding the file at path and the
// volume's name in it.
func (a *Agent) volumeAt(ctx context.Context, path string) (*storage.Pool, string, error) {
	pools, err := a.allPools(ctx)
	if err != nil {
		return nil, "", err
	}
	for _, p := range pools {
		if rel, err := filepath.Rel(p.Path, path); err == nil && filepath.IsLocal(rel) {
			return p, filepath.ToSlash(rel), nil
		}
	}
	return nil, "", fmt.Errorf("disk file %s: %w", path, storage.ErrOutsidePool)
}

// nameDisks sets each disk's Pool and Volume from its path: the pool of
// this host that holds the file and the volume's name in it (none for a
// file outside the pools).
func (a *Agent) nameDisks(ctx context.Context, st *v1.VMStatus) {
	for i := range st.Disks {
		d := &st.Disks[i]
		d.Pool, d.Volume = "", ""
		if d.Path == "" {
			continue
		}
		if rel, err := filepath.Rel(a.cfg.Pool.Path, d.Path); err == nil && filepath.IsLocal(rel) {
			d.Pool, d.Volume = a.cfg.Pool.Name, filepath.ToSlash(rel)
		} else if p, name, err := a.volumeAt(ctx, d.Path); err == nil {
			d.Pool, d.Volume = p.Name, name
		}
	}
}

// localDisks lists the VM's disks on this host's local (not shared) pools,
// as the migration record carries them.
func (m *machine) localDisks(ctx context.Context, spec v1.VMSpec, st v1.VMStatus) ([]migrate.Disk, error) {
	var out []migrate.Disk
	for _, d := range spec.Disks {
		if d.Media == "cdrom" {
			continue
		}
		var ds *v1.DiskStatus
		for i := range st.Disks {
			if st.Disks[i].Name == d.Name {
				ds = &st.Disks[i]
			}
		}
		if ds == nil || ds.Path == "" {
			return nil, fmt.Errorf("disk %s has no volume", d.Name)
		}
		if ds.Top != "" && ds.Top != ds.Path {
			return nil, fmt.Errorf("disk %s has snapshot overlays", d.Name)
		}
		p, name, err := m.a.volumeAt(ctx, ds.Path)
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", d.Name, err)
		}
		if p.Type == storage.TypeShared {
			continue
		}
		vol, err := p.Volume(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", d.Name, err)
		}
		out = append(out, migrate.Disk{Name: d.Name, Pool: p.Name, Volume: name, Format: vol.Format, SizeBytes: vol.VirtualSize})
	}
	return out, nil
}

// migrationReport is the source's first step: it reports the VM's local
// disks for the master's check (once, conditioned on the pending record).
func (m *machine) migrationReport(ctx context.Context, st migrate.State) {
	part := &migrate.DisksPart{}
	spec, status, err := m.load(ctx)
	if err == nil {
		part.Disks, err = m.localDisks(ctx, spec, status)
	}
	if err == nil {
		err = migrate.ValidateDisks(part.Disks)
	}
	if err != nil {
		part.Disks, part.Error = nil, err.Error()
	}
	if err := migrate.Claim(ctx, m.a.cfg.Store, m.name, migrate.PartDisks, st.RecRev, part); err != nil {
		m.log.Info("migration disks not reported", "err", err)
		return
	}
	m.log.Info("migration: local disks reported", "disks", len(part.Disks), "err", part.Error)
}

// targetVolume is the path of a migrated disk's volume on this host, the
// target of rec: the same volume name in this host's own pool (for a disk
// of the source's own pool) or in its pool of the same name.
func (a *Agent) targetVolume(ctx context.Context, rec migrate.Record, d migrate.Disk) (*storage.Pool, string, error) {
	d = d.OnTarget(rec)
	p, err := a.pool(ctx, d.Pool)
	if err != nil {
		return nil, "", fmt.Errorf("disk %s: %w", d.Name, err)
	}
	if p.Type == storage.TypeShared {
		return nil, "", fmt.Errorf("disk %s: pool %s is shared here, local on the source: %w", d.Name, d.Pool, storage.ErrInvalid)
	}
	path, err := p.Resolve(d.Volume)
	if err != nil {
		return nil, "", fmt.Errorf("disk %s: %w", d.Name, err)
	}
	return p, path, nil
}

// seedPath is the VM's cloud-init seed in this host's default pool.
func (m *machine) seedPath() (string, error) { return m.vmFile("cidata.iso") }

// migratedDisks is the VM's disk status on this host, from the status the
// source wrote: its local disks are the volumes this host made from the
// record, its cloud-init seed is this host's own (written again from the
// spec), the rest (shared volumes, cdroms) as it was. With seed false the
// seed is left out (prepareLaunch writes it).
func (m *machine) migratedDisks(ctx context.Context, rec migrate.Record, spec v1.VMSpec, src []v1.DiskStatus, seed bool) ([]v1.DiskStatus, error) {
	local := map[string]migrate.Disk{}
	for _, d := range rec.Disks {
		local[d.Name] = d
	}
	var out []v1.DiskStatus
	for _, ds := range src {
		switch d, ok := local[ds.Name]; {
		case ok:
			_, path, err := m.a.targetVolume(ctx, rec, d)
			if err != nil {
				return nil, err
			}
			out = append(out, v1.DiskStatus{Name: ds.Name, Path: path, Format: d.Format, Created: ds.Created, Node: config.NodeName(ds.Name)})
		case ds.Name == vm.CloudInitDisk && spec.CloudInit != nil:
			if !seed {
				continue
			}
			path, err := m.seedPath()
			if err != nil {
				return nil, err
			}
			out = append(out, v1.DiskStatus{Name: ds.Name, Path: path, Format: "raw", Created: true, Node: ds.Node})
		default:
			out = append(out, ds)
		}
	}
	named := v1.VMStatus{Disks: out}
	m.a.nameDisks(ctx, &named)
	return named.Disks, nil
}

// targetVolumesFree checks that no volume of rec's local disks exists
// here: a file already there is not this migration's, and is never listed
// for deletion nor touched. The caller checks before it lists the volumes
// (its part, its journal), then makes them (createTargetVolumes).
func (m *machine) targetVolumesFree(ctx context.Context, rec migrate.Record) error {
	for _, d := range rec.Disks {
		_, path, err := m.a.targetVolume(ctx, rec, d)
		if err != nil {
			return err
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("disk %s: volume %s exists on this host already: %w", d.Name, d.OnTarget(rec).Ref(), storage.ErrExists)
		}
	}
	return nil
}

// createTargetVolumes makes the empty volumes of rec's local disks here
// (a name taken meanwhile is refused by the pool).
func (m *machine) createTargetVolumes(ctx context.Context, rec migrate.Record) error {
	for _, d := range rec.Disks {
		p, _, err := m.a.targetVolume(ctx, rec, d)
		if err != nil {
			return err
		}
		if _, err := p.CreateVolume(ctx, d.Volume, d.Format, d.SizeBytes); err != nil {
			return fmt.Errorf("disk %s: %w", d.Name, err)
		}
	}
	return nil
}

// targetDisksOf are the exports the target part lists for rec's disks.
func targetDisksOf(rec migrate.Record) []migrate.TargetDisk {
	out := make([]migrate.TargetDisk, len(rec.Disks))
	for i, d := range rec.Disks {
		out[i] = migrate.TargetDisk{Name: d.Name, Volume: d.OnTarget(rec).Ref(), Export: config.NodeName(d.Name)}
	}
	return out
}

// removeTargetVolumes deletes what this host made for a migration that
// did not end here: the volumes its part lists, the seed and the VM's
// directory when empty. Idempotent: a volume already gone is fine.
func (m *machine) removeTargetVolumes(ctx context.Context, disks []migrate.TargetDisk) error {
	var errs []error
	for _, d := range disks {
		pool, name, err := m.a.volumeRef(ctx, d.Volume)
		if err == nil && pool.Type == storage.TypeShared {
			err = fmt.Errorf("volume %s is on a shared pool: not this migration's", d.Volume)
		}
		if err == nil {
			err = pool.DeleteVolume(ctx, name)
		}
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			errs = append(errs, fmt.Errorf("delete migrated volume %s: %w", d.Volume, err))
		}
	}
	m.removeVMDir()
	return errors.Join(errs...)
}

// removeVMDir removes the VM's seed and its directory of this host's
// default pool when nothing else is left in it.
func (m *machine) removeVMDir() {
	if seed, err := m.seedPath(); err == nil {
		_ = os.Remove(seed)
	}
	if dir, err := m.a.cfg.Pool.VMDir(m.name); err == nil {
		_ = os.Remove(dir) // only when empty
	}
}

// removeSourceVolumes deletes the source's local disks once the target
// runs the guest (and images brought in for them that nothing else builds
// on). Idempotent.
func (m *machine) removeSourceVolumes(ctx context.Context, rec migrate.Record) error {
	var errs []error
	for _, d := range rec.Disks {
		p, err := m.a.pool(ctx, d.Pool)
		if err == nil && p.Type == storage.TypeShared {
			err = fmt.Errorf("pool %s is shared: its volumes are not copied", d.Pool)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("disk %s: %w", d.Name, err))
			continue
		}
		vol, err := p.Volume(ctx, d.Volume)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err == nil {
			err = p.DeleteVolume(ctx, d.Volume)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("delete disk %s (%s): %w", d.Name, d.Ref(), err))
			continue
		}
		if vol.Backing != "" {
			if _, err := p.ReleaseImage(ctx, vol.Backing); err != nil {
				errs = append(errs, err)
			}
		}
	}
	m.removeVMDir()
	return errors.Join(errs...)
}

// targetJournal is this host's own record of the volumes it made for an
// incoming migration (<data-dir>/migrations/<vm>.json): written before the
// first volume is made, removed once the guest runs here or the volumes
// are deleted. A target that comes back after the migration's records are
// gone (a dead target counts as settled: the master ends the migration
// without it) still knows what to delete.
type targetJournal struct {
	OpID  string               `json:"opID"`
	Disks []migrate.TargetDisk `json:"disks"`
}

// journalDir holds the target journals.
func (a *Agent) journalDir() string { return filepath.Join(a.cfg.DataDir, "migrations") }

func (m *machine) journalPath() (string, error) {
	if err := vm.ValidateName("name", m.name); err != nil {
		return "", fmt.Errorf("migration journal: %w", err)
	}
	return filepath.Join(m.a.journalDir(), m.name+".json"), nil
}

// writeJournal records j durably (a new file renamed into place, synced).
func (m *machine) writeJournal(j targetJournal) error {
	path, err := m.journalPath()
	if err != nil {
		return err
	}
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("migration journal: %w", err)
	}
	tmp := path + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("migration journal: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("migration journal: %w", err)
	}
	return nil
}

// readJournal returns this host's journal of the VM (nil: none), checked
// like a record: the volumes it names are deleted.
func (m *machine) readJournal() (*targetJournal, error) {
	path, err := m.journalPath()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("migration journal: %w", err)
	}
	var j targetJournal
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, fmt.Errorf("migration journal %s: %w", path, err)
	}
	if err := vm.ValidateOpID("opID", j.OpID); err != nil {
		return nil, fmt.Errorf("migration journal %s: %w", path, err)
	}
	if err := migrate.ValidateTargetDisks(j.Disks); err != nil {
		return nil, fmt.Errorf("migration journal %s: %w", path, err)
	}
	return &j, nil
}

func (m *machine) removeJournal() {
	if path, err := m.journalPath(); err == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("remove migration journal", "err", err)
		}
	}
}

// journaledVMs are the VMs this host has a target journal of (at start:
// each gets a look at its migration, or at its leftovers).
func (a *Agent) journaledVMs() []string {
	entries, err := os.ReadDir(a.journalDir())
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && e.Type().IsRegular() && vm.ValidateName("name", name) == nil {
			out = append(out, name)
		}
	}
	return out
}

// endQEMU ends this host's QEMU of a VM another host owns: a migration's
// incoming QEMU, or the paused source after the switch-over; the one the
// worker holds, or — after an agent restart, which adopts only the VMs
// placed here — the one its run directory names.
func (m *machine) endQEMU(ctx context.Context) {
	inst := m.incoming
	m.incoming = nil
	if inst == nil && m.inst != nil {
		inst, m.inst = m.inst, nil
	}
	if inst == nil {
		if dir, err := m.a.runDir(m.name); err == nil {
			inst, _ = qemu.Adopt(ctx, m.name, dir, m.log)
		}
	}
	if inst != nil {
		if err := inst.Kill(ctx); err != nil {
			m.log.Warn("end migration qemu", "err", err)
		}
	}
	m.deleteTaps(ctx)
}

// migrationLeftovers removes what a migration that is over (no record, or
// the record of another one) left here as its target: its QEMU and the
// volumes the journal lists, unless the guest runs here (then they are the
// VM's and only the journal goes).
func (m *machine) migrationLeftovers(ctx context.Context, currentOp string) {
	j, err := m.readJournal()
	if err != nil {
		m.log.Warn("migration leftovers", "err", err)
		return
	}
	if j == nil || j.OpID == currentOp {
		return
	}
	o, _, err := m.a.inv.OwnerOf(ctx, m.name)
	switch {
	case err == nil && o.Host == m.a.cfg.Host:
		m.removeJournal()
		return
	case err != nil && !errors.Is(err, store.ErrNotFound):
		m.log.Warn("migration leftovers: read owner", "err", err)
		return
	}
	m.endQEMU(ctx)
	if err := m.removeTargetVolumes(ctx, j.Disks); err != nil {
		m.log.Warn("migration leftovers: remove volumes", "err", err)
		return
	}
	m.removeJournal()
	m.log.Info("removed what an ended migration left here", "op", j.OpID, "volumes", len(j.Disks))
}
