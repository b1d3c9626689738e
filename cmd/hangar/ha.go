package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

func newVMHA(g *globals) *cobra.Command {
	var (
		enable, disable              bool
		priority, order, maxRestarts int
		window                       string
	)
	cmd := &cobra.Command{
		Use:   "ha NAME --enable|--disable",
		Short: "Switch a VM's high availability on or off, and set its restart order",
		Long: `Switch a VM's high availability (HA) on or off, or change its settings; only the flags
given change (a VM that had none gets the defaults for the rest: priority 0, restart
order 0, at most 3 restarts per 1h). When the VM's host is declared dead, an HA VM that
was meant to run is restarted on another host: higher --priority first, then lower
--restart-order; its placement and preferred hosts apply. A VM restarted --max-restarts
times within --window stays down. Non-HA VMs of a dead host are marked lost.

This build records the settings and checks them; the failover itself (detection,
fencing, restarts) is not wired yet.`,
		Example: `  hangar vm ha db1 --enable --priority 100
  hangar vm ha web1 --enable --restart-order 2 --max-restarts 5 --window 30m
  hangar vm ha test1 --disable`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := haPatch(cmd, enable, disable, priority, order, maxRestarts, window)
			if err != nil {
				return err
			}
			v, err := g.client().PatchVM(cmd.Context(), args[0], v1.VMPatch{HA: p})
			if err != nil {
				return err
			}
			printHA(cmd.OutOrStdout(), v.Spec)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&enable, "enable", false, "restart the VM elsewhere when its host dies")
	f.BoolVar(&disable, "disable", false, "do not restart it (the other settings are kept)")
	f.IntVar(&priority, "priority", 0, "higher restarts first (-1000 to 1000)")
	f.IntVar(&order, "restart-order", 0, "lower restarts first within one priority (0 to 1000)")
	f.IntVar(&maxRestarts, "max-restarts", 0, "HA restarts allowed within --window (1 to 100)")
	f.StringVar(&window, "window", "", "the window of --max-restarts, a duration like 30m or 1h")
	cmd.MarkFlagsMutuallyExclusive("enable", "disable")
	return cmd
}

// haPatch is the change the flags of `vm ha` ask for; the server checks
// the values (and names the field when one is out of range).
func haPatch(cmd *cobra.Command, enable, disable bool, priority, order, maxRestarts int, window string) (*v1.HAPatch, error) {
	p := v1.HAPatch{Priority: ifGiven(cmd, "priority", &priority), RestartOrder: ifGiven(cmd, "restart-order", &order),
		MaxRestarts: ifGiven(cmd, "max-restarts", &maxRestarts), RestartWindow: ifGiven(cmd, "window", &window)}
	if enable || disable {
		p.Enabled = &enable
	}
	if p == (v1.HAPatch{}) {
		return nil, fmt.Errorf("nothing to change: give --enable, --disable, --priority, --restart-order, --max-restarts or --window")
	}
	return &p, nil
}

func printHA(w io.Writer, s v1.VMSpec) { fmt.Fprintf(w, "vm %s: HA %s\n", s.Name, haSummary(s.HA)) }

// haSummary is HA settings in a few words ("on, priority 5, …").
func haSummary(h *v1.HA) string {
	if h == nil {
		return "off"
	}
	state := "off"
	if h.Enabled {
		state = "on"
	}
	return fmt.Sprintf("%s, priority %d, restart order %d, at most %d restarts per %s",
		state, h.Priority, h.RestartOrder, h.MaxRestarts, h.RestartWindow)
}
