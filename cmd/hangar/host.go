package main

import (
	"context"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

func newHost(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "host", Short: "Inspect hosts",
		Long:    "Inspect the pool's hosts: hardware, QEMU, accelerator, liveness and load.",
		Example: "  hangar host info\n  hangar host ls"}
	info := &cobra.Command{
		Use:   "info [HOST]",
		Short: "Show the pool's hosts: CPU, memory, QEMU, accelerator",
		Long: `Show the pool's hosts (or one): CPU, memory (and how much VMs booked), QEMU version,
accelerator (kvm or tcg), kernel and VM count. The first line names the server asked.`,
		Example:           "  hangar host info\n  hangar host info node1 -o json",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: complete(g, g.hostNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			hosts, err := g.client().Hosts(cmd.Context())
			if err != nil {
				return err
			}
			if len(args) == 1 {
				var one []v1.Host
				for _, h := range hosts {
					if h.Name == args[0] {
						one = append(one, h)
					}
				}
				if len(one) == 0 {
					return fmt.Errorf("host %q not found (the pool has %d)", args[0], len(hosts))
				}
				hosts = one
			}
			return g.print(cmd, hosts, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Server:\t%s\n\n", g.serverName())
				for _, h := range hosts {
					fmt.Fprintf(w, "Host:\t%s (alive: %t)\nCPU:\t%d x %s (%s)\nMemory:\t%d MiB (%d MiB allocated)\nQEMU:\t%s\nAccelerator:\t%s\nKernel:\t%s\nVMs:\t%d\n\n",
						h.Name, h.Alive, h.CPUs, h.CPUModel, h.Arch, h.MemoryMiB, h.AllocatedMemoryMiB, h.QEMUVersion, h.Accelerator, h.Kernel, h.VMs)
				}
			})
		},
	}
	addOutput(info, g, false)
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List the pool's hosts", Args: cobra.NoArgs,
		Long: "List the pool's hosts, one a line (-o wide adds CPU model, QEMU and kernel).", Example: "  hangar host ls -o wide",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			hosts, err := g.client().Hosts(cmd.Context())
			if err != nil {
				return err
			}
			header := []string{"NAME", "ALIVE", "CPUS", "MEMORY", "ALLOCATED", "ACCEL", "VMS"}
			if g.wide() {
				header = append(header, "CPU MODEL", "QEMU", "KERNEL")
			}
			var rows [][]string
			for _, h := range hosts {
				r := []string{h.Name, strconv.FormatBool(h.Alive), strconv.Itoa(h.CPUs), fmt.Sprintf("%d MiB", h.MemoryMiB),
					fmt.Sprintf("%d MiB", h.AllocatedMemoryMiB), h.Accelerator, strconv.Itoa(h.VMs)}
				if g.wide() {
					r = append(r, h.CPUModel, h.QEMUVersion, h.Kernel)
				}
				rows = append(rows, r)
			}
			return g.printList(cmd, hosts, header, rows)
		},
	}
	addOutput(list, g, true)
	cmd.AddCommand(info, list)
	return cmd
}

func newOp(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "op", Aliases: []string{"operation"}, Short: "Inspect operations",
		Long: `Inspect, wait for and cancel operations: every long action (create, start, copy, …) is
an operation recorded before it starts, with its state and progress.`,
		Example: "  hangar op ls\n  hangar op show ID -o json\n  hangar op wait ID"}
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List operations",
		Long:    "List operations with kind, target, state, progress and error (-o wide adds created, updated and attempts).",
		Example: "  hangar op list\n  hangar op list -o wide --no-headers",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			ops, err := g.client().Operations(cmd.Context())
			if err != nil {
				return err
			}
			header := []string{"ID", "KIND", "TARGET", "STATE", "PROGRESS", "ERROR"}
			if g.wide() {
				header = append(header, "CREATED", "UPDATED", "ATTEMPTS")
			}
			var rows [][]string
			for _, o := range ops {
				msg := "-"
				if o.Error != nil {
					msg = o.Error.Message
				}
				r := []string{o.ID, o.Kind, o.Target, o.State, fmt.Sprintf("%.0f%% %s", o.Progress.Fraction*100, opPhase(o)), msg}
				if g.wide() {
					r = append(r, o.Created.Local().Format(time.DateTime), o.Updated.Local().Format(time.DateTime), strconv.Itoa(o.Attempts))
				}
				rows = append(rows, r)
			}
			return g.printList(cmd, ops, header, rows)
		},
	}
	addOutput(list, g, true)
	show := &cobra.Command{
		Use:               "show ID",
		Short:             "Show an operation",
		Long:              "Show one operation: kind, target, state, progress, error and times.",
		Example:           "  hangar op show 5f0c…\n  hangar op show 5f0c… -o json",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.opIDs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			op, err := g.client().Operation(cmd.Context(), args[0], 0)
			if err != nil {
				return err
			}
			return g.print(cmd, op, func(w *tabwriter.Writer) { opDetail(w, op) })
		},
	}
	addOutput(show, g, false)
	wait := &cobra.Command{
		Use:   "wait ID",
		Short: "Wait for an operation to finish",
		Long: `Wait for an operation to finish, showing its progress; exits non-zero when it failed
or was cancelled (its error is printed), or when --timeout passes first.`,
		Example:           "  id=$(hangar vm start web1 --wait=false | awk '{print $2}')\n  hangar op wait $id --timeout 2m",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.opIDs),
		RunE: func(cmd *cobra.Command, args []string) error {
			timeout, _ := cmd.Flags().GetDuration("timeout")
			if err := notNegative(cmd, "timeout", timeout); err != nil {
				return err
			}
			parent := cmd.Context()
			ctx := parent
			c := g.client()
			op, err := c.Operation(ctx, args[0], 0)
			if err != nil {
				return err
			}
			if timeout > 0 {
				var cancel func()
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			cmd.SetContext(ctx)
			op, err = follow(cmd, c, op, nil, true)
			if err != nil && ctx.Err() != nil && parent.Err() == nil {
				return fmt.Errorf("operation %s still %s after --timeout %s", op.ID, op.State, timeout)
			}
			if err != nil {
				return fmt.Errorf("operation %s %s %s: %w", op.ID, op.Kind, op.State, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "operation %s %s %s: %s\n", op.ID, op.Kind, op.Target, op.State)
			return nil
		},
	}
	wait.Flags().Duration("timeout", 0, "give up after this long (0: wait as long as it takes)")
	cancel := &cobra.Command{
		Use:               "cancel ID",
		Short:             "Cancel a pending operation",
		Long:              "Cancel an operation that has not started yet.",
		Example:           "  hangar op cancel 5f0c…",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.opIDs),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := g.client().CancelOperation(cmd.Context(), args[0])
			return err
		},
	}
	cmd.AddCommand(list, show, wait, cancel)
	return cmd
}

func opDetail(w *tabwriter.Writer, op v1.Operation) {
	fmt.Fprintf(w, "ID:\t%s\nKind:\t%s\nTarget:\t%s\nState:\t%s\nProgress:\t%.0f%% %s\n", op.ID, op.Kind, op.Target, op.State, op.Progress.Fraction*100, opPhase(op))
	if op.Error != nil {
		fmt.Fprintf(w, "Error:\t%s (%s)\n", op.Error.Message, op.Error.Code)
	}
	fmt.Fprintf(w, "Created:\t%s\nUpdated:\t%s\nAttempts:\t%d\n", op.Created.Local().Format(time.DateTime), op.Updated.Local().Format(time.DateTime), op.Attempts)
}
