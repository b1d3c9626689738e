package client

import (
	"context"
	"net/url"

	v1 "hangar/api/v1"
)

// VMUsage reads a running VM's usage on its host (GET /vms/{name}/usage).
func (c *Client) VMUsage(ctx context.Context, name string) (v1.VMUsage, error) {
	var u v1.VMUsage
	_, err := c.do(ctx, "GET", "/vms/"+url.PathEscape(name)+"/usage", nil, nil, &u)
	return u, err
}

// VMHistory is the last hour of a VM's sampled usage (GET
// /vms/{name}/history).
func (c *Client) VMHistory(ctx context.Context, name string) (v1.History, error) {
	var h v1.History
	_, err := c.do(ctx, "GET", "/vms/"+url.PathEscape(name)+"/history", nil, nil, &h)
	return h, err
}

// HostHistory is the last hour of a host's sampled usage (GET
// /hosts/{name}/history).
func (c *Client) HostHistory(ctx context.Context, host string) (v1.History, error) {
	var h v1.History
	_, err := c.do(ctx, "GET", "/hosts/"+url.PathEscape(host)+"/history", nil, nil, &h)
	return h, err
}
