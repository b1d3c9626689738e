package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/bench"
	"hangar/internal/daemon"
	"hangar/internal/qemu"
	"hangar/internal/scheduler"
)

func newBench(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Annotations: map[string]string{serverAnnotation: "true"}, Short: "Benchmarks: Hangar side by side with raw QEMU",
		Long: `Benchmarks that run Hangar and raw QEMU side by side in the same run, on this machine, with
their own throw-away server and directories (nothing of a running hangar serve is touched).`,
		Example: "  hangar bench boot --runs 5\n  hangar bench start --runs 5\n  hangar bench failover --runs 3\n  hangar bench place --hosts 2500 --vms 50000\n  make bench"}
	var boot benchFlags
	bootCmd := &cobra.Command{
		Use:   "boot",
		Short: "Boot-to-ready-marker: raw qemu-system-x86_64 (same argv) vs a VM started through the API",
		Long: `Measure boot to the guest's ready marker on its serial console: raw qemu-system-x86_64 with
the same argv Hangar would use, then VMs created and started through the API, alternately,
--runs times each; prints the medians and their ratio.`,
		Example: "  hangar bench boot --image /var/cache/hangar/guest/hangar-guest.qcow2 --runs 5 --accel tcg",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return boot.run(cmd, "boot", func(ctx context.Context, caps qemu.Capabilities, d *daemon.Daemon, work string) error {
				out := cmd.OutOrStdout()
				res, err := bench.Boot(ctx, bench.BootConfig{Image: boot.image, Runs: boot.runs, MemoryMiB: boot.memory, WorkDir: filepath.Join(work, "raw"),
					SerialLog: d.Agent.SerialLogPath, Client: client.New(d.Socket), Caps: caps, Out: out})
				if err != nil {
					return err
				}
				raw, hg := bench.Median(res.Raw), bench.Median(res.Hangar)
				fmt.Fprintf(out, "median api create+start (excluding guest boot): %s\n", bench.Median(res.API).Round(time.Millisecond))
				fmt.Fprintf(out, "median boot-to-ready: raw qemu %s, hangar %s\n", raw.Round(time.Millisecond), hg.Round(time.Millisecond))
				fmt.Fprintf(out, "ratio hangar/raw: %.3f\n", float64(hg)/float64(raw))
				return nil
			})
		},
	}
	boot.register(bootCmd, "guest image with the ready marker")
	cmd.AddCommand(bootCmd, newBenchStart(), newBenchPlace(), newBenchManager(), newBenchMigrate(), newBenchFailover())
	return cmd
}

func newBenchStart() *cobra.Command {
	var start benchFlags
	var bursts []int
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Start latency per phase: API create+start to running vs raw QEMU's own start",
		Long: `Measure, --runs times each and alternately, raw QEMU's own start (exec, QMP greeting,
qmp_capabilities, cont; no disks) and a VM created and started through the API up to the
operation's success (the guest's boot excluded); a stopped VM on the same image, created
first and kept through the runs, holds the pool's copy of the image, so the runs start from
an image already brought in. Hangar's phases come from the operation's
timings (recorded by the agent in the record writes it makes anyway) and the manager's
creation time; prints per-phase medians, and last the line "start ratio Hangar/raw X.XX".
With --at-once N,M,… it first sends N creates+starts at once (then M…), small VMs with an
empty disk each, and reports when all run, the time per VM, and the operations' attempts
(one each: none lost or run twice).`,
		Example: "  hangar bench start --runs 5 --accel tcg\n  hangar bench start --at-once 10,50,100",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return start.run(cmd, "start", func(ctx context.Context, caps qemu.Capabilities, d *daemon.Daemon, work string) error {
				c := client.New(d.Socket)
				if len(bursts) > 0 {
					// The throw-away server's one host admits the bursts'
					// vCPUs (1 each) under the highest CPU ratio there is.
					if _, err := c.SetPoolSettings(ctx, v1.PoolSettings{CPUOvercommit: scheduler.MaxOvercommit}); err != nil {
						return err
					}
					var rs []bench.BurstResult
					for _, n := range bursts {
						r, err := bench.Burst(ctx, c, n, 32)
						if err != nil {
							return err
						}
						rs = append(rs, r)
					}
					if err := bench.ReportBursts(cmd.OutOrStdout(), rs); err != nil {
						return err
					}
				}
				res, err := bench.Start(ctx, bench.StartConfig{Image: start.image, Runs: start.runs, MemoryMiB: start.memory, WorkDir: filepath.Join(work, "raw"),
					Client: c, Caps: caps, Out: cmd.OutOrStdout()})
				if err != nil {
					return err
				}
				return res.Report(cmd.OutOrStdout())
			})
		},
	}
	start.register(cmd, "image the benchmark VM's disk is created from")
	cmd.Flags().IntSliceVar(&bursts, "at-once", nil, "also send this many creates+starts at once (small VMs, empty disks; a list: 10,50,100), before the runs")
	return cmd
}

