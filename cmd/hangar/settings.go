package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

func printSettings(g *globals, cmd *cobra.Command, ps v1.PoolSettings) error {
	return g.print(cmd, ps, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "CPU overcommit:\t%g\nMemory overcommit:\t%g\n", ps.CPUOvercommit, ps.MemoryOvercommit)
	})
}

// poolSettings are `hangar pool settings` and `hangar pool set`: the
// pool's admission (overcommit) ratios.
func poolSettings(g *globals) []*cobra.Command {
	show := &cobra.Command{
		Use:     "settings",
		Short:   "Show the pool's admission settings (overcommit ratios)",
		Long:    "Show the ratios placement, evacuation and migration admit VMs under: a host takes vCPUs up to its CPUs × the CPU overcommit and memory up to its memory × the memory overcommit.",
		Example: "  hangar pool settings\n  hangar pool settings -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			ps, err := g.client().PoolSettings(cmd.Context())
			if err != nil {
				return err
			}
			return printSettings(g, cmd, ps)
		},
	}
	addOutput(show, g, false)

	var cpu, mem float64
	set := &cobra.Command{
		Use:   "set",
		Short: "Change the pool's admission settings",
		Long: `Change the overcommit ratios (from 0.1 to 64). A host admits vCPUs up to its CPUs × --cpu-overcommit
(default 4) and memory up to its memory × --memory-overcommit (default 1: no memory overcommit). What is placed,
evacuated or migrated next is admitted under the new ratios; VMs already booked past a lowered ratio stay.`,
		Example: "  hangar pool set --cpu-overcommit 2\n  hangar pool set --memory-overcommit 1.2",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			cpuSet, memSet := cmd.Flags().Changed("cpu-overcommit"), cmd.Flags().Changed("memory-overcommit")
			if !cpuSet && !memSet {
				return fmt.Errorf("nothing to set: give --cpu-overcommit and/or --memory-overcommit")
			}
			c := g.client()
			ps, err := c.PoolSettings(cmd.Context())
			if err != nil {
				return err
			}
			if cpuSet {
				ps.CPUOvercommit = cpu
			}
			if memSet {
				ps.MemoryOvercommit = mem
			}
			if ps, err = c.SetPoolSettings(cmd.Context(), ps); err != nil {
				return err
			}
			return printSettings(g, cmd, ps)
		},
	}
	set.Flags().Float64Var(&cpu, "cpu-overcommit", 0, "vCPUs a host admits per CPU (0.1 to 64)")
	set.Flags().Float64Var(&mem, "memory-overcommit", 0, "memory a host admits per MiB it has (0.1 to 64)")
	addOutput(set, g, false)
	return []*cobra.Command{show, set}
}
