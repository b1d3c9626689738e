package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/scheduler"
	"hangar/internal/storage"
	"hangar/internal/vm"
)

// Pools is what the API needs of a host's storage.
type Pools interface {
	Pools(ctx context.Context) ([]v1.StoragePool, error)
	AddPool(ctx context.Context, p v1.StoragePool) error
	ListVolumes(ctx context.Context, pool string) ([]v1.Volume, error)
	CreateVolume(ctx context.Context, pool, name, format string, size int64) (v1.Volume, error)
	DeleteVolume(ctx context.Context, pool, name string) error
	ResizeVolume(ctx context.Context, pool, name string, size int64) error
	UploadVolume(ctx context.Context, pool, name, format string, r io.Reader, size int64, sha256 string) (v1.Volume, error)
	VolumeUser(ctx context.Context, pool, name string) (vmName, disk string, err error)
}

func (s *Server) volumeRoutes() {
	s.route("GET /api/v1/pools", s.listPools)
	s.route("POST /api/v1/pools", s.addPool)
	s.route("GET /api/v1/pools/{pool}/volumes", s.listVolumes)
	s.route("POST /api/v1/pools/{pool}/volumes", s.createVolume)
	s.route("GET /api/v1/pools/{pool}/volumes/{vol}", s.getVolume)
	s.route("DELETE /api/v1/pools/{pool}/volumes/{vol}", s.deleteVolume)
	s.route("POST /api/v1/pools/{pool}/volumes/{vol}/resize", s.resizeVolume)
	s.route("PUT /api/v1/pools/{pool}/volumes/{vol}/data", s.uploadVolume)
	s.route("POST /api/v1/vms/{name}/resize", s.resizeDisk)
	s.route("POST /api/v1/pools/{pool}/volumes/{vol}/copy", s.copyVolume)
	s.route("POST /api/v1/pools/{pool}/volumes/{vol}/flatten", s.flattenVolume)
}

