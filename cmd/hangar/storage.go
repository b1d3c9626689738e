package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

// storageCommands adds templates, clones, snapshots, suspend, media and import.
func storageCommands(g *globals, vmCmd *cobra.Command) []*cobra.Command {
	var wait bool
	waitFlag := func(c *cobra.Command) *cobra.Command {
		c.Flags().BoolVar(&wait, "wait", true, "wait until the operation is done")
		return c
	}
	run := func(cmd *cobra.Command, op v1.Operation, err error) error {
		_, err = follow(cmd, g.client(), op, err, wait)
		return err
	}
	vmCmd.AddCommand(
		waitFlag(&cobra.Command{Use: "template VM TEMPLATE", Short: "Turn a stopped VM into a read-only template", Args: cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, a []string) error {
				op, err := g.client().MakeTemplate(cmd.Context(), a[0], a[1], 0)
				return run(cmd, op, err)
			}}),
		waitFlag(&cobra.Command{Use: "clone VM NEWNAME", Short: "Copy a VM — also while it runs (all disks at one instant) — into a new stopped VM", Args: cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, a []string) error {
				op, err := g.client().Clone(cmd.Context(), a[0], v1.CloneArgs{Name: a[1]}, 0)
				return run(cmd, op, err)
			}}),
		waitFlag(&cobra.Command{Use: "suspend VM", Short: "Save a running VM's memory to a file and stop it (resume continues it)", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, a []string) error {
				op, err := g.client().Suspend(cmd.Context(), a[0], 0)
				return run(cmd, op, err)
			}}),
		waitFlag(&cobra.Command{Use: "media VM CDROM [ISO]", Short: "Insert an ISO into a cdrom, or eject it (no ISO)", Args: cobra.RangeArgs(2, 3),
			RunE: func(cmd *cobra.Command, a []string) error {
				iso := ""
				if len(a) == 3 {
					iso = a[2]
				}
				op, err := g.client().ChangeMedia(cmd.Context(), a[0], a[1], iso, 0)
				return run(cmd, op, err)
			}}),
		newSnapshot(g),
	)
	var linked, start bool
	var forwards []string
	deploy := waitFlag(&cobra.Command{Use: "deploy TEMPLATE NAME", Short: "Deploy a VM from a template (--linked: a copy-on-write clone)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			args := v1.DeployArgs{Name: a[1], Linked: linked, Start: start}
			for _, f := range forwards {
				fw, err := parseForward(f)
				if err != nil {
					return err
				}
				args.Forwards = append(args.Forwards, fw)
			}
			op, err := g.client().Deploy(cmd.Context(), a[0], args, 0)
			return run(cmd, op, err)
		}})
	deploy.Flags().BoolVar(&linked, "linked", false, "linked clone (qcow2 overlay on the template's base)")
	deploy.Flags().BoolVar(&start, "start", true, "start the VM once deployed")
	deploy.Flags().StringArrayVar(&forwards, "forward", nil, "HOSTPORT:GUESTPORT for the user-mode NIC")
	vmCmd.AddCommand(deploy)

	tmpl := &cobra.Command{Use: "template", Short: "Manage templates"}
	tlist := &cobra.Command{Use: "list", Short: "List templates", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, a []string) error {
			ts, err := g.client().Templates(cmd.Context())
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), g.output, ts, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tHOST\tCPUS\tMEMORY\tDISKS\tFROM")
				for _, t := range ts {
					fmt.Fprintf(w, "%s\t%s\t%d\t%d MiB\t%d\t%s\n", t.Name, t.Host, t.CPUs, t.MemoryMiB, len(t.Disks), t.Source)
				}
			})
		}}
	addOutput(tlist, g)
	tmpl.AddCommand(tlist, &cobra.Command{Use: "delete NAME", Short: "Delete a template no linked clone uses", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error { return g.client().DeleteTemplate(cmd.Context(), a[0]) }})

	var name string
	var cpus, memory int
	imp := waitFlag(&cobra.Command{Use: "import FILE", Short: "Create a VM from an OVA/OVF, VMDK, VHD, VHDX, qcow2 or raw image, or a block device (P2V)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			args := v1.ImportArgs{Path: a[0], Name: name, CPUs: cpus, MemoryMiB: memory, Start: start}
			for _, f := range forwards {
				fw, err := parseForward(f)
				if err != nil {
					return err
				}
				args.Forwards = append(args.Forwards, fw)
			}
			op, err := g.client().Import(cmd.Context(), args, 0)
			return run(cmd, op, err)
		}})
	imp.Flags().StringVar(&name, "name", "", "VM name (default: from the appliance or file name)")
	imp.Flags().IntVar(&cpus, "cpus", 0, "virtual CPUs (default: from the OVF, else 1)")
	imp.Flags().IntVar(&memory, "memory", 0, "memory in MiB (default: from the OVF, else 512)")
	imp.Flags().BoolVar(&start, "start", false, "start the VM once imported")
	imp.Flags().StringArrayVar(&forwards, "forward", nil, "HOSTPORT:GUESTPORT for the user-mode NIC")
	return []*cobra.Command{tmpl, imp, newPool(g), newVolume(g)}
}

func newSnapshot(g *globals) *cobra.Command {
	var wait, memory bool
	cmd := &cobra.Command{Use: "snapshot", Short: "Live snapshots (hot mode): create, list, commit, discard, revert"}
	run := func(cmd *cobra.Command, op v1.Operation, err error) error {
		_, err = follow(cmd, g.client(), op, err, wait)
		return err
	}
	create := &cobra.Command{Use: "create VM NAME", Short: "Snapshot all disks at one instant (--memory: and RAM)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			op, err := g.client().Snapshot(cmd.Context(), a[0], v1.SnapshotArgs{Name: a[1], Memory: memory}, 0)
			return run(cmd, op, err)
		}}
	create.Flags().BoolVar(&memory, "memory", false, "also save RAM and device state")
	list := &cobra.Command{Use: "list VM", Short: "List a VM's snapshots", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			snaps, err := g.client().Snapshots(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), g.output, snaps, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tCREATED\tMEMORY")
				for _, s := range snaps {
					fmt.Fprintf(w, "%s\t%s\t%t\n", s.Name, s.Created.Local().Format(time.DateTime), s.Memory)
				}
			})
		}}
	addOutput(list, g)
	commit := &cobra.Command{Use: "commit VM NAME", Short: "Delete a snapshot by merging its changes into its base while the VM runs (the newest: keep the hot-mode changes)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			op, err := g.client().CommitSnapshot(cmd.Context(), a[0], a[1], 0)
			return run(cmd, op, err)
		}}
	discard := &cobra.Command{Use: "discard VM NAME", Short: "Drop the changes since the snapshot, and the snapshot", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			op, err := g.client().RevertSnapshot(cmd.Context(), a[0], a[1], true, 0)
			return run(cmd, op, err)
		}}
	revertCmd := &cobra.Command{Use: "revert VM NAME", Short: "Go back to the snapshot, keeping it", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			op, err := g.client().RevertSnapshot(cmd.Context(), a[0], a[1], false, 0)
			return run(cmd, op, err)
		}}
	for _, c := range []*cobra.Command{create, commit, discard, revertCmd} {
		c.Flags().BoolVar(&wait, "wait", true, "wait until the operation is done")
	}
	cmd.AddCommand(create, list, commit, discard, revertCmd)
	return cmd
}
