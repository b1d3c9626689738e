package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"hangar/client"
	"hangar/internal/bench"
	"hangar/internal/daemon"
	"hangar/internal/qemu"
)

func newBench(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Annotations: map[string]string{serverAnnotation: "true"}, Short: "Benchmarks: Hangar side by side with raw QEMU",
		Long: `Benchmarks that run Hangar and raw QEMU side by side in the same run, on this machine, with
their own throw-away server and directories (nothing of a running hangar serve is touched).`,
		Example: "  hangar bench boot --runs 5\n  hangar bench start --runs 5\n  make bench"}
	var image string
	var runs, memory int
	var accel string
	boot := &cobra.Command{
		Use:   "boot",
		Short: "Boot-to-ready-marker: raw qemu-system-x86_64 (same argv) vs a VM started through the API",
		Long: `Measure boot to the guest's ready marker on its serial console: raw qemu-system-x86_64 with
the same argv Hangar would use, then VMs created and started through the API, alternately,
--runs times each; prints the medians and their ratio.`,
		Example: "  hangar bench boot --image /var/cache/hangar/guest/hangar-guest.qcow2 --runs 5 --accel tcg",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := firstErr(atLeast(cmd, "runs", int64(runs), 1), atLeast(cmd, "memory", int64(memory), 1)); err != nil {
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
			caps, err := qemu.Detect(ctx, accel)
			if err != nil {
				return err
			}
			d, err := daemon.Start(ctx, daemon.Config{DataDir: filepath.Join(work, "data"), RunDir: filepath.Join(work, "run"),
				Host: "bench", Log: log, Accel: accel, StopTimeout: 10 * time.Second, ImportDirs: []string{filepath.Dir(image)}})
			if err != nil {
				return err
			}
			defer d.Close()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "boot benchmark: %d runs each, accelerator %s, qemu %s\n", runs, caps.Accel, caps.Version)
			res, err := bench.Boot(ctx, bench.BootConfig{Image: image, Runs: runs, MemoryMiB: memory, WorkDir: filepath.Join(work, "raw"),
				SerialLog: d.Agent.SerialLogPath, Client: client.New(d.Socket), Caps: caps, Out: out})
			if err != nil {
				return err
			}
			raw, hg := bench.Median(res.Raw), bench.Median(res.Hangar)
			fmt.Fprintf(out, "median api create+start (excluding guest boot): %s\n", bench.Median(res.API).Round(time.Millisecond))
			fmt.Fprintf(out, "median boot-to-ready: raw qemu %s, hangar %s\n", raw.Round(time.Millisecond), hg.Round(time.Millisecond))
			fmt.Fprintf(out, "ratio hangar/raw: %.3f\n", float64(hg)/float64(raw))
			return nil
		},
	}
	boot.Flags().StringVar(&image, "image", "/var/cache/hangar/guest/hangar-guest.qcow2", "guest image with the ready marker")
	boot.Flags().IntVar(&runs, "runs", 5, "runs of each side")
	boot.Flags().StringVar(&accel, "accel", envOr("HANGAR_ACCEL", "auto"), "accelerator: auto, kvm or tcg")
	boot.Flags().IntVar(&memory, "memory", 256, "guest memory in MiB")
	cmd.AddCommand(boot, newBenchStart())
	return cmd
}

func newBenchStart() *cobra.Command {
	var image, accel string
	var runs, memory int
	start := &cobra.Command{
		Use:   "start",
		Short: "Start latency per phase: API create+start to running vs raw QEMU's own start",
		Long: `Measure, --runs times each and alternately, raw QEMU's own start (exec, QMP greeting,
qmp_capabilities, cont; no disks) and a VM created and started through the API up to the
operation's success (the guest's boot excluded); a stopped VM on the same image, created
first and kept through the runs, holds the pool's copy of the image, so the runs start from
an image already brought in. Hangar's phases come from the operation's
timings (recorded by the agent in the record writes it makes anyway) and the manager's
creation time; prints per-phase medians, and last the line "start ratio Hangar/raw X.XX".`,
		Example: "  hangar bench start --runs 5 --accel tcg",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := firstErr(atLeast(cmd, "runs", int64(runs), 1), atLeast(cmd, "memory", int64(memory), 1)); err != nil {
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
			caps, err := qemu.Detect(ctx, accel)
			if err != nil {
				return err
			}
			d, err := daemon.Start(ctx, daemon.Config{DataDir: filepath.Join(work, "data"), RunDir: filepath.Join(work, "run"),
				Host: "bench", Log: log, Accel: accel, StopTimeout: 10 * time.Second, ImportDirs: []string{filepath.Dir(image)}})
			if err != nil {
				return err
			}
			defer d.Close()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "start benchmark: %d runs each, accelerator %s, qemu %s\n", runs, caps.Accel, caps.Version)
			res, err := bench.Start(ctx, bench.StartConfig{Image: image, Runs: runs, MemoryMiB: memory, WorkDir: filepath.Join(work, "raw"),
				Client: client.New(d.Socket), Caps: caps, Out: out})
			if err != nil {
				return err
			}
			return res.Report(out)
		},
	}
	start.Flags().StringVar(&image, "image", "/var/cache/hangar/guest/hangar-guest.qcow2", "image the benchmark VM's disk is created from")
	start.Flags().IntVar(&runs, "runs", 5, "runs of each side")
	start.Flags().StringVar(&accel, "accel", envOr("HANGAR_ACCEL", "auto"), "accelerator: auto, kvm or tcg")
	start.Flags().IntVar(&memory, "memory", 256, "guest memory in MiB")
	return start
}