func newBenchMigrate() *cobra.Command {
	var image, accel string
	var runs, memory int
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Live-migration downtime: Hangar's data plane (TLS) vs raw QEMU between two namespaced hosts",
		Long: `Boot the test guest (idle, its disk on storage both hosts open) in host h1 of a lab of two
network-namespace hosts joined by a switch (internal/netlab), then migrate it back and forth,
alternately as Hangar does (TLS from a pool CA, -incoming defer, capabilities, cont and
announce-self on the target) and as raw QEMU does by default (plain TCP, the target resumes
by itself), --runs times each. Downtime is what the guest sees: from the source's STOP event
to the target's RESUME event. Needs root. The last line reads
"downtime ratio Hangar/raw X.XX".`,
		Example: "  hangar bench migrate --runs 3",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := atLeast(cmd, "runs", int64(runs), 1); err != nil {
				return err
			}
			caps, err := qemu.Detect(cmd.Context(), accel)
			if err != nil {
				return err
			}
			work, err := os.MkdirTemp("", "hgbm")
			if err != nil {
				return err
			}
			defer os.RemoveAll(work)
			res, err := bench.Migrate(cmd.Context(), bench.MigrateConfig{Image: image, MemoryMiB: memory, Runs: runs, WorkDir: work, Caps: caps, Out: cmd.OutOrStdout()})
			if err != nil {
				return err
			}
			res.Report(cmd.OutOrStdout())
			return nil
		},
	}
	cmd.Flags().StringVar(&image, "image", "/var/cache/hangar/guest/hangar-guest.qcow2", "the test guest image")
	cmd.Flags().IntVar(&runs, "runs", 3, "migrations of each kind")
	cmd.Flags().IntVar(&memory, "memory", 256, "guest memory in MiB")
	cmd.Flags().StringVar(&accel, "accel", "auto", "accelerator: auto, kvm or tcg")
	return cmd
}

func newBenchFailover() *cobra.Command {
	var image, accel string
	var runs, memory int
	cmd := &cobra.Command{
		Use:   "failover",
		Short: "HA failover: host kill to the guest's ready marker on another host, beyond the guest's boot",
		Long: `Build a lab of three network-namespace hosts (internal/netlab), each a hangar serve of this
binary, joined into one pool with a shared storage pool (a directory all of them see), then
--runs times: boot the test guest with HA on a host that is not the pool master, kill that
host (SIGKILL to every process of its namespace: a power loss), and time the way back — the
lease seen gone, the host declared dead (the fencing wait: lease TTL + margin, storage
heartbeat stale), the guest's ready marker on another host — and the restarted guest's own
boot (its QEMU's start to the marker), which is taken off. The killed host is started again
before the next run. Needs root. The last line reads "failover X.X s (…)": the median time
from the kill to the ready marker elsewhere minus the guest's boot there.`,
		Example: "  hangar bench failover --runs 3",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := firstErr(atLeast(cmd, "runs", int64(runs), 1), atLeast(cmd, "memory", int64(memory), 64)); err != nil {
				return err
			}
			bin, err := os.Executable()
			if err != nil {
				return err
			}
			work, err := os.MkdirTemp("", "hgbf")
			if err != nil {
				return err
			}
			defer os.RemoveAll(work)
			res, err := bench.Failover(cmd.Context(), bench.FailoverConfig{Bin: bin, Image: image, MemoryMiB: memory, Runs: runs,
				Accel: accel, WorkDir: work, Out: cmd.OutOrStdout()})
			if err != nil {
				return err
			}
			res.Report(cmd.OutOrStdout())
			return nil
		},
	}
	cmd.Flags().StringVar(&image, "image", "/var/cache/hangar/guest/hangar-guest.qcow2", "the test guest image (copied onto the shared pool each run)")
	cmd.Flags().IntVar(&runs, "runs", 3, "host kills")
	cmd.Flags().IntVar(&memory, "memory", 256, "guest memory in MiB")
	cmd.Flags().StringVar(&accel, "accel", envOr("HANGAR_ACCEL", "auto"), "accelerator: auto, kvm or tcg")
	return cmd
}

