package qmp

import (
	"context"
	"errors"
)

// Status is the answer to query-status.
type Status struct {
	// Status is QEMU's run state: "prelaunch", "running", "paused",
	// "shutdown", "inmigrate", "postmigrate", "suspended", "guest-panicked", ...
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// QueryStatus returns the VM's run state.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Cont starts or resumes the guest's CPUs.
func (c *Client) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// Stop pauses the guest's CPUs.
func (c *Client) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// SystemPowerdown presses the ACPI power button; the guest decides.
func (c *Client) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// SystemReset resets the guest at once.
func (c *Client) SystemReset(ctx context.Context) error {
	return c.Execute(ctx, "system_reset", nil, nil)
}

// Quit makes QEMU exit at once. Losing the connection instead of the
// answer counts as success, since that is what quit does; wait on Done for
// the end of the connection.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// Job is one entry of query-jobs.
type Job struct {
	ID              string `json:"id"`
	Type            string `json:"type"`   // e.g. "mirror", "backup", "create", "commit"
	Status          string `json:"status"` // e.g. "running", "ready", "concluded"
	CurrentProgress int64  `json:"current-progress"`
	TotalProgress   int64  `json:"total-progress"`
	Error           string `json:"error,omitempty"`
}

// QueryJobs lists the block and other background jobs.
func (c *Client) QueryJobs(ctx context.Context) ([]Job, error) {
	var jobs []Job
	err := c.Execute(ctx, "query-jobs", nil, &jobs)
	return jobs, err
}

type jobID struct {
	ID string `json:"id"`
}

// JobComplete completes a job that is ready (e.g. pivots a mirror).
func (c *Client) JobComplete(ctx context.Context, id string) error {
	return c.Execute(ctx, "job-complete", jobID{id}, nil)
}

// JobCancel cancels a job.
func (c *Client) JobCancel(ctx context.Context, id string) error {
	return c.Execute(ctx, "job-cancel", jobID{id}, nil)
}

// JobDismiss removes a concluded job.
func (c *Client) JobDismiss(ctx context.Context, id string) error {
	return c.Execute(ctx, "job-dismiss", jobID{id}, nil)
}
