package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

// opCmd is a verb that starts an operation and (with --wait, the default)
// follows it. Each command gets its own --wait variable.
func opCmd(g *globals, c *cobra.Command, start func(cmd *cobra.Command, a []string) (v1.Operation, error)) *cobra.Command {
	var wait bool
	c.Flags().BoolVar(&wait, "wait", true, "wait until the operation is done")
	c.RunE = func(cmd *cobra.Command, a []string) error {
		op, err := start(cmd, a)
		_, err = follow(cmd, g.client(), op, err, wait)
		return err
	}
	return c
}

// storageCommands adds templates, clones, snapshots, suspend, media and import.
func storageCommands(g *globals, vmCmd *cobra.Command) []*cobra.Command {
	vmCmd.AddCommand(
		opCmd(g, &cobra.Command{Use: "template VM TEMPLATE", Short: "Turn a stopped VM into a read-only template",
			Long:    "Turn a stopped VM into a read-only template that VMs are deployed from (vm deploy); the VM is gone after.",
			Example: "  hangar vm stop web1 && hangar vm template web1 base", Args: cobra.ExactArgs(2),
			ValidArgsFunction: complete(g, g.vmNames)},
			func(cmd *cobra.Command, a []string) (v1.Operation, error) {
				return g.client().MakeTemplate(cmd.Context(), a[0], a[1], 0)
			}),
		opCmd(g, &cobra.Command{Use: "clone VM NEWNAME", Short: "Copy a VM — also while it runs (all disks at one instant) — into a new stopped VM",
			Long:    "Copy a VM into a new stopped VM with full copies of its disks; a running VM is copied live, all disks at one instant.",
			Example: "  hangar vm clone web1 web1-test && hangar vm start web1-test", Args: cobra.ExactArgs(2),
			ValidArgsFunction: complete(g, g.vmNames)},
			func(cmd *cobra.Command, a []string) (v1.Operation, error) {
				return g.client().Clone(cmd.Context(), a[0], v1.CloneArgs{Name: a[1]}, 0)
			}),
		opCmd(g, &cobra.Command{Use: "suspend VM", Short: "Save a running VM's memory to a file and stop it (resume continues it)",
			Long:    "Save a running VM's memory and device state to a file in its pool and stop QEMU; vm resume (or start) continues it, also after hangar restarts.",
			Example: "  hangar vm suspend web1 && hangar vm resume web1", Args: cobra.ExactArgs(1),
			ValidArgsFunction: complete(g, g.vmNames)},
			func(cmd *cobra.Command, a []string) (v1.Operation, error) {
				return g.client().Suspend(cmd.Context(), a[0], 0)
			}),
		opCmd(g, &cobra.Command{Use: "media VM CDROM [ISO]", Short: "Insert an ISO into a cdrom, or eject it (no ISO)",
			Long:    "Insert an ISO file into a VM's cdrom drive, or eject the medium when no ISO is given; works while the VM runs.",
			Example: "  hangar vm media inst cd0 /isos/tools.iso\n  hangar vm media inst cd0", Args: cobra.RangeArgs(2, 3),
			ValidArgsFunction: complete(g, g.vmNames)},
			func(cmd *cobra.Command, a []string) (v1.Operation, error) {
				iso := ""
				if len(a) == 3 {
					iso = a[2]
				}
				return g.client().ChangeMedia(cmd.Context(), a[0], a[1], iso, 0)
			}),
		newSnapshot(g),
		newDeploy(g),
		newMigrate(g),
	)

	tmpl := &cobra.Command{Use: "template", Short: "Manage templates",
		Long:    "List and delete templates (read-only VM images made by vm template, deployed by vm deploy).",
		Example: "  hangar template ls\n  hangar template delete base"}
	tlist := &cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "List templates", Args: cobra.NoArgs,
		Long: "List templates with their host, size and disks (-o wide adds the pool).", Example: "  hangar template list -o wide",
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			ts, err := g.client().Templates(cmd.Context())
			if err != nil {
				return err
			}
			header := []string{"NAME", "HOST", "CPUS", "MEMORY", "DISKS", "FROM"}
			if g.wide() {
				header = append(header, "POOL")
			}
			var rows [][]string
			for _, t := range ts {
				r := []string{t.Name, t.Host, strconv.Itoa(t.CPUs), fmt.Sprintf("%d MiB", t.MemoryMiB), strconv.Itoa(len(t.Disks)), orDash(t.Source)}
				if g.wide() {
					r = append(r, t.Pool)
				}
				rows = append(rows, r)
			}
			return g.printList(cmd, ts, header, rows)
		}}
	addOutput(tlist, g, true)
	tmpl.AddCommand(tlist, &cobra.Command{Use: "delete NAME", Aliases: []string{"rm"}, Short: "Delete a template no linked clone uses", Args: cobra.ExactArgs(1),
		Long: "Delete a template and its disks; refused while a linked clone uses it.", Example: "  hangar template delete base",
		ValidArgsFunction: complete(g, g.templateNames),
		RunE:              func(cmd *cobra.Command, a []string) error { return g.client().DeleteTemplate(cmd.Context(), a[0]) }})
	return []*cobra.Command{tmpl, newImport(g), newPool(g), newVolume(g)}
}

