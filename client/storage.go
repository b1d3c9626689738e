package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	v1 "hangar/api/v1"
)

func (c *Client) vmPost(ctx context.Context, vm, action string, body any, wait time.Duration) (v1.Operation, error) {
	var op v1.Operation
	_, err := c.do(ctx, "POST", "/vms/"+url.PathEscape(vm)+"/"+action, waitQuery(wait), body, &op)
	return op, err
}

// MakeTemplate turns a stopped VM into a template.
func (c *Client) MakeTemplate(ctx context.Context, vm, template string, wait time.Duration) (v1.Operation, error) {
	return c.vmPost(ctx, vm, "template", v1.TemplateArgs{Template: template}, wait)
}

// Deploy creates a VM from a template (full or linked clone).
func (c *Client) Deploy(ctx context.Context, template string, args v1.DeployArgs, wait time.Duration) (v1.Operation, error) {
	var op v1.Operation
	_, err := c.do(ctx, "POST", "/templates/"+url.PathEscape(template)+"/deploy", waitQuery(wait), args, &op)
	return op, err
}

// Templates lists templates.
func (c *Client) Templates(ctx context.Context) ([]v1.Template, error) {
	var ts []v1.Template
	_, err := c.do(ctx, "GET", "/templates", nil, nil, &ts)
	return ts, err
}

// DeleteTemplate deletes a template no linked clone uses.
func (c *Client) DeleteTemplate(ctx context.Context, name string) error {
	_, err := c.do(ctx, "DELETE", "/templates/"+url.PathEscape(name), nil, nil, nil)
	return err
}

// Clone copies a VM (running or not) into a new stopped VM.
func (c *Client) Clone(ctx context.Context, vm string, args v1.CloneArgs, wait time.Duration) (v1.Operation, error) {
	return c.vmPost(ctx, vm, "clone", args, wait)
}

// Suspend saves a running VM to a file and stops it; Action "resume" or
// "start" continues it.
func (c *Client) Suspend(ctx context.Context, vm string, wait time.Duration) (v1.Operation, error) {
	return c.vmPost(ctx, vm, "suspend", nil, wait)
}

// ChangeMedia inserts an ISO into a cdrom (image "" ejects).
func (c *Client) ChangeMedia(ctx context.Context, vm, disk, image string, wait time.Duration) (v1.Operation, error) {
	return c.vmPost(ctx, vm, "media", v1.MediaArgs{Disk: disk, Image: image}, wait)
}

// Snapshot takes a live snapshot of all disks (and memory).
func (c *Client) Snapshot(ctx context.Context, vm string, args v1.SnapshotArgs, wait time.Duration) (v1.Operation, error) {
	return c.vmPost(ctx, vm, "snapshots", args, wait)
}

// Snapshots lists a VM's snapshots, oldest first.
func (c *Client) Snapshots(ctx context.Context, vm string) ([]v1.Snapshot, error) {
	var s []v1.Snapshot
	_, err := c.do(ctx, "GET", "/vms/"+url.PathEscape(vm)+"/snapshots", nil, nil, &s)
	return s, err
}

// RevertSnapshot goes back to a snapshot; discard also drops it.
func (c *Client) RevertSnapshot(ctx context.Context, vm, snap string, discard bool, wait time.Duration) (v1.Operation, error) {
	q := waitQuery(wait)
	if discard {
		q.Set("discard", "true")
	}
	var op v1.Operation
	_, err := c.do(ctx, "POST", "/vms/"+url.PathEscape(vm)+"/snapshots/"+url.PathEscape(snap)+"/revert", q, nil, &op)
	return op, err
}

// CommitSnapshot merges the newest snapshot into its base and drops it.
func (c *Client) CommitSnapshot(ctx context.Context, vm, snap string, wait time.Duration) (v1.Operation, error) {
	var op v1.Operation
	_, err := c.do(ctx, "DELETE", "/vms/"+url.PathEscape(vm)+"/snapshots/"+url.PathEscape(snap), waitQuery(wait), nil, &op)
	return op, err
}

// Import creates a VM from a foreign disk or appliance.
func (c *Client) Import(ctx context.Context, args v1.ImportArgs, wait time.Duration) (v1.Operation, error) {
	return c.ImportOn(ctx, args, "", wait)
}

// ImportOn creates a VM from a file on host ("": the server's host); the
// server forwards the request there and the VM is created on that host.
func (c *Client) ImportOn(ctx context.Context, args v1.ImportArgs, host string, wait time.Duration) (v1.Operation, error) {
	var op v1.Operation
	q := waitQuery(wait)
	if host != "" {
		q.Set("host", host)
	}
	_, err := c.do(ctx, "POST", "/imports", q, args, &op)
	return op, err
}

func volPath(pool, name string) string {
	return "/pools/" + url.PathEscape(pool) + "/volumes/" + url.PathEscape(name)
}

// Pools lists storage pools.
func (c *Client) Pools(ctx context.Context) ([]v1.StoragePool, error) {
	var ps []v1.StoragePool
	_, err := c.do(ctx, "GET", "/pools", nil, nil, &ps)
	return ps, err
}