func newBenchManager() *cobra.Command {
	var vms, streams int
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Memory of a hangar serve holding --vms VM records: idle, listing them, streaming events",
		Long: `Start a throw-away hangar serve (a child process: its RSS is its own; etcd embedded, as on a
one-host pool), write --vms stopped VMs (spec and status, as the API would) straight into its
etcd, list them (GET /api/v1/vms) and open --streams event streams (GET /api/v1/events, read
up to synced), and print the serve's RSS (/proc/PID/status VmRSS) after each step and its
peak (VmHWM). Reported, never asserted; the target of issue 13 is < 200 MiB at 10,000 VMs.`,
		Example: "  hangar bench manager --vms 10000",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := firstErr(atLeast(cmd, "vms", int64(vms), 1), atLeast(cmd, "streams", int64(streams), 0)); err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			_, err = bench.Manager(cmd.Context(), bench.ManagerConfig{Hangar: self, VMs: vms, Streams: streams, Out: cmd.OutOrStdout()})
			return err
		},
	}
	cmd.Flags().IntVar(&vms, "vms", 10000, "VM records to write")
	cmd.Flags().IntVar(&streams, "streams", 2, "event streams to open, one after the other, kept open")
	return cmd
}

func newBenchPlace() *cobra.Command {
	var hosts, vms, runs int
	var seed uint64
	cmd := &cobra.Command{
		Use:   "place",
		Short: "Placements per second of the scheduler over a simulated pool (pure, no I/O)",
		Long: `Run the scheduler's Plan over a simulated, seeded pool of --hosts hosts (mixed sizes, some
in maintenance or down, shared, SAN and local storage pools, a quarter of the load already
booked) for --vms requests (anti-affinity groups, preferred and manual hosts, storage
constraints), --runs times, then over a pool 10× smaller (hosts and VMs; 10× as many
runs), so the growth of the cost per placement with the pool is visible. The fastest run
of each counts: other work on the machine only ever adds time. Each plan is
checked against the rules. The last line reads
"placements/s N (H hosts), cost per placement ×G for 10× hosts".`,
		Example: "  hangar bench place --hosts 2500 --vms 50000",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := firstErr(atLeast(cmd, "hosts", int64(hosts), 10), atLeast(cmd, "vms", int64(vms), 10), atLeast(cmd, "runs", int64(runs), 1)); err != nil {
				return err
			}
			_, _, err := bench.Place(bench.PlaceConfig{Hosts: hosts, VMs: vms, Runs: runs, Seed: seed, Out: cmd.OutOrStdout()})
			return err
		},
	}
	cmd.Flags().IntVar(&hosts, "hosts", 2500, "hosts in the simulated pool")
	cmd.Flags().IntVar(&vms, "vms", 50000, "VMs to place")
	cmd.Flags().IntVar(&runs, "runs", 5, "plans of the big pool (10× as many of the small one; the fastest counts)")
	cmd.Flags().Uint64Var(&seed, "seed", 1, "seed of the simulated pool")
	return cmd
}

// benchFlags are what every benchmark takes.
type benchFlags struct {
	image, accel string
	runs, memory int
}

func (f *benchFlags) register(cmd *cobra.Command, imageHelp string) {
	cmd.Flags().StringVar(&f.image, "image", "/var/cache/hangar/guest/hangar-guest.qcow2", imageHelp)
	cmd.Flags().IntVar(&f.runs, "runs", 5, "runs of each side")
	cmd.Flags().StringVar(&f.accel, "accel", envOr("HANGAR_ACCEL", "auto"), "accelerator: auto, kvm or tcg")
	cmd.Flags().IntVar(&f.memory, "memory", 256, "guest memory in MiB")
}

// run checks the flags, starts a throw-away hangar serve in a temporary
// directory (the image's directory is its import dir), says what is
// measured, and runs body against it.
func (f *benchFlags) run(cmd *cobra.Command, what string, body func(ctx context.Context, caps qemu.Capabilities, d *daemon.Daemon, work string) error) error {
	if err := firstErr(atLeast(cmd, "runs", int64(f.runs), 1), atLeast(cmd, "memory", int64(f.memory), 1)); err != nil {
		return err
	}
	ctx := cmd.Context()
	log, err := newLogger("warn", "text")
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "hgbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	caps, err := qemu.Detect(ctx, f.accel)
	if err != nil {
		return err
	}
	d, err := daemon.Start(ctx, daemon.Config{DataDir: filepath.Join(work, "data"), RunDir: filepath.Join(work, "run"),
		Host: "bench", Log: log, Accel: f.accel, StopTimeout: 10 * time.Second, ImportDirs: []string{filepath.Dir(f.image)}})
	if err != nil {
		return err
	}
	defer d.Close()
	fmt.Fprintf(cmd.OutOrStdout(), "%s benchmark: %d runs each, accelerator %s, qemu %s\n", what, f.runs, caps.Accel, caps.Version)
	return body(ctx, caps, d, work)
}
