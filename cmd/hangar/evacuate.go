package main

import (
	"fmt"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

// newHostEvacuate is `hangar host evacuate HOST`.
func newHostEvacuate(g *globals) *cobra.Command {
	var shutdown bool
	c := opCmd(g, &cobra.Command{Use: "evacuate HOST", Short: "Move every running VM off a host and put it in maintenance",
		Long: `Put HOST in maintenance (nothing new is placed there) and live-migrate each of its running
VMs to the best other host. A VM that no host can take — or every VM, with --shutdown — is
shut down cleanly and parked: it starts again by itself when a host can take it (HOST
leaving maintenance, or, when all its disks are on shared pools, any host with room).
Stopped VMs stay on HOST with their disks. Take HOST out of maintenance with
'hangar host maintenance HOST --off'.`,
		Example: "  hangar host evacuate h2\n  hangar host evacuate h2 --shutdown",
		Args:    cobra.ExactArgs(1), ValidArgsFunction: complete(g, g.hostNames)},
		func(cmd *cobra.Command, a []string) (v1.Operation, error) {
			return g.client().Evacuate(cmd.Context(), a[0], v1.EvacuateArgs{Shutdown: shutdown}, 0)
		})
	c.Flags().BoolVar(&shutdown, "shutdown", false, "shut down and park every running VM instead of migrating it")
	return c
}

// newHostMaintenance is `hangar host maintenance HOST [--off]`.
func newHostMaintenance(g *globals) *cobra.Command {
	var off bool
	c := &cobra.Command{Use: "maintenance HOST", Short: "Put a host in maintenance, or take it out with --off",
		Long: `In maintenance a host keeps what runs there but the scheduler places nothing new on it
(use 'hangar host evacuate' to move its VMs away too). With --off the host takes VMs again,
and the VMs parked there start.`,
		Example: "  hangar host maintenance h2\n  hangar host maintenance h2 --off",
		Args:    cobra.ExactArgs(1), ValidArgsFunction: complete(g, g.hostNames),
		RunE: func(cmd *cobra.Command, a []string) error {
			h, err := g.client().SetMaintenance(cmd.Context(), a[0], !off)
			if err != nil {
				return err
			}
			state := "in maintenance"
			if !h.Maintenance {
				state = "out of maintenance"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "host %s is %s\n", h.Name, state)
			return nil
		}}
	c.Flags().BoolVar(&off, "off", false, "take the host out of maintenance")
	return c
}