// AddPool records a storage pool.
func (c *Client) AddPool(ctx context.Context, p v1.StoragePool) error {
	_, err := c.do(ctx, "POST", "/pools", nil, p, nil)
	return err
}

// Volumes lists a pool's volumes.
func (c *Client) Volumes(ctx context.Context, pool string) ([]v1.Volume, error) {
	return c.VolumesOn(ctx, pool, "")
}

// VolumesOn lists the volumes of host's own pool ("": the server's host);
// the server forwards the request to that host.
func (c *Client) VolumesOn(ctx context.Context, pool, host string) ([]v1.Volume, error) {
	var vs []v1.Volume
	_, err := c.do(ctx, "GET", "/pools/"+url.PathEscape(pool)+"/volumes", hostQuery(host), nil, &vs)
	return vs, err
}

// hostQuery is ?host=H, or none for "".
func hostQuery(host string) url.Values {
	if host == "" {
		return nil
	}
	return url.Values{"host": {host}}
}

// CreateVolume makes an empty volume.
func (c *Client) CreateVolume(ctx context.Context, pool string, a v1.VolumeCreateArgs) (v1.Volume, error) {
	var v v1.Volume
	_, err := c.do(ctx, "POST", "/pools/"+url.PathEscape(pool)+"/volumes", nil, a, &v)
	return v, err
}

// DeleteVolume deletes a volume no VM or volume uses.
func (c *Client) DeleteVolume(ctx context.Context, pool, name string) error {
	_, err := c.do(ctx, "DELETE", volPath(pool, name), nil, nil, nil)
	return err
}

// ResizeVolume grows a volume; a VM's disk grows live through an operation
// (returned when one was started).
func (c *Client) ResizeVolume(ctx context.Context, pool, name string, sizeMiB int64, wait time.Duration) (*v1.Operation, error) {
	var op v1.Operation
	code, err := c.do(ctx, "POST", volPath(pool, name)+"/resize", waitQuery(wait), v1.ResizeArgs{SizeMiB: sizeMiB}, &op)
	if err != nil || code == 204 {
		return nil, err
	}
	return &op, nil
}

// ResizeDisk grows a VM's disk (live while it runs).
func (c *Client) ResizeDisk(ctx context.Context, vm, disk string, sizeMiB int64, wait time.Duration) (v1.Operation, error) {
	return c.vmPost(ctx, vm, "resize", v1.ResizeArgs{Disk: disk, SizeMiB: sizeMiB}, wait)
}

// UploadVolume streams an image into a new volume, checked against size
// and sha256 (hex; "" skips the check).
func (c *Client) UploadVolume(ctx context.Context, pool, name, format string, r io.Reader, size int64, sha256 string) (v1.Volume, error) {
	q := url.Values{"format": {format}, "sha256": {sha256}}
	req, err := http.NewRequestWithContext(ctx, "PUT", c.base+volPath(pool, name)+"/data?"+q.Encode(), io.NopCloser(r)) // the caller closes r
	if err != nil {
		return v1.Volume{}, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		return v1.Volume{}, fmt.Errorf("upload %s/%s: %w", pool, name, err)
	}
	defer resp.Body.Close()
	var v v1.Volume
	if resp.StatusCode >= 400 {
		var er v1.ErrorResponse
		if json.NewDecoder(resp.Body).Decode(&er) == nil && er.Error != nil {
			return v, er.Error
		}
		return v, fmt.Errorf("upload %s/%s: %s", pool, name, resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// CopyVolume copies a volume into a new standalone one in the same pool.
func (c *Client) CopyVolume(ctx context.Context, pool, name, dst, format string, wait time.Duration) (v1.Operation, error) {
	var op v1.Operation
	_, err := c.do(ctx, "POST", volPath(pool, name)+"/copy", waitQuery(wait), v1.VolumeCopyArgs{Name: dst, Format: format}, &op)
	return op, err
}

// FlattenVolume merges a volume's backing chain into it.
func (c *Client) FlattenVolume(ctx context.Context, pool, name string, wait time.Duration) (v1.Operation, error) {
	var op v1.Operation
	_, err := c.do(ctx, "POST", volPath(pool, name)+"/flatten", waitQuery(wait), nil, &op)
	return op, err
}

// VolumeInfo shows one volume.
func (c *Client) VolumeInfo(ctx context.Context, pool, name string) (v1.Volume, error) {
	return c.VolumeInfoOn(ctx, pool, name, "")
}

// VolumeInfoOn shows one volume of host's own pool ("": the server's host).
func (c *Client) VolumeInfoOn(ctx context.Context, pool, name, host string) (v1.Volume, error) {
	var v v1.Volume
	_, err := c.do(ctx, "GET", volPath(pool, name), hostQuery(host), nil, &v)
	return v, err
}

// Migrate live-migrates a running VM to another host (POST
// /vms/{name}/migrate).
func (c *Client) Migrate(ctx context.Context, vm string, args v1.MigrateArgs, wait time.Duration) (v1.Operation, error) {
	return c.vmPost(ctx, vm, "migrate", args, wait)
}