func newDeploy(g *globals) *cobra.Command {
	var linked, start bool
	var forwards []string
	deploy := opCmd(g, &cobra.Command{Use: "deploy TEMPLATE NAME", Short: "Deploy a VM from a template (--linked: a copy-on-write clone)",
		Long: `Deploy a new VM from a template: a full copy of its disks, or with --linked a qcow2
overlay on the template's disks (fast, small; the template stays while clones use it).
The VM starts at once unless --start=false.`,
		Example: "  hangar vm deploy base web2 --linked --forward 8081:80\n  hangar vm deploy base web3 --start=false",
		Args:    cobra.ExactArgs(2), ValidArgsFunction: complete(g, g.templateNames)},
		func(cmd *cobra.Command, a []string) (v1.Operation, error) {
			args := v1.DeployArgs{Name: a[1], Linked: linked, Start: start}
			for _, f := range forwards {
				fw, err := parseForward(f)
				if err != nil {
					return v1.Operation{}, err
				}
				args.Forwards = append(args.Forwards, fw)
			}
			return g.client().Deploy(cmd.Context(), a[0], args, 0)
		})
	deploy.Flags().BoolVar(&linked, "linked", false, "linked clone (qcow2 overlay on the template's base)")
	deploy.Flags().BoolVar(&start, "start", true, "start the VM once deployed")
	deploy.Flags().StringArrayVar(&forwards, "forward", nil, "HOSTPORT:GUESTPORT for the user-mode NIC")
	return deploy
}

