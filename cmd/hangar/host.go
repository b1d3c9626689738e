package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newHost(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "host", Short: "Inspect hosts"}
	info := &cobra.Command{
		Use:   "info",
		Short: "Show the pool's hosts: CPU, memory, QEMU, accelerator",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			hosts, err := g.client().Hosts(cmd.Context())
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), g.output, hosts, func(w *tabwriter.Writer) {
				for _, h := range hosts {
					fmt.Fprintf(w, "Host:\t%s (alive: %t)\nCPU:\t%d x %s (%s)\nMemory:\t%d MiB (%d MiB allocated)\nQEMU:\t%s\nAccelerator:\t%s\nKernel:\t%s\nVMs:\t%d\n\n",
						h.Name, h.Alive, h.CPUs, h.CPUModel, h.Arch, h.MemoryMiB, h.AllocatedMemoryMiB, h.QEMUVersion, h.Accelerator, h.Kernel, h.VMs)
				}
			})
		},
	}
	addOutput(info, g)
	cmd.AddCommand(info)
	return cmd
}

func newOp(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "op", Short: "Inspect operations"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List operations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ops, err := g.client().Operations(cmd.Context())
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), g.output, ops, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tKIND\tTARGET\tSTATE\tPROGRESS\tERROR")
				for _, o := range ops {
					msg := ""
					if o.Error != nil {
						msg = o.Error.Message
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%.0f%% %s\t%s\n", o.ID, o.Kind, o.Target, o.State, o.Progress.Fraction*100, o.Progress.Phase, msg)
				}
			})
		},
	}
	addOutput(list, g)
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show an operation",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			op, err := g.client().Operation(cmd.Context(), args[0], 0)
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), "yaml", op, nil)
		},
	}
	cancel := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a pending operation",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := g.client().CancelOperation(cmd.Context(), args[0])
			return err
		},
	}
	cmd.AddCommand(list, show, cancel)
	return cmd
}
