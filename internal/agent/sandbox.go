package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/qemu"
	"hangar/internal/qemu/config"
	"hangar/internal/storage"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// QEMU runs as the VM's own uid (gid = uid), from the range in
// Config.VMIDs, with no capabilities. What it reaches:
//   - its run directory (sockets, pidfile): owned by its uid, 0700;
//   - its serial log: the file is its own (0600) in a directory root:<gid>
//     0710, so it can neither list nor create anything there;
//   - the files of its disks in vms/<vm>/ (disks, snapshot overlays, the
//     cloud-init seed): its own, 0600, in a directory root:<gid> 0710;
//   - files other VMs may open too (images and template bases under
//     overlays, attached and shareable volumes): a group per file, from
//     the same range, held only by the VMs that use the file now (0640
//     for backing files, 0660 for attached volumes);
//   - cdrom media from outside (ISOs): opened by the agent and inherited as
//     a read-only descriptor, so QEMU needs no access to them at all;
//   - /dev/kvm through the kvm group, when KVM is used.
//
// Directories above these are made traversable (never listable).

func (a *Agent) idRange() inventory.IDRange {
	if a.cfg.VMIDs == (inventory.IDRange{}) {
		return inventory.DefaultIDRange
	}
	return a.cfg.VMIDs
}

func vmOwner(name string) inventory.IDOwner {
	return inventory.IDOwner{Kind: inventory.IDKindVM, Name: name}
}

// sandbox prepares everything QEMU needs to start unprivileged: the VM's
// uid, the ownership of its files and the groups of the shared ones. It
// sets files[i].FD for cdrom media passed as descriptors; the caller
// closes the returned sandbox's Files once QEMU has started.
func (m *machine) sandbox(ctx context.Context, spec v1.VMSpec, files []config.DiskFile, logDir string) (_ *qemu.Sandbox, err error) {
	began := time.Now()
	uid, err := m.a.inv.AllocID(ctx, m.a.idRange(), vmOwner(m.name))
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", m.name, err)
	}
	sb := &qemu.Sandbox{UID: uid, GID: uid}
	defer func() {
		if err != nil {
			closeAll(sb.Files)
			return
		}
		m.log.Debug("sandbox prepared", "uid", uid, "groups", sb.Groups, "fds", len(sb.Files), "dur", time.Since(began))
	}()
	if err := os.MkdirAll(filepath.Join(m.a.cfg.RunDir, "vms"), 0o700); err != nil {
		return nil, fmt.Errorf("start %s: %w", m.name, err)
	}
	if err := storage.OpenPath(filepath.Join(m.a.cfg.RunDir, "vms")); err != nil {
		return nil, err
	}
	if err := storage.GrantDir(logDir, 0, uid, 0o710); err != nil {
		return nil, err
	}
	if err := storage.OpenPath(filepath.Dir(logDir)); err != nil {
		return nil, err
	}
	serial := filepath.Join(logDir, config.SerialLog)
	f, err := os.OpenFile(serial, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: serial log: %w", m.name, err)
	}
	f.Close()
	if err := storage.Grant(serial, uid, uid, 0o600); err != nil {
		return nil, err
	}

	pools, err := m.a.allPools(ctx)
	if err != nil {
		return nil, err
	}
	groups := map[int]bool{}
	for i, d := range spec.Disks {
		fi := &files[i]
		if fi.Path == "" {
			continue
		}
		if d.Media == "cdrom" && !(d.Name == vm.CloudInitDisk && spec.CloudInit != nil) {
			f, err := os.Open(fi.Path)
			if err != nil {
				return nil, fmt.Errorf("start %s: medium of %s: %w", m.name, d.Name, err)
			}
			sb.Files = append(sb.Files, f)
			fi.FD = 2 + len(sb.Files) // ExtraFiles start at descriptor 3
			continue
		}
		chain, err := storage.ChainFiles(ctx, fi.Path, fi.Format)
		if err != nil {
			return nil, fmt.Errorf("start %s: disk %s: %w", m.name, d.Name, err)
		}
		for j, p := range chain {
			gid, err := m.own(ctx, pools, uid, p, j > 0)
			if err != nil {
				return nil, fmt.Errorf("start %s: disk %s: %w", m.name, d.Name, err)
			}
			if gid != 0 {
				groups[gid] = true
			}
		}
	}
	if m.a.cfg.Caps.Accel == "kvm" {
		if g, err := user.LookupGroup("kvm"); err == nil {
			if gid, err := strconv.Atoi(g.Gid); err == nil && gid > 0 {
				groups[gid] = true
			}
		}
	}
	for g := range groups {
		sb.Groups = append(sb.Groups, g)
	}
	slices.Sort(sb.Groups)
	return sb, nil
}

