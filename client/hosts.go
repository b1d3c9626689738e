package client

import (
	"context"
	"net/url"
	"time"

	v1 "hangar/api/v1"
)

// Evacuate puts a host in maintenance and moves its running VMs away
// (POST /hosts/{name}/evacuate).
func (c *Client) Evacuate(ctx context.Context, host string, args v1.EvacuateArgs, wait time.Duration) (v1.Operation, error) {
	var op v1.Operation
	_, err := c.do(ctx, "POST", "/hosts/"+url.PathEscape(host)+"/evacuate", waitQuery(wait), args, &op)
	return op, err
}

// SetMaintenance puts a host in maintenance or takes it out (POST
// /hosts/{name}/maintenance).
func (c *Client) SetMaintenance(ctx context.Context, host string, on bool) (v1.Host, error) {
	var h v1.Host
	_, err := c.do(ctx, "POST", "/hosts/"+url.PathEscape(host)+"/maintenance", nil, v1.MaintenanceArgs{On: on}, &h)
	return h, err
}
