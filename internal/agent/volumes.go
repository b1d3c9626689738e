package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/storage"
	"hangar/internal/store"
)

// Pools lists this host's own pool and the pools recorded in the store.
func (a *Agent) Pools(ctx context.Context) ([]v1.StoragePool, error) {
	out := []v1.StoragePool{{Name: a.cfg.Pool.Name, Type: a.cfg.Pool.Type, Path: a.cfg.Pool.Path, Host: a.cfg.Host}}
	pools, _, err := store.ListJSON[v1.StoragePool](ctx, a.cfg.Store, inventory.Pools)
	if err != nil {
		return nil, err
	}
	for _, p := range pools {
		out = append(out, p.Value)
	}
	return out, nil
}

// AddPool records a pool after checking its directory against the host
// path policy (storage.HostPaths.PoolDir): an existing directory that is
// no system directory, overlaps no Hangar directory, import directory or
// other pool. The path is recorded with its symlinks resolved.
func (a *Agent) AddPool(ctx context.Context, p v1.StoragePool) error {
	if p.Name == a.cfg.Pool.Name {
		return errdefs.Field("name", fmt.Errorf("pool %q exists: %w", p.Name, storage.ErrExists))
	}
	if strings.HasPrefix(p.Name, storage.LocalPoolPrefix) {
		return errdefs.Field("name", fmt.Errorf("%q: names starting with %q are the hosts' own pools: %w", p.Name, storage.LocalPoolPrefix, errdefs.ErrInvalid))
	}
	if p.Type != storage.TypeDir && p.Type != storage.TypeShared {
		return errdefs.Field("type", fmt.Errorf("must be dir or shared, got %q: %w", p.Type, errdefs.ErrInvalid))
	}
	pools, err := a.allPools(ctx)
	if err != nil {
		return err
	}
	real, err := a.hostPaths().PoolDir(p.Name, p.Path, pools)
	if err != nil {
		return errdefs.Field("path", err)
	}
	p.Path = real
	if _, err := storage.OpenPool(p.Name, p.Type, p.Path); err != nil {
		return errdefs.Field("path", err)
	}
	if _, err := a.cfg.Store.Put(ctx, inventory.PoolKey(p.Name), inventory.Marshal(p), store.MustNotExist); err != nil {
		return errdefs.Field("name", fmt.Errorf("pool %q: %w", p.Name, err))
	}
	return nil
}

// usedBy maps volume files to the VMs whose disks use them.
func (a *Agent) usedBy(ctx context.Context) (map[string][]string, error) {
	vms, err := a.inv.VMList(ctx)
	if err != nil {
		return nil, err
	}
	m := map[string][]string{}
	for _, v := range vms {
		for _, d := range v.Status.Disks {
			for _, p := range []string{d.Path, d.Top} {
				if p != "" {
					m[p] = append(m[p], v.Spec.Name)
				}
			}
		}
	}
	return m, nil
}

// ListVolumes lists a pool's volumes with the VMs that use them.
func (a *Agent) ListVolumes(ctx context.Context, pool string) ([]v1.Volume, error) {
	p, err := a.pool(ctx, pool)
	if err != nil {
		return nil, err
	}
	vols, err := p.Volumes(ctx)
	if err != nil {
		return nil, err
	}
	used, err := a.usedBy(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]v1.Volume, 0, len(vols))
	for _, v := range vols {
		av := toAPIVolume(v)
		if path, err := p.Resolve(v.Name); err == nil {
			av.UsedBy = used[path]
		}
		out = append(out, av)
	}
	return out, nil
}

// CreateVolume makes a new empty volume.
func (a *Agent) CreateVolume(ctx context.Context, pool, name, format string, size int64) (v1.Volume, error) {
	p, err := a.pool(ctx, pool)
	if err != nil {
		return v1.Volume{}, err
	}
	v, err := p.CreateVolume(ctx, name, format, size)
	return toAPIVolume(v), err
}

// DeleteVolume removes a volume no VM uses and no other volume builds on.
func (a *Agent) DeleteVolume(ctx context.Context, pool, name string) error {
	p, err := a.pool(ctx, pool)
	if err != nil {
		return err
	}
	path, err := p.Resolve(name)
	if err != nil {
		return err
	}
	used, err := a.usedBy(ctx)
	if err != nil {
		return err
	}
	if vms := used[path]; len(vms) > 0 {
		return fmt.Errorf("volume %s/%s is a disk of %s: %w", pool, name, strings.Join(vms, ", "), storage.ErrInUse)
	}
	if err := p.DeleteVolume(ctx, name); err != nil {
		return err
	}
	a.releaseFileGroup(ctx, p.Name, name)
	return nil
}