func newImport(g *globals) *cobra.Command {
	var name string
	var cpus, memory int
	var start bool
	var forwards, networks []string
	var option, vmName, onHost string
	imp := opCmd(g, &cobra.Command{Use: "import FILE", Short: "Create a VM from an OVA/OVF, VMDK, VHD, VHDX, qcow2 or raw image, or a block device (P2V)",
		Long: `Create a VM from a foreign disk or appliance: an OVA, an OVF or a directory holding one
(OVF 1.x, 2.x or VMware's 0.9; CPUs, memory, disks and NICs from its descriptor; delta disks
are flattened; gzip-compressed and chunked files are read; UEFI guests are refused), a VMDK,
VHD, VHDX, qcow2 or raw image, or a block device such as /dev/sdb (P2V). The disks are converted into new qcow2 volumes; the source is not changed.
An appliance's NICs keep their order and MACs; --network maps each OVF network to a host
bridge (or "user"), and NICs of unmapped networks become user-mode NICs, with a warning.
--deployment-option picks an OVF DeploymentOptionSection configuration (default: the
appliance's default); an unknown one is refused with the list the appliance offers.
A multi-VM vApp becomes one VM per VirtualSystem, named VAPP-VM (--name replaces VAPP),
created together or not at all; the answer is the first in the vApp's start order, which
every VM's operation records (not enforced at start). --vm imports only one of them.
FILE is a path on the host asked (--host: another host of the pool; a URL is refused: copy
the file into an import directory first), and the VM is created there.`,
		Example: "  hangar import appliance.ova --start\n  hangar import appliance.ova --network \"VM Network=br0\" --deployment-option small\n  hangar import disk.vmdk --name legacy --memory 1024 --forward 2222:22",
		Args:    cobra.ExactArgs(1)},
		func(cmd *cobra.Command, a []string) (v1.Operation, error) {
			if err := firstErr(atLeast(cmd, "cpus", int64(cpus), 1), atLeast(cmd, "memory", int64(memory), 1)); err != nil {
				return v1.Operation{}, err
			}
			args := v1.ImportArgs{Path: a[0], Name: name, CPUs: cpus, MemoryMiB: memory, Start: start, DeploymentOption: option, VM: vmName}
			nets, err := parseNetworks(networks)
			if err != nil {
				return v1.Operation{}, err
			}
			args.Networks = nets
			for _, f := range forwards {
				fw, err := parseForward(f)
				if err != nil {
					return v1.Operation{}, err
				}
				args.Forwards = append(args.Forwards, fw)
			}
			op, err := g.client().ImportOn(cmd.Context(), args, onHost, 0)
			for _, w := range op.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			return op, err
		})
	imp.Flags().StringVar(&name, "name", "", "VM name (default: from the appliance or file name)")
	imp.Flags().IntVar(&cpus, "cpus", 0, "virtual CPUs (default: from the OVF, else 1)")
	imp.Flags().IntVar(&memory, "memory", 0, "memory in MiB (default: from the OVF, else 512)")
	imp.Flags().BoolVar(&start, "start", false, "start the VM once imported")
	imp.Flags().StringArrayVar(&forwards, "forward", nil, "HOSTPORT:GUESTPORT for the (first) user-mode NIC")
	imp.Flags().StringArrayVar(&networks, "network", nil, `OVFNETWORK=BRIDGE: put the NICs of an OVF network on a host bridge ("user": user-mode NICs)`)
	imp.Flags().StringVar(&option, "deployment-option", "", "OVF deployment option (configuration id) to import (default: the appliance's default)")
	imp.Flags().StringVar(&vmName, "vm", "", "import only this VirtualSystem (ovf:id or Name) of a multi-VM vApp (default: all of them)")
	imp.Flags().StringVar(&onHost, "host", "", "the host that has FILE (default: the server's host): the server forwards the import there and the VM is created on it")
	return imp
}

// parseNetworks reads repeated --network OVFNETWORK=BRIDGE flags; the OVF
// network name may hold spaces and "=" (the last "=" splits).
func parseNetworks(flags []string) (map[string]string, error) {
	var m map[string]string
	for _, n := range flags {
		i := strings.LastIndex(n, "=")
		if i <= 0 || i == len(n)-1 {
			return nil, fmt.Errorf("--network %q: want OVFNETWORK=BRIDGE (or OVFNETWORK=user)", n)
		}
		if _, dup := m[n[:i]]; dup {
			return nil, fmt.Errorf("--network %q: network %q is mapped twice", n, n[:i])
		}
		if m == nil {
			m = map[string]string{}
		}
		m[n[:i]] = n[i+1:]
	}
	return m, nil
}

