package agent

import (
	"context"
	"fmt"
	"os"
	"strings"

	v1 "hangar/api/v1"
	"hangar/internal/cloudinit"
	"hangar/internal/errdefs"
	"hangar/internal/imports"
	"hangar/internal/qemu/config"
	"hangar/internal/storage"
	"hangar/internal/vm"
)

// pool returns a storage pool by name: local-<host> is the host's own; others
// are looked up in the store.
func (a *Agent) pool(ctx context.Context, name string) (*storage.Pool, error) {
	if name == a.cfg.Pool.Name {
		return a.cfg.Pool, nil
	}
	sp, err := a.inv.Pool(ctx, name) // checked (records.go)
	if err != nil {
		return nil, err
	}
	// A record is input too: its path passes the policy again (against the
	// default pool; overlaps between recorded pools were refused on add).
	if sp.Name != name {
		return nil, fmt.Errorf("storage pool %q: record names %q: %w", name, sp.Name, storage.ErrInvalid)
	}
	if _, err := a.hostPaths().PoolDir(sp.Name, sp.Path, []*storage.Pool{a.cfg.Pool}); err != nil {
		return nil, err
	}
	return storage.OpenPool(sp.Name, sp.Type, sp.Path)
}

// hostFile applies the host path policy to a disk's source read from the
// VM's spec and returns the file to open.
func (a *Agent) hostFile(ctx context.Context, kind storage.SourceKind, path string) (string, error) {
	f, err := a.CheckSource(ctx, kind, path)
	if err != nil {
		return "", err
	}
	return f.Path, nil
}

// isoFile is the file a cdrom's medium names, checked by the policy.
func (m *machine) isoFile(ctx context.Context, image string) (config.DiskFile, error) {
	path, err := m.a.hostFile(ctx, storage.SourceISO, image)
	if err != nil {
		return config.DiskFile{}, fmt.Errorf("vm %s: cdrom medium: %w", m.name, err)
	}
	return config.DiskFile{Path: path, Format: "raw"}, nil
}

// volumeRef resolves "pool/name" to its pool and volume name.
func (a *Agent) volumeRef(ctx context.Context, ref string) (*storage.Pool, string, error) {
	poolName, name, _ := strings.Cut(ref, "/")
	p, err := a.pool(ctx, poolName)
	if err != nil {
		return nil, "", err
	}
	return p, name, nil
}