// own gives one file of a disk chain to the VM: a file in the VM's own
// directory of a pool becomes the uid's; any other pool file gets the group
// of that file (returned), read-only when it is a backing file. Files
// outside every pool are refused: nothing else is handed to a VM.
func (m *machine) own(ctx context.Context, pools []*storage.Pool, uid int, path string, backing bool) (int, error) {
	for _, p := range pools {
		rel, ok := p.Contains(path)
		if !ok {
			continue
		}
		full, err := p.Resolve(rel)
		if err != nil {
			return 0, err
		}
		dir := filepath.Dir(full)
		if vmDir := "vms/" + m.name + "/"; strings.HasPrefix(rel, vmDir) && !strings.Contains(rel[len(vmDir):], "/") {
			if err := storage.GrantDir(dir, 0, uid, 0o710); err != nil {
				return 0, err
			}
			if err := storage.OpenPath(filepath.Dir(dir)); err != nil {
				return 0, err
			}
			return 0, storage.Grant(full, uid, uid, 0o600)
		}
		gid, err := m.a.inv.AllocID(ctx, m.a.idRange(), inventory.IDOwner{Kind: inventory.IDKindFile, Name: p.Name + "/" + rel})
		if err != nil {
			return 0, err
		}
		mode := os.FileMode(0o660)
		if backing {
			mode = 0o640
			if fi, err := os.Lstat(full); err == nil && fi.Mode().Perm()&0o200 == 0 {
				mode = 0o440 // a read-only template stays read-only
			}
		}
		if err := storage.OpenPath(dir); err != nil {
			return 0, err
		}
		return gid, storage.Grant(full, -1, gid, mode)
	}
	return 0, fmt.Errorf("%s is outside every storage pool: %w", path, storage.ErrOutsidePool)
}

// releaseUID are the store writes that free the VM's uid; they go in the
// transaction that removes the VM's records.
func (m *machine) releaseUID(ctx context.Context) []store.Op {
	ops, err := m.a.inv.ReleaseIDOps(ctx, m.a.idRange(), vmOwner(m.name))
	if err != nil {
		m.log.Warn("release uid", "err", err)
	}
	return ops
}

// shareForBackup lets the QEMU of this (running) VM write backup targets
// in dir, another VM's directory: dir becomes root:<this VM's gid> 0710
// until that VM's first start gives it to its own uid.
func (m *machine) shareForBackup(ctx context.Context, dir string) error {
	uid, _, err := m.a.inv.IDOf(ctx, m.a.idRange(), vmOwner(m.name))
	if errors.Is(err, store.ErrNotFound) {
		return nil // a QEMU started before QEMU ran unprivileged: root
	}
	if err != nil {
		return err
	}
	if err := storage.GrantDir(dir, 0, uid, 0o710); err != nil {
		return err
	}
	return storage.OpenPath(filepath.Dir(dir))
}

// changeMedium inserts a cdrom medium into the running QEMU as a
// descriptor (add-fd), so the VM's uid needs no access to the file.
func (m *machine) changeMedium(ctx context.Context, id, image string) error {
	f, err := os.Open(image)
	if err != nil {
		return fmt.Errorf("medium %s: %w", image, err)
	}
	defer f.Close()
	var fdset struct {
		ID int `json:"fdset-id"`
	}
	if err := m.inst.Mon.ExecuteWithFile(ctx, "add-fd", map[string]any{"opaque": "medium " + id}, f, &fdset); err != nil {
		return fmt.Errorf("medium %s: add-fd: %w", image, err)
	}
	return m.inst.Mon.Execute(ctx, "blockdev-change-medium", map[string]any{"id": id, "filename": config.FDSetPath(fdset.ID),
		"format": "raw", "read-only-mode": "read-only"}, nil)
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// checkAdoptedUID compares the uid an adopted QEMU runs as with the one
// recorded for the VM: a mismatch (a QEMU from before QEMU ran
// unprivileged, or a record changed meanwhile) is logged, and the status
// shows the uid the process really has.
func (m *machine) checkAdoptedUID(ctx context.Context, pid int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return
	}
	running := -1
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				running, _ = strconv.Atoi(f[0])
			}
		}
	}
	recorded, _, err := m.a.inv.IDOf(ctx, m.a.idRange(), vmOwner(m.name))
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		m.log.Warn("recorded uid", "err", err)
	}
	if running != recorded {
		m.log.Warn("adopted qemu runs as another uid than recorded", "pid", pid, "uid", running, "recorded", recorded)
	}
	if running >= 0 {
		if err := m.setStatus(ctx, func(st *v1.VMStatus) { st.UID = running }); err != nil {
			m.log.Warn("write status", "err", err)
		}
	}
}

// releaseFileGroup frees the group of a pool file that is gone (a deleted
// volume or template disk); a file that never had one is fine.
func (a *Agent) releaseFileGroup(ctx context.Context, pool, name string) {
	o := inventory.IDOwner{Kind: inventory.IDKindFile, Name: pool + "/" + name}
	if err := a.inv.ReleaseID(ctx, a.idRange(), o); err != nil {
		a.cfg.Log.Warn("release file group", "file", o.Name, "err", err)
	}
}