func newSnapshot(g *globals) *cobra.Command {
	var memory bool
	cmd := &cobra.Command{Use: "snapshot", Short: "Live snapshots (hot mode): create, list, commit, discard, revert",
		Long: `Live snapshots in hot mode: create starts logging every change of all disks (and with
--memory saves RAM too); commit keeps the changes, discard drops them, revert goes back
and keeps the snapshot.`,
		Example: "  hangar vm snapshot create web1 before-upgrade --memory\n  hangar vm snapshot ls web1\n  hangar vm snapshot commit web1 before-upgrade"}
	create := opCmd(g, &cobra.Command{Use: "create VM NAME", Short: "Snapshot all disks at one instant (--memory: and RAM)", Args: cobra.ExactArgs(2),
		Long:              "Snapshot all disks of a VM at one instant, while it runs; --memory also saves its RAM and device state, so that discard and revert continue the guest where it was.",
		Example:           "  hangar vm snapshot create web1 before-upgrade\n  hangar vm snapshot create web1 live --memory",
		ValidArgsFunction: complete(g, g.vmNames)},
		func(cmd *cobra.Command, a []string) (v1.Operation, error) {
			return g.client().Snapshot(cmd.Context(), a[0], v1.SnapshotArgs{Name: a[1], Memory: memory}, 0)
		})
	create.Flags().BoolVar(&memory, "memory", false, "also save RAM and device state")
	list := &cobra.Command{Use: "list VM", Aliases: []string{"ls"}, Short: "List a VM's snapshots", Args: cobra.ExactArgs(1),
		Long: "List a VM's snapshots, oldest first, and whether each holds memory.", Example: "  hangar vm snapshot list web1 -o json",
		ValidArgsFunction: complete(g, g.vmNames),
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			snaps, err := g.client().Snapshots(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			var rows [][]string
			for _, s := range snaps {
				rows = append(rows, []string{s.Name, s.Created.Local().Format(time.DateTime), strconv.FormatBool(s.Memory)})
			}
			return g.printList(cmd, snaps, []string{"NAME", "CREATED", "MEMORY"}, rows)
		}}
	addOutput(list, g, false)
	commit := opCmd(g, &cobra.Command{Use: "commit VM NAME", Short: "Delete a snapshot by merging its changes into its base while the VM runs (the newest: keep the hot-mode changes)", Args: cobra.ExactArgs(2),
		Long:              "Delete a snapshot by merging the changes logged since it into its base, while the VM runs: the guest keeps every change.",
		Example:           "  hangar vm snapshot commit web1 before-upgrade",
		ValidArgsFunction: complete(g, g.vmNames, g.snapshotNames)},
		func(cmd *cobra.Command, a []string) (v1.Operation, error) {
			return g.client().CommitSnapshot(cmd.Context(), a[0], a[1], 0)
		})
	cmd.AddCommand(create, list, commit,
		newRevert(g, "discard", "Drop the changes since the snapshot, and the snapshot", true),
		newRevert(g, "revert", "Go back to the snapshot, keeping it", false))
	return cmd
}

// newRevert is snapshot discard and revert. Both go back to the snapshot's
// disks; a snapshot without memory cannot continue a running guest, so the
// guest restarts from those disks: the verb says so and asks for --yes.
func newRevert(g *globals, verb, short string, discard bool) *cobra.Command {
	var yes bool
	keep := "and keeps the snapshot"
	if discard {
		keep = "and deletes the snapshot"
	}
	cmd := opCmd(g, &cobra.Command{Use: verb + " VM NAME", Short: short, Args: cobra.ExactArgs(2),
		Long: fmt.Sprintf(`Go back to the snapshot: the changes made since it are dropped, %s.

A snapshot taken with --memory continues the guest where it was at the snapshot.
A snapshot without memory cannot: a running (or paused) guest is RESTARTED from the
snapshot's disks, losing what runs in it. The command says so and refuses unless
--yes (or --force) is given.`, keep),
		Example:           fmt.Sprintf("  hangar vm snapshot %s web1 before-upgrade\n  hangar vm snapshot %s web1 disk-only --yes   # restarts the running guest", verb, verb),
		ValidArgsFunction: complete(g, g.vmNames, g.snapshotNames)},
		func(cmd *cobra.Command, a []string) (v1.Operation, error) {
			c := g.client()
			ctx := cmd.Context()
			vm, err := c.VM(ctx, a[0])
			if err != nil {
				return v1.Operation{}, err
			}
			snaps, err := c.Snapshots(ctx, a[0])
			if err != nil {
				return v1.Operation{}, err
			}
			var snap *v1.Snapshot
			for i := range snaps {
				if snaps[i].Name == a[1] {
					snap = &snaps[i]
				}
			}
			if snap == nil {
				return v1.Operation{}, fmt.Errorf("vm %q has no snapshot %q", a[0], a[1])
			}
			running := vm.Status.State == v1.StateRunning || vm.Status.State == v1.StatePaused
			if running && !snap.Memory {
				if !yes {
					return v1.Operation{}, fmt.Errorf("snapshot %q of vm %q has no memory: %s would restart the %s guest from the snapshot's disks; give --yes to do it",
						a[1], a[0], verb, vm.Status.State)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "snapshot %q has no memory: vm %s is restarted from the snapshot's disks\n", a[1], a[0])
			}
			return c.RevertSnapshot(ctx, a[0], a[1], discard, 0)
		})
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "go ahead when a running guest would be restarted")
	cmd.Flags().BoolVar(&yes, "force", false, "same as --yes")
	return cmd
}
