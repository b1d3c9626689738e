package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

func printSettings(g *globals, cmd *cobra.Command, ps v1.PoolSettings) error {
	return g.print(cmd, ps, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "CPU overcommit:\t%g\nMemory overcommit:\t%g\nHost reserve:\t%d CPUs, %d MiB\n", ps.CPUOvercommit, ps.MemoryOvercommit, ps.ReserveCPUs, ps.ReserveMemoryMiB)
		if ps.HAFailures != nil {
			fmt.Fprintf(w, "HA host failures tolerated:\t%d\n", *ps.HAFailures)
		}
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
	var failures int
	var resCPU, resMem int
	set := &cobra.Command{
		Use:   "set",
		Short: "Change the pool's admission settings",
		Long: `Change the overcommit ratios (from 0.1 to 64). A host admits vCPUs up to its CPUs × --cpu-overcommit
(default 4) and memory up to its memory × --memory-overcommit (default 1: no memory overcommit). What is placed,
evacuated or migrated next is admitted under the new ratios; VMs already booked past a lowered ratio stay.
--ha-failures N (default 1) keeps room to restart the HA VMs of the N largest hosts: starting an HA VM or turning
HA on is refused when they could not restart on the others (0: off).`,
		Example: "  hangar pool set --cpu-overcommit 2\n  hangar pool set --memory-overcommit 1.2\n  hangar pool set --ha-failures 2",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			cpuSet, memSet := cmd.Flags().Changed("cpu-overcommit"), cmd.Flags().Changed("memory-overcommit")
			haSet := cmd.Flags().Changed("ha-failures")
			resCPUSet, resMemSet := cmd.Flags().Changed("reserve-cpus"), cmd.Flags().Changed("reserve-memory")
			if !cpuSet && !memSet && !haSet && !resCPUSet && !resMemSet {
				return fmt.Errorf("nothing to set: give --cpu-overcommit, --memory-overcommit, --reserve-cpus, --reserve-memory or --ha-failures")
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
			if resCPUSet {
				ps.ReserveCPUs = resCPU
			}
			if resMemSet {
				ps.ReserveMemoryMiB = resMem
			}
			if haSet {
				ps.HAFailures = &failures
			}
			if ps, err = c.SetPoolSettings(cmd.Context(), ps); err != nil {
				return err
			}
			return printSettings(g, cmd, ps)
		},
	}
	set.Flags().Float64Var(&cpu, "cpu-overcommit", 0, "vCPUs a host admits per CPU (0.1 to 64)")
	set.Flags().Float64Var(&mem, "memory-overcommit", 0, "memory a host admits per MiB it has (0.1 to 64)")
	set.Flags().IntVar(&failures, "ha-failures", 1, "host failures whose HA VMs must have room to restart (0: off)")
	set.Flags().IntVar(&resCPU, "reserve-cpus", 0, "CPUs every host keeps for itself; the ratio applies to the rest")
	set.Flags().IntVar(&resMem, "reserve-memory", 0, "memory in MiB every host keeps for itself; the ratio applies to the rest")
	addOutput(set, g, false)
	return []*cobra.Command{show, set}
}
