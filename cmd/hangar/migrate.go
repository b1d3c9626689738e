package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

// newMigrate is `hangar vm migrate NAME --to HOST`.
func newMigrate(g *globals) *cobra.Command {
	var (
		to, bandwidth             string
		insecure                  bool
		downtime, progressTimeout time.Duration
	)
	c := opCmd(g, &cobra.Command{Use: "migrate VM --to HOST", Short: "Live-migrate a running VM to another host (encrypted; local disks copied too)",
		Long: `Move a running VM to another host of the pool while it keeps running: disks on local pools
are copied first (NBD mirror), then memory, then the guest pauses for the switch-over
(at most --downtime-limit) and continues on HOST, announcing itself on its networks.
The streams are TLS from the pool CA unless --insecure. A migration that makes no
progress for --progress-timeout is aborted and the VM keeps running where it was.`,
		Example: "  hangar vm migrate web --to h2\n  hangar vm migrate db --to h3 --max-bandwidth 200MiB --downtime-limit 100ms",
		Args:    cobra.ExactArgs(1), ValidArgsFunction: complete(g, g.vmNames)},
		func(cmd *cobra.Command, a []string) (v1.Operation, error) {
			bw, err := parseRate(bandwidth)
			if err != nil {
				return v1.Operation{}, fmt.Errorf("--max-bandwidth: %w", err)
			}
			if downtime < 0 || progressTimeout < 0 {
				return v1.Operation{}, fmt.Errorf("--downtime-limit and --progress-timeout must not be negative")
			}
			return g.client().Migrate(cmd.Context(), a[0], v1.MigrateArgs{To: to, Insecure: insecure, MaxBandwidth: bw,
				DowntimeLimitMs: downtime.Milliseconds(), ProgressTimeoutSec: int64(progressTimeout / time.Second)}, 0)
		})
	f := c.Flags()
	f.StringVar(&to, "to", "", "host to move the VM to (required)")
	f.BoolVar(&insecure, "insecure", false, "migrate without TLS (the memory and disks cross the network in the clear)")
	f.StringVar(&bandwidth, "max-bandwidth", "", "cap of the migration stream per second, e.g. 100MiB, 1GiB (default: the server's)")
	f.DurationVar(&downtime, "downtime-limit", 0, "longest pause at switch-over, e.g. 100ms (default 300ms)")
	f.DurationVar(&progressTimeout, "progress-timeout", 0, "abort when no progress for this long (default 150s)")
	_ = c.MarkFlagRequired("to")
	_ = c.RegisterFlagCompletionFunc("to", complete(g, g.hostNames, g.hostNames)) // args hold the VM: the second list answers
	return c
}

// parseRate reads a byte count with an optional IEC or SI unit (per
// second is implied); "" is 0.
func parseRate(s string) (int64, error) {
	s = strings.TrimSuffix(strings.TrimSpace(s), "/s")
	if s == "" {
		return 0, nil
	}
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil || n <= 0 || n*float64(mult) > 1<<50 {
		return 0, fmt.Errorf("%q: want a positive size such as 100MiB", s)
	}
	return int64(n * float64(mult)), nil
}

// migrationLine is the progress line of a migration: what moves and how
// fast the guest dirties memory.
func migrationLine(m v1.MigrationProgress) string {
	var b strings.Builder
	if m.DiskTotal > 0 {
		fmt.Fprintf(&b, " disks %s of %s", mib(m.DiskTransferred), mib(m.DiskTotal))
	}
	if m.RAMTotal > 0 {
		fmt.Fprintf(&b, " ram %s sent, %s left of %s, dirty %s/s, expected downtime %d ms", mib(m.RAMTransferred),
			mib(m.RAMRemaining), mib(m.RAMTotal), mib(m.DirtyRate), m.ExpectedDowntimeMs)
	}
	if m.CPUThrottlePercent > 0 {
		fmt.Fprintf(&b, ", vCPUs throttled %d%%", m.CPUThrottlePercent)
	}
	if m.DowntimeMs > 0 {
		fmt.Fprintf(&b, " downtime %d ms, total %d ms", m.DowntimeMs, m.TotalMs)
	}
	return b.String()
}