// provision makes (or finds, when an earlier attempt made it) the volume
// behind one spec disk. The returned status says whether the VM owns it.
func (m *machine) provision(ctx context.Context, spec v1.VMSpec, i int, d v1.Disk, progress func(float64)) (v1.DiskStatus, error) {
	field := fmt.Sprintf("disks[%d]", i)
	pool := m.a.cfg.Pool
	switch {
	case d.Media == "cdrom" && d.Name == vm.CloudInitDisk && spec.CloudInit != nil:
		path, err := pool.Resolve("vms", m.name, "cidata.iso")
		if err != nil {
			return v1.DiskStatus{}, err
		}
		ci, err := m.a.openCloudInit(*spec.CloudInit)
		if err != nil {
			return v1.DiskStatus{}, errdefs.Field("cloudInit", err)
		}
		if err := os.MkdirAll(dirOf(path), 0o700); err != nil { // the seed may be the VM's first file
			return v1.DiskStatus{}, err
		}
		if err := cloudinit.Seed(ctx, path, m.name, ci); err != nil {
			return v1.DiskStatus{}, errdefs.Field("cloudInit", err)
		}
		return v1.DiskStatus{Name: d.Name, Path: path, Format: "raw", Created: true}, nil
	case d.Media == "cdrom" && d.Image != "":
		path, err := m.a.hostFile(ctx, storage.SourceISO, d.Image)
		if err != nil {
			return v1.DiskStatus{}, errdefs.Field(field+".image", err)
		}
		return v1.DiskStatus{Name: d.Name, Path: path, Format: "raw"}, nil
	case d.Media == "cdrom":
		return v1.DiskStatus{Name: d.Name, Format: "raw"}, nil
	case d.Volume != "":
		p, name, err := m.a.volumeRef(ctx, d.Volume)
		if err != nil {
			return v1.DiskStatus{}, errdefs.Field(field+".volume", err)
		}
		vol, err := p.Volume(ctx, name)
		if err != nil {
			return v1.DiskStatus{}, errdefs.Field(field+".volume", err)
		}
		if d.Shareable && vol.Format != "raw" {
			return v1.DiskStatus{}, errdefs.Field(field+".shareable", fmt.Errorf("volume %s is %s: only raw volumes can be shared: %w", d.Volume, vol.Format, errdefs.ErrPrecondition))
		}
		deps, err := p.Dependents(ctx, name)
		if err != nil {
			return v1.DiskStatus{}, errdefs.Field(field+".volume", err)
		}
		if len(deps) > 0 {
			return v1.DiskStatus{}, errdefs.Field(field+".volume", fmt.Errorf("volume %s: %d volumes are built on it (%s): %w", d.Volume, len(deps), strings.Join(deps, ", "), storage.ErrInUse))
		}
		path, err := p.Resolve(name)
		if err != nil {
			return v1.DiskStatus{}, errdefs.Field(field+".volume", err)
		}
		return v1.DiskStatus{Name: d.Name, Path: path, Format: vol.Format}, nil
	case d.Clone != nil:
		src, srcName, err := m.a.volumeRef(ctx, d.Clone.Volume)
		if err != nil {
			return v1.DiskStatus{}, errdefs.Field(field+".clone.volume", err)
		}
		name := "vms/" + m.name + "/" + d.Name + ".qcow2"
		if d.Clone.Linked && src.Path != pool.Path {
			return v1.DiskStatus{}, errdefs.Field(field+".clone.linked", fmt.Errorf("a linked clone lives in the pool of its base (%s): %w", src.Name, errdefs.ErrPrecondition))
		}
		dst := src
		if !d.Clone.Linked {
			dst = pool
		}
		path, err := dst.Resolve(name)
		if err != nil {
			return v1.DiskStatus{}, err
		}
		st := v1.DiskStatus{Name: d.Name, Path: path, Format: "qcow2", Created: true}
		if _, err := os.Stat(path); err == nil {
			return st, nil
		}
		switch {
		case d.Clone.Linked:
			_, err = src.CreateOverlay(ctx, name, srcName)
			st.Backing = d.Clone.Volume
		case src.Path == pool.Path:
			err = m.a.io.run(ctx, func() error {
				_, err := pool.Copy(ctx, srcName, name, "qcow2", progress)
				return err
			})
		default:
			err = fmt.Errorf("a full clone from pool %s into pool %s: %w", src.Name, pool.Name, errdefs.ErrPrecondition)
		}
		if err != nil {
			return st, errdefs.Field(field+".clone", err)
		}
		return st, nil
	case d.Import != nil:
		path, err := pool.Resolve("vms", m.name, d.Name+".qcow2")
		if err != nil {
			return v1.DiskStatus{}, err
		}
		st := v1.DiskStatus{Name: d.Name, Path: path, Format: "qcow2", Created: true}
		if _, err := os.Stat(path); err == nil {
			return st, nil
		}
		if err := os.MkdirAll(dirOf(path), 0o700); err != nil {
			return st, err
		}
		src, err := imports.FromAPI(d.Name, d.Import, func(p string) (string, error) {
			return m.a.hostFile(ctx, storage.SourceImport, p)
		})
		if err != nil {
			return st, errdefs.Field(field+".import.path", err)
		}
		if err := m.a.io.run(ctx, func() error { return imports.Convert(ctx, src, path, progress) }); err != nil {
			return st, errdefs.Field(field+".import", err)
		}
		return st, nil
	default:
		if d.Image != "" {
			path, err := m.a.hostFile(ctx, storage.SourceImage, d.Image)
			if err != nil {
				return v1.DiskStatus{}, errdefs.Field(field+".image", err)
			}
			d.Image = path
		}
		st, err := pool.CreateDisk(ctx, m.name, d)
		if err != nil {
			return st, errdefs.Field(field, err)
		}
		return st, nil
	}
}

func dirOf(p string) string { return p[:strings.LastIndexByte(p, '/')] }

// ioPool bounds how many I/O-heavy jobs (copies, conversions, imports) run
// at once on a host.
type ioPool struct{ sem chan struct{} }

func newIOPool(n int) *ioPool { return &ioPool{sem: make(chan struct{}, n)} }

func (p *ioPool) run(ctx context.Context, f func() error) error {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.sem }()
	return f()
}

// openCloudInit returns the seed data with the user-data opened, when the
// manager stored it sealed.
func (a *Agent) openCloudInit(ci v1.CloudInit) (v1.CloudInit, error) {
	if ci.UserDataSealed == "" {
		return ci, nil
	}
	if a.cfg.Secrets == nil {
		return ci, fmt.Errorf("the user-data is sealed and this host has no key to open it")
	}
	ud, err := a.cfg.Secrets.Open(ci.UserDataSealed)
	if err != nil {
		return ci, fmt.Errorf("open the user-data: %w", err)
	}
	ci.UserData, ci.UserDataSealed = ud, ""
	return ci, nil
}