// ResizeVolume grows a volume no VM uses (a VM's disk grows through a
// resize operation on the VM, live when it runs).
func (a *Agent) ResizeVolume(ctx context.Context, pool, name string, size int64) error {
	p, err := a.pool(ctx, pool)
	if err != nil {
		return err
	}
	return p.Resize(ctx, name, size)
}

// UploadVolume streams a disk image into a new volume.
func (a *Agent) UploadVolume(ctx context.Context, pool, name, format string, r io.Reader, size int64, sha256 string) (v1.Volume, error) {
	p, err := a.pool(ctx, pool)
	if err != nil {
		return v1.Volume{}, err
	}
	v, err := p.Upload(ctx, name, format, r, size, sha256, nil)
	return toAPIVolume(v), err
}

// VolumeUser returns the VM whose disk a volume is, if any.
func (a *Agent) VolumeUser(ctx context.Context, pool, name string) (vmName, disk string, err error) {
	p, err := a.pool(ctx, pool)
	if err != nil {
		return "", "", err
	}
	path, err := p.Resolve(name)
	if err != nil {
		return "", "", err
	}
	vms, err := a.inv.VMList(ctx)
	if err != nil {
		return "", "", err
	}
	for _, v := range vms {
		for _, d := range v.Status.Disks {
			if d.Path == path {
				return v.Spec.Name, d.Name, nil
			}
		}
	}
	return "", "", nil
}

// volumeJob copies or flattens a volume on the I/O worker pool. It runs as
// an operation whose target is the volume ("pool/name"), so the volume's
// operations are serialized like a VM's.
func (a *Agent) volumeJob(ctx context.Context, kind string, args v1.VolumeCopyArgs, reporter func(total int64) func(float64)) error {
	p, err := a.pool(ctx, args.Pool)
	if err != nil {
		return err
	}
	return a.io.run(ctx, func() error {
		var total int64
		if src, err := p.Volume(ctx, args.Source); err == nil {
			total = src.VirtualSize
		}
		progress := reporter(total)
		if kind == "volume-flatten" {
			return p.Flatten(ctx, args.Source, progress)
		}
		_, err := p.Copy(ctx, args.Source, args.Name, args.Format, progress)
		if errors.Is(err, storage.ErrExists) {
			if _, verr := p.Volume(ctx, args.Name); verr == nil {
				return nil // made by an earlier attempt
			}
		}
		return err
	})
}

func (a *Agent) hostPaths() *storage.HostPaths {
	if a.cfg.HostPaths == nil {
		return &storage.HostPaths{}
	}
	return a.cfg.HostPaths
}

// allPools opens this host's pools: its default pool and the recorded ones
// that pass the policy (a pool that cannot be opened holds no file anyway).
func (a *Agent) allPools(ctx context.Context) ([]*storage.Pool, error) {
	pools, _, err := a.allPoolsAt(ctx)
	return pools, err
}

// allPoolsAt is allPools and the revision of the pool records it read.
func (a *Agent) allPoolsAt(ctx context.Context) ([]*storage.Pool, int64, error) {
	pools, rev, err := store.ListJSON[v1.StoragePool](ctx, a.cfg.Store, inventory.Pools)
	if err != nil {
		return nil, 0, err
	}
	out := []*storage.Pool{a.cfg.Pool}
	for _, sp := range pools {
		if p, err := a.pool(ctx, sp.Value.Name); err == nil {
			out = append(out, p)
		}
	}
	return out, rev, nil
}

// CheckSource applies the host path policy (storage.HostPaths.Source) to
// a file a request or a record names as the source of a disk, cdrom or
// import.
func (a *Agent) CheckSource(ctx context.Context, kind storage.SourceKind, path string) (storage.HostFile, error) {
	pools, err := a.allPools(ctx)
	if err != nil {
		return storage.HostFile{}, err
	}
	return a.hostPaths().Source(path, kind, pools)
}

// DiskInfo describes the volume at path (a VM disk's file, as its status
// records it); the path must name a volume of one of this host's pools.
func (a *Agent) DiskInfo(ctx context.Context, path string) (v1.Volume, error) {
	p, name, err := a.volumeAt(ctx, path)
	if err != nil {
		return v1.Volume{}, err
	}
	v, err := p.Volume(ctx, name)
	if err != nil {
		return v1.Volume{}, err
	}
	return toAPIVolume(v), nil
}

// Dependents lists the volumes of its pool built on a volume ("pool/name").
func (a *Agent) Dependents(ctx context.Context, ref string) ([]string, error) {
	p, name, err := a.volumeRef(ctx, ref)
	if err != nil {
		return nil, err
	}
	return p.Dependents(ctx, name)
}