// listPools lists this host's pools and the other hosts' own pools (as
// their facts report them: name and host, not their paths).
func (s *Server) listPools(w http.ResponseWriter, r *http.Request) {
	ps, err := s.cfg.Pools.Pools(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	hosts, err := s.hosts(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	ps = append(ps, otherLocalPools(ps, hosts)...)
	if ps == nil {
		ps = []v1.StoragePool{} // [], not null
	}
	writeJSON(w, 200, ps)
}

// otherLocalPools are the own pools of hosts that have not listed in
// known, as their facts report them.
func otherLocalPools(known []v1.StoragePool, hosts []v1.Host) []v1.StoragePool {
	seen := map[string]bool{}
	for _, p := range known {
		seen[p.Name] = true
	}
	var out []v1.StoragePool
	for _, h := range hosts {
		name := storage.LocalPoolName(h.Name)
		for _, u := range h.Storage {
			if u.Pool == name && !seen[name] {
				seen[name] = true
				out = append(out, v1.StoragePool{Name: name, Type: u.Type, Host: h.Name})
			}
		}
	}
	return out
}

func (s *Server) addPool(w http.ResponseWriter, r *http.Request) {
	var p v1.StoragePool
	if err := decode(r, &p); err != nil {
		writeErr(w, err)
		return
	}
	if err := vm.ValidateName("name", p.Name); err != nil {
		writeErr(w, err)
		return
	}
	if p.Host != "" {
		writeErr(w, invalidArg("host", "a host's own pool is local-<host>; pools added here are for every host"))
		return
	}
	if err := s.cfg.Pools.AddPool(r.Context(), p); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 201, p)
}

// poolAndVolume reads {pool} and {vol} (the volume name is path-escaped:
// "vms%2Fweb1%2Fdisk0.qcow2").
func poolAndVolume(r *http.Request) (string, string, error) {
	pool, vol := r.PathValue("pool"), r.PathValue("vol")
	if err := vm.ValidateName("pool", pool); err != nil {
		return "", "", err
	}
	if vol != "" {
		if err := vm.ValidateVolumeRef("volume", pool+"/"+vol); err != nil {
			return "", "", err
		}
	}
	return pool, vol, nil
}

// volumeHere reads {pool} and {vol} of a read that the pool's host answers:
// false when the request was answered (an error, or forwarded there).
func (s *Server) volumeHere(w http.ResponseWriter, r *http.Request) (pool, vol string, ok bool) {
	pool, vol, err := poolAndVolume(r)
	var host string
	if err == nil {
		host, err = s.poolHost(r.Context(), r, pool)
	}
	if err != nil {
		writeErr(w, err)
		return "", "", false
	}
	return pool, vol, s.servedHere(w, r, host)
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) {
	pool, _, ok := s.volumeHere(w, r)
	if !ok {
		return
	}
	vols, err := s.cfg.Pools.ListVolumes(r.Context(), pool)
	if err != nil {
		writeErr(w, err)
		return
	}
	if vols == nil {
		vols = []v1.Volume{} // [], not null
	}
	writeJSON(w, 200, vols)
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) {
	pool, vol, ok := s.volumeHere(w, r)
	if !ok {
		return
	}
	v, err := s.cfg.Volumes.VolumeInfo(r.Context(), pool+"/"+vol)
	if err != nil {
		writeErr(w, errdefs.Field("vol", err)) // a chain leaving the pool is refused, not reported
		return
	}
	writeJSON(w, 200, v)
}

// checkMedium checks a cdrom medium (an ISO file) against the host path
// policy: from a pool or an import directory, a regular file.
func (s *Server) checkMedium(ctx context.Context, field, image string) error {
	if image == "" {
		return nil
	}
	if _, err := s.cfg.Volumes.CheckSource(ctx, storage.SourceISO, image); err != nil {
		return errdefs.Field(field, err)
	}
	return nil
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) {
	if s.forwardToHostParam(w, r) {
		return
	}
	pool, _, err := poolAndVolume(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	var a v1.VolumeCreateArgs
	if err := decode(r, &a); err != nil {
		writeErr(w, err)
		return
	}
	if err := vm.ValidateVolumeRef("name", pool+"/"+a.Name); err != nil {
		writeErr(w, err)
		return
	}
	if a.SizeMiB <= 0 || a.SizeMiB > vm.MaxDiskMiB {
		writeErr(w, invalidArg("sizeMiB", "must be between 1 and %d, got %d", vm.MaxDiskMiB, a.SizeMiB))
		return
	}
	v, err := s.cfg.Pools.CreateVolume(r.Context(), pool, a.Name, a.Format, a.SizeMiB<<20)
	if err != nil {
		writeErr(w, errdefs.Field("name", err))
		return
	}
	writeJSON(w, 201, v)
}

func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request) {
	if s.forwardToHostParam(w, r) {
		return
	}
	pool, vol, err := poolAndVolume(r)
	if err == nil {
		if err = s.cfg.Pools.DeleteVolume(r.Context(), pool, vol); err == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	writeErr(w, err)
}

// resizeVolume grows a volume; a VM's disk is grown through an operation
// on the VM (live while it runs).
func (s *Server) resizeVolume(w http.ResponseWriter, r *http.Request) {
	if s.forwardToHostParam(w, r) {
		return
	}
	pool, vol, err := poolAndVolume(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	var a struct { // a volume is named by the path: no "disk" here
		SizeMiB int64 `json:"sizeMiB"`
	}
	if err := decode(r, &a); err != nil {
		writeErr(w, err)
		return
	}
	if a.SizeMiB <= 0 || a.SizeMiB > vm.MaxDiskMiB {
		writeErr(w, invalidArg("sizeMiB", "must be between 1 and %d, got %d", vm.MaxDiskMiB, a.SizeMiB))
		return
	}
	owner, disk, err := s.cfg.Pools.VolumeUser(r.Context(), pool, vol)
	if err != nil {
		writeErr(w, err)
		return
	}
	if owner != "" {
		r.SetPathValue("name", owner)
		s.submitResize(w, r, owner, v1.ResizeArgs{Disk: disk, SizeMiB: a.SizeMiB})
		return
	}
	if err := s.cfg.Pools.ResizeVolume(r.Context(), pool, vol, a.SizeMiB<<20); err != nil {
		field := "sizeMiB"
		if errors.Is(err, storage.ErrOutsidePool) {
			field = "vol"
		}
		writeErr(w, errdefs.Field(field, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) resizeDisk(w http.ResponseWriter, r *http.Request) {
	if s.forwardToVMHost(w, r, r.PathValue("name")) {
		return // the disk's size is read from its file: on the VM's host
	}
	var a v1.ResizeArgs
	if err := decode(r, &a); err != nil {
		writeErr(w, err)
		return
	}
	s.submitResize(w, r, r.PathValue("name"), a)
}

func (s *Server) submitResize(w http.ResponseWriter, r *http.Request, name string, a v1.ResizeArgs) {
	v, err := s.inv.VM(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	found := false
	for _, d := range v.Spec.Disks {
		found = found || (d.Name == a.Disk && d.Media != "cdrom")
	}
	if !found {
		writeErr(w, invalidArg("disk", "vm %q has no disk %q", name, a.Disk))
		return
	}
	if a.SizeMiB <= 0 || a.SizeMiB > vm.MaxDiskMiB {
		writeErr(w, invalidArg("sizeMiB", "must be between 1 and %d, got %d", vm.MaxDiskMiB, a.SizeMiB))
		return
	}
	if len(v.Status.Snapshots) > 0 {
		writeErr(w, errdefs.Precondition("vm %q has snapshots: merge them before resizing", name))
		return
	}
	// Disks only grow: refuse a smaller size now rather than in the operation.
	for _, d := range v.Status.Disks {
		if d.Name != a.Disk || d.Path == "" {
			continue
		}
		vol, err := s.cfg.Volumes.DiskInfo(r.Context(), d.Path)
		if err != nil {
			writeErr(w, errdefs.Field("disk", err))
			return
		}
		if a.SizeMiB<<20 < vol.VirtualSize {
			writeErr(w, invalidArg("sizeMiB", "disk %s is %d MiB: disks only grow, got %d", a.Disk, vol.VirtualSize>>20, a.SizeMiB))
			return
		}
	}
	s.submit(w, r, name, "resize", a, "", []string{v1.StateRunning, v1.StatePaused, v1.StateStopped, v1.StateCrashed})
}

// uploadVolume streams a disk image into a new volume:
// PUT .../data?format=qcow2&sha256=HEX with Content-Length.
func (s *Server) uploadVolume(w http.ResponseWriter, r *http.Request) {
	if s.forwardToHostParam(w, r) {
		return
	}
	pool, vol, err := poolAndVolume(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	size := r.ContentLength
	if v := r.URL.Query().Get("size"); v != "" {
		if size, err = strconv.ParseInt(v, 10, 64); err != nil {
			writeErr(w, invalidArg("size", "%q is not a byte count", v))
			return
		}
	}
	if size <= 0 {
		writeErr(w, invalidArg("size", "the upload needs a Content-Length or ?size="))
		return
	}
	v, err := s.cfg.Pools.UploadVolume(r.Context(), pool, vol, r.URL.Query().Get("format"), r.Body, size, r.URL.Query().Get("sha256"))
	if err != nil {
		writeErr(w, fmt.Errorf("upload %s/%s: %w", pool, vol, err))
		return
	}
	writeJSON(w, 201, v)
}

// copyVolume starts an operation that copies a volume into a new
// standalone one (full clone, or a conversion with format).
func (s *Server) copyVolume(w http.ResponseWriter, r *http.Request) {
	if s.forwardToHostParam(w, r) {
		return
	}
	pool, vol, err := poolAndVolume(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	args, wait, ok := decodeOp[v1.VolumeCopyArgs](s, w, r)
	if !ok {
		return
	}
	if err := vm.ValidateVolumeRef("name", pool+"/"+args.Name); err != nil {
		writeErr(w, err)
		return
	}
	if err := storage.CheckVolumeName(args.Name, ""); err != nil {
		writeErr(w, errdefs.Field("name", err))
		return
	}
	if err := storage.CheckVolumeName(args.Name, args.Format); err != nil {
		writeErr(w, errdefs.Field("format", err))
		return
	}
	if _, err := s.cfg.Volumes.VolumeInfo(r.Context(), pool+"/"+args.Name); err == nil {
		writeErr(w, &v1.Error{Code: v1.CodeConflict, Field: "name", Message: fmt.Sprintf("name: volume %s/%s exists", pool, args.Name)})
		return
	}
	args.Pool, args.Source = pool, vol
	s.volumeOp(w, r, "volume-copy", args, wait)
}

// flattenVolume starts an operation that makes a volume standalone (its
// backing chain merged in); not for a VM's disk.
func (s *Server) flattenVolume(w http.ResponseWriter, r *http.Request) {
	if s.forwardToHostParam(w, r) {
		return
	}
	pool, vol, err := poolAndVolume(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	wait, err := s.waitParam(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	owner, _, err := s.cfg.Pools.VolumeUser(r.Context(), pool, vol)
	if err != nil {
		writeErr(w, err)
		return
	}
	if owner != "" {
		writeErr(w, &v1.Error{Code: v1.CodeConflict, Field: "vol", Message: fmt.Sprintf("volume %s/%s is a disk of vm %q", pool, vol, owner)})
		return
	}
	s.volumeOp(w, r, "volume-flatten", v1.VolumeCopyArgs{Pool: pool, Source: vol}, wait)
}

func (s *Server) volumeOp(w http.ResponseWriter, r *http.Request, kind string, args v1.VolumeCopyArgs, wait time.Duration) {
	if _, err := s.cfg.Volumes.VolumeInfo(r.Context(), args.Pool+"/"+args.Source); err != nil {
		writeErr(w, errdefs.Field("vol", err))
		return
	}
	host, err := s.ioHost(r.Context(), args.Pool)
	if err != nil {
		writeErr(w, err)
		return
	}
	op := s.newOp(kind, args.Pool+"/"+args.Source, host, args)
	if _, err := s.cfg.Store.Txn(r.Context(), nil, inventory.NewOpWrites(op)...); err != nil {
		writeErr(w, err)
		return
	}
	s.answerOp(w, r, op, wait)
}

// ioHost is where a volume job on pool runs. A host's own pool: that host
// (the request was forwarded there and checked against its files). A
// recorded dir pool: this host, the one whose files the request was checked
// against (?host= sent the request here). A shared pool: the freest live
// host that reaches it (scheduler.PlaceIO; a host reaches the pools its
// facts report storage for).
func (s *Server) ioHost(ctx context.Context, pool string) (string, error) {
	if h, ok := storage.LocalPoolHost(pool); ok {
		return h, nil
	}
	pools, err := s.cfg.Pools.Pools(ctx)
	if err != nil {
		return "", err
	}
	shared := false
	for _, p := range pools {
		if p.Name == pool {
			shared = p.Type == storage.TypeShared
		}
	}
	if !shared && s.cfg.Forward != nil {
		return s.cfg.Forward.Self(), nil
	}
	hosts, err := s.hosts(ctx)
	if err != nil {
		return "", err
	}
	var snap scheduler.Snapshot
	for _, h := range hosts {
		sh := scheduler.Host{Name: h.Name, CPUs: h.CPUs, MemoryMiB: h.MemoryMiB, Alive: h.Alive, Maintenance: h.Maintenance}
		for _, u := range h.Storage {
			sh.Pools = append(sh.Pools, u.Pool)
		}
		if len(h.Storage) == 0 {
			sh.Pools = []string{pool} // facts of an older agent: assume it reaches the pool
		}
		snap.Hosts = append(snap.Hosts, sh)
		snap.Allocs = append(snap.Allocs, scheduler.Alloc{Host: h.Name, VM: "booked-on-" + h.Name, CPUs: h.AllocatedCPUs, MemoryMiB: h.AllocatedMemoryMiB})
	}
	if snap.Policy, err = s.inv.Admission(ctx); err != nil {
		return "", err
	}
	host, err := scheduler.PlaceIO(snap, []string{pool})
	if err != nil {
		return "", fmt.Errorf("volume job on pool %s: %w: %w", pool, err, errdefs.ErrUnavailable)
	}
	return host, nil
}
