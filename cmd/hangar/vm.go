package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	v1 "hangar/api/v1"
)

func newVM(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Manage virtual machines",
		Long: `Create, inspect, start, stop and delete virtual machines, and everything done to one:
consoles, snapshots, clones, templates, suspend, media.`,
		Example: `  hangar vm create web1 --image guest.qcow2 --memory 256 --forward 8080:80 --start
  hangar vm ls
  hangar vm show web1
  hangar vm stop web1 && hangar vm rm web1`}
	cmd.AddCommand(newVMCreate(g), newVMList(g), newVMShow(g), newVMDelete(g), newVMConsole(g))
	for _, a := range []struct{ verb, short, long string }{
		{"start", "Start a VM", "Start a stopped, crashed or suspended VM (a suspended one continues where it was)."},
		{"reboot", "Reset a running VM", "Reset a running VM at once, like its reset button: the guest is not asked first."},
		{"pause", "Pause a running VM", "Pause a running VM's virtual CPUs; its memory stays in place (resume continues it)."},
		{"resume", "Resume a paused VM", "Resume a paused VM, or start a suspended one from its saved memory."},
	} {
		cmd.AddCommand(newVMAction(g, a.verb, a.short, a.long))
	}
	cmd.AddCommand(newVMStop(g), newVMSet(g), newVMHA(g))
	return cmd
}

func newVMSet(g *globals) *cobra.Command {
	var cpus, memory, cpuShares, memLimit, balloon int
	var cpuLimit float64
	var restart, ioError, cpuPinning string
	var hugepages bool
	var diskIOErrors, diskIOPS, diskBPS, netMbps, netRx, netTx []string
	cmd := &cobra.Command{
		Use:   "set NAME",
		Short: "Change a VM's CPUs, memory, restart policy or I/O error policy",
		Long: `Change a VM's settings; only the flags given change. CPUs and memory change only while
the VM is stopped (the server refuses them for a running VM, saying so); the restart
policy and the I/O error policies change at any time (the I/O error policies apply from
the VM's next start). The resource controls (--cpu-shares, --cpu-limit, --memory-limit;
0 restores a default; --balloon, the guest's memory target on a VM started with a balloon), the disks' limits (--disk-iops, --disk-bps) and the bridge NICs'
bandwidth (--net-mbps, --net-rx-mbps, --net-tx-mbps; tc on the NIC's tap) change at any
time: a running VM's host applies them live.`,
		Example: `  hangar vm set web1 --cpus 2 --memory 1024
  hangar vm set web1 --restart always
  hangar vm set db1 --io-error stop --disk-io-error scratch=report
  hangar vm set web1 --cpu-shares 512 --cpu-limit 0.5 --memory-limit 1024
  hangar vm set web1 --net-mbps 100 --net-tx-mbps 1=20`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := firstErr(atLeast(cmd, "cpus", int64(cpus), 1), atLeast(cmd, "memory", int64(memory), 1)); err != nil {
				return err
			}
			p := v1.VMPatch{CPUs: ifGiven(cmd, "cpus", &cpus), MemoryMiB: ifGiven(cmd, "memory", &memory),
				RestartPolicy: ifGiven(cmd, "restart", &restart), IOErrorPolicy: ifGiven(cmd, "io-error", &ioError)}
			if r := (v1.ResourcesPatch{CPUShares: ifGiven(cmd, "cpu-shares", &cpuShares), CPULimit: ifGiven(cmd, "cpu-limit", &cpuLimit),
				MemoryLimitMiB: ifGiven(cmd, "memory-limit", &memLimit), CPUPinning: ifGiven(cmd, "cpu-pinning", &cpuPinning),
				BalloonMiB: ifGiven(cmd, "balloon", &balloon), Hugepages: ifGiven(cmd, "hugepages", &hugepages)}); r != (v1.ResourcesPatch{}) {
				p.Resources = &r
			}
			var err error
			if p.Disks, err = parseDiskIOErrors(diskIOErrors); err != nil {
				return err
			}
			if p.Disks, err = parseDiskLimits(p.Disks, "disk-iops", diskIOPS, func(dp *v1.DiskPatch, n int64) { dp.IOPS = &n }); err != nil {
				return err
			}
			if p.Disks, err = parseDiskLimits(p.Disks, "disk-bps", diskBPS, func(dp *v1.DiskPatch, n int64) { dp.BPS = &n }); err != nil {
				return err
			}
			for _, f := range []struct {
				flag string
				vals []string
				set  func(*v1.NICPatch, float64)
			}{
				{"net-mbps", netMbps, func(np *v1.NICPatch, n float64) { np.Mbps = &n }},
				{"net-rx-mbps", netRx, func(np *v1.NICPatch, n float64) { np.RxMbps = &n }},
				{"net-tx-mbps", netTx, func(np *v1.NICPatch, n float64) { np.TxMbps = &n }},
			} {
				if p.NICs, err = parseNICLimits(p.NICs, f.flag, f.vals, f.set); err != nil {
					return err
				}
			}
			if p.CPUs == nil && p.MemoryMiB == nil && p.RestartPolicy == nil && p.IOErrorPolicy == nil && p.Disks == nil && p.Resources == nil && p.NICs == nil {
				return fmt.Errorf("nothing to change: give --cpus, --memory, --restart, --io-error, --disk-io-error, --cpu-shares, --cpu-limit, --memory-limit, --cpu-pinning, --balloon, --hugepages, --disk-iops, --disk-bps or --net-mbps")
			}
			v, err := g.client().PatchVM(cmd.Context(), args[0], p)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "vm %s: %d CPUs, %d MiB, restart policy %s, I/O errors %s\n", v.Spec.Name, v.Spec.CPUs, v.Spec.MemoryMiB, orDash(v.Spec.RestartPolicy), ioErrorSummary(v.Spec))
			if p.Resources != nil || v.Spec.Resources != nil || p.Disks != nil || p.NICs != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "resources: %s\n", resourcesSummary(v.Spec))
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&cpus, "cpus", 0, "virtual CPUs (only while stopped)")
	cmd.Flags().IntVar(&memory, "memory", 0, "memory in MiB (only while stopped)")
	cmd.Flags().StringVar(&restart, "restart", "", "restart policy: always, on-failure or never")
	_ = cmd.RegisterFlagCompletionFunc("restart", cobra.FixedCompletions([]string{"always", "on-failure", "never"}, cobra.ShellCompDirectiveNoFileComp))
	addIOErrorFlag(cmd, &ioError, "")
	cmd.Flags().StringArrayVar(&diskIOErrors, "disk-io-error", nil, "DISK=POLICY: a disk's own I/O error policy (DISK= takes the VM's; repeatable)")
	cmd.Flags().IntVar(&cpuShares, "cpu-shares", 0, "relative CPU weight under contention (2-262144, 0: default 1024; live)")
	cmd.Flags().Float64Var(&cpuLimit, "cpu-limit", 0, "cap in host CPUs, e.g. 0.5 (0: no cap; live)")
	cmd.Flags().StringVar(&cpuPinning, "cpu-pinning", "", `host CPUs of the vCPU threads: "2;3" (one list per vCPU) or "0-1" (for all); "" unpins; live`)
	cmd.Flags().IntVar(&balloon, "balloon", 0, "the guest's memory target in MiB: a virtio-balloon device from the next start, the target live (0: all its memory)")
	cmd.Flags().BoolVar(&hugepages, "hugepages", false, "back the guest's RAM with huge pages from the next start (KVM hosts with vm.nr_hugepages reserved)")
	cmd.Flags().IntVar(&memLimit, "memory-limit", 0, "hard memory limit of the VM's QEMU in MiB (0: guest memory + overhead; live)")
	cmd.Flags().StringArrayVar(&diskIOPS, "disk-iops", nil, "DISK=N: the disk's total I/O operations per second (0: none; live; repeatable)")
	cmd.Flags().StringArrayVar(&diskBPS, "disk-bps", nil, "DISK=N: the disk's total bytes per second (0: none; live; repeatable)")
	cmd.Flags().StringArrayVar(&netMbps, "net-mbps", nil, "[NIC=]N: a bridge NIC's bandwidth in Mbit/s both ways (NIC: its index, default 0; 0: none; live; repeatable)")
	cmd.Flags().StringArrayVar(&netRx, "net-rx-mbps", nil, "[NIC=]N: what the guest receives through the NIC, in Mbit/s (over --net-mbps; live)")
	cmd.Flags().StringArrayVar(&netTx, "net-tx-mbps", nil, "[NIC=]N: what the guest sends through the NIC, in Mbit/s (over --net-mbps; live)")
	return cmd
}

// parseDiskLimits adds --flag DISK=N flags to the disk patches out.
func parseDiskLimits(out map[string]v1.DiskPatch, flag string, flags []string, set func(*v1.DiskPatch, int64)) (map[string]v1.DiskPatch, error) {
	for _, f := range flags {
		name, v, ok := strings.Cut(f, "=")
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || name == "" || err != nil || n < 0 {
			return nil, fmt.Errorf("--%s %q: want DISK=N with N a whole number, at least 0", flag, f)
		}
		out = setPatch(out, name, n, set)
	}
	return out, nil
}

// setPatch sets a value in out[key] (made when missing) through set.
func setPatch[P, V any](out map[string]P, key string, v V, set func(*P, V)) map[string]P {
	if out == nil {
		out = map[string]P{}
	}
	p := out[key]
	set(&p, v)
	out[key] = p
	return out
}

// resourceMbps is a bandwidth limit, or "-" for none.
func resourceMbps(mbps float64) string {
	if mbps == 0 {
		return "-"
	}
	return strconv.FormatFloat(mbps, 'g', -1, 64) + " Mbit/s"
}

// parseNICLimits adds --flag [NIC=]N flags to the NIC patches out (NIC is
// an index, 0 when left out).
func parseNICLimits(out map[string]v1.NICPatch, flag string, flags []string, set func(*v1.NICPatch, float64)) (map[string]v1.NICPatch, error) {
	for _, f := range flags {
		nic, v, ok := strings.Cut(f, "=")
		if !ok {
			nic, v = "0", f
		}
		n, err := strconv.ParseFloat(v, 64)
		if _, ierr := strconv.Atoi(nic); ierr != nil || err != nil || n < 0 {
			return nil, fmt.Errorf("--%s %q: want [NIC=]N with NIC an index and N Mbit/s, at least 0", flag, f)
		}
		out = setPatch(out, nic, n, set)
	}
	return out, nil
}

// resourcesSummary is a VM's resource controls on one line: its cgroup's
// and each throttled disk's.
func resourcesSummary(s v1.VMSpec) string {
	var r v1.Resources
	if s.Resources != nil {
		r = *s.Resources
	}
	out := fmt.Sprintf("cpu shares %s, cpu limit %s, memory limit %s", resourceInt(r.CPUShares, ""), resourceCPUs(r.CPULimit), resourceInt(r.MemoryLimitMiB, " MiB"))
	if r.CPUPinning != "" {
		out += ", vcpus pinned to " + r.CPUPinning
	}
	if r.BalloonMiB > 0 {
		out += fmt.Sprintf(", balloon target %d MiB", r.BalloonMiB)
	}
	if r.Hugepages {
		out += ", huge pages"
	}
	for _, d := range s.Disks {
		if l := d.Limits; l != nil {
			out += fmt.Sprintf("; %s: iops %d (r %d, w %d), bps %d (r %d, w %d)", d.Name, l.IOPS, l.IOPSRead, l.IOPSWrite, l.BPS, l.BPSRead, l.BPSWrite)
			if l.Group != "" {
				out += " group " + l.Group
			}
		}
	}
	for i, n := range s.NICs {
		if l := n.Limits; l != nil {
			out += fmt.Sprintf("; nic %d: rx %s, tx %s", i, resourceMbps(l.Rx()), resourceMbps(l.Tx()))
		}
	}
	return out
}

// resourceInt shows a resource control, "default" when unset.
func resourceInt(n int, unit string) string {
	if n == 0 {
		return "default"
	}
	return fmt.Sprintf("%d%s", n, unit)
}

// resourceCPUs shows a CPU cap, "none" when unset.
func resourceCPUs(c float64) string {
	if c == 0 {
		return "none"
	}
	return fmt.Sprintf("%g CPUs", c)
}

// addIOErrorFlag adds --io-error, the VM's I/O error policy.
func addIOErrorFlag(cmd *cobra.Command, p *string, def string) {
	cmd.Flags().StringVar(p, "io-error", def, "on a storage error: stop (pause, resume when the storage answers), report (to the guest) or ignore")
	_ = cmd.RegisterFlagCompletionFunc("io-error", cobra.FixedCompletions([]string{v1.IOErrorStop, v1.IOErrorReport, v1.IOErrorIgnore}, cobra.ShellCompDirectiveNoFileComp))
}

// parseDiskIOErrors turns --disk-io-error DISK=POLICY flags into disk
// patches (nil for none); the server checks the names and policies.
func parseDiskIOErrors(flags []string) (map[string]v1.DiskPatch, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	out := map[string]v1.DiskPatch{}
	for _, f := range flags {
		name, policy, ok := strings.Cut(f, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("--disk-io-error %q: want DISK=POLICY (stop, report, ignore, or empty for the VM's)", f)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("--disk-io-error: disk %q given twice", name)
		}
		out[name] = v1.DiskPatch{IOErrorPolicy: &policy}
	}
	return out, nil
}

// ioErrorSummary is a VM's I/O error policies in a few words ("stop;
// data: report").
func ioErrorSummary(s v1.VMSpec) string {
	out := orDash(s.IOErrorPolicy)
	for _, d := range s.Disks {
		if d.IOErrorPolicy != "" {
			out += fmt.Sprintf("; %s: %s", d.Name, d.IOErrorPolicy)
		}
	}
	return out
}

func newVMAndStorage(g *globals) []*cobra.Command {
	vm := newVM(g)
	return append([]*cobra.Command{vm}, storageCommands(g, vm)...)
}

func newVMCreate(g *globals) *cobra.Command {
	var (
		file, image, bridge, restart string
		ioError                      string
		iso, cloudInit               string
		cpus, memory                 int
		diskMiB                      int64
		forwards, preferHosts        []string
		placement, antiAffinity      string
		tags                         []string
		start, wait                  bool
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a VM (from flags or a YAML spec with -f)",
		Long: `Create a VM from flags, or from a YAML spec (-f; flags given as well override it).
Without --image, --disk-size or -f it has no disk. Without --bridge it gets a user-mode
NIC; --forward publishes a guest port on 127.0.0.1. Unknown fields in the spec are
errors, reported with their line.

Placement: the pool places the VM on the freest eligible host (--placement auto).
--prefer-host H (repeatable) tries those hosts first (placement preferred); with
--placement manual only those hosts are candidates (one --prefer-host: exactly that
host, or an error). VMs of one --anti-affinity group never share a host.`,
		Example: `  hangar vm create web1 --image /var/cache/hangar/guest/hangar-guest.qcow2 --forward 8080:80 --start
  hangar vm create inst --disk-size 8192 --iso debian.iso --cloud-init user-data.yaml
  hangar vm create -f db1.yaml --start
  hangar vm create db2 --image db.qcow2 --anti-affinity db --prefer-host h2 --prefer-host h3
  hangar vm create build --image ci.qcow2 --placement manual --prefer-host h3`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := firstErr(atLeast(cmd, "cpus", int64(cpus), 1), atLeast(cmd, "memory", int64(memory), 1),
				atLeast(cmd, "disk-size", diskMiB, 1)); err != nil {
				return err
			}
			var spec v1.VMSpec
			if file != "" {
				b, err := os.ReadFile(file)
				if err != nil {
					return err
				}
				if err := decodeYAMLStrict(file, b, &spec); err != nil {
					return err
				}
			}
			if len(args) == 0 && spec.Name == "" {
				return fmt.Errorf("give the VM a name: hangar vm create NAME, or name: in the spec")
			}
			if len(args) == 1 {
				spec.Name = args[0]
			}
			if cmd.Flags().Changed("cpus") || spec.CPUs == 0 {
				spec.CPUs = cpus
			}
			if cmd.Flags().Changed("memory") || spec.MemoryMiB == 0 {
				spec.MemoryMiB = memory
			}
			if cmd.Flags().Changed("restart") {
				spec.RestartPolicy = restart
			}
			if cmd.Flags().Changed("io-error") {
				spec.IOErrorPolicy = ioError
			}
			if cmd.Flags().Changed("prefer-host") {
				spec.PreferredHosts = preferHosts
			}
			if cmd.Flags().Changed("placement") {
				spec.Placement = placement
			}
			if cmd.Flags().Changed("anti-affinity") {
				spec.AntiAffinityGroup = antiAffinity
			}
			if cmd.Flags().Changed("tag") {
				spec.Tags = tags
			}
			if image != "" || diskMiB > 0 {
				spec.Disks = append(spec.Disks, v1.Disk{Image: image, SizeMiB: diskMiB})
			}
			if iso != "" {
				spec.Disks = append(spec.Disks, v1.Disk{Name: "cd0", Media: "cdrom", Image: iso})
				if image == "" && diskMiB > 0 {
					spec.Boot = []string{"cdrom", "disk"}
				}
			}
			if cloudInit != "" {
				ud, err := os.ReadFile(cloudInit)
				if err != nil {
					return fmt.Errorf("--cloud-init: %w", err)
				}
				spec.CloudInit = &v1.CloudInit{UserData: string(ud)}
			}
			if bridge != "" {
				spec.NICs = append(spec.NICs, v1.NIC{Mode: v1.NICBridge, Bridge: bridge})
			}
			if len(forwards) > 0 || (file == "" && bridge == "") {
				nic := v1.NIC{Mode: v1.NICUser}
				for _, f := range forwards {
					fw, err := parseForward(f)
					if err != nil {
						return err
					}
					nic.Forwards = append(nic.Forwards, fw)
				}
				spec.NICs = append(spec.NICs, nic)
			}
			c := g.client()
			op, err := c.CreateVM(cmd.Context(), spec, start, 0)
			if _, err := follow(cmd, c, op, err, wait); err != nil {
				return err
			}
			if wait {
				fmt.Fprintf(cmd.OutOrStdout(), "vm %s created\n", spec.Name)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "VM spec in YAML (flags override it)")
	f.StringVar(&image, "image", "", "boot disk: a copy-on-write overlay of this image file")
	f.Int64Var(&diskMiB, "disk-size", 0, "size of the boot disk in MiB (a new empty disk without --image)")
	f.IntVar(&cpus, "cpus", 1, "virtual CPUs")
	f.IntVar(&memory, "memory", 512, "memory in MiB")
	f.StringArrayVar(&forwards, "forward", nil, "HOSTPORT:GUESTPORT[/udp] forwarded from 127.0.0.1 (user-mode NIC)")
	f.StringVar(&bridge, "bridge", "", "attach a NIC to this bridge (tap)")
	f.StringVar(&restart, "restart", "on-failure", "restart policy: always, on-failure or never")
	f.BoolVar(&start, "start", false, "start the VM once created")
	addIOErrorFlag(cmd, &ioError, v1.IOErrorStop)
	f.StringArrayVar(&preferHosts, "prefer-host", nil, "place on this host if it can take the VM (repeatable; the freest listed host wins)")
	f.StringVar(&placement, "placement", "", "auto, preferred or manual (only the --prefer-host hosts); default preferred with --prefer-host, else auto")
	f.StringVar(&antiAffinity, "anti-affinity", "", "anti-affinity GROUP: never on a host with another VM of the group")
	f.StringSliceVar(&tags, "tag", nil, "tag the VM (repeatable): grants scoped to tag:TAG cover it")
	hosts := complete(g, g.hostNames)
	_ = cmd.RegisterFlagCompletionFunc("prefer-host", func(cmd *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return hosts(cmd, nil, toComplete)
	})
	_ = cmd.RegisterFlagCompletionFunc("placement", cobra.FixedCompletions([]string{v1.PlacementAuto, v1.PlacementPreferred, v1.PlacementManual}, cobra.ShellCompDirectiveNoFileComp))
	f.StringVar(&iso, "iso", "", "attach this ISO on a cdrom (boots from it when the disk is new and empty)")
	f.StringVar(&cloudInit, "cloud-init", "", "user-data file served to cloud-init on a NoCloud seed cdrom")
	f.BoolVar(&wait, "wait", true, "wait until the operation is done")
	return cmd
}

func parseForward(s string) (v1.Forward, error) {
	proto := "tcp"
	if p, q, ok := strings.Cut(s, "/"); ok {
		s, proto = p, q
	}
	h, gp, ok := strings.Cut(s, ":")
	hp, err1 := strconv.Atoi(h)
	gpn, err2 := strconv.Atoi(gp)
	if !ok || err1 != nil || err2 != nil {
		return v1.Forward{}, fmt.Errorf("--forward %q: want HOSTPORT:GUESTPORT", s)
	}
	return v1.Forward{HostPort: hp, GuestPort: gpn, Protocol: proto}, nil
}

func newVMList(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Long:    "List VMs with their observed state, host, size and uptime (-o wide adds PID, accelerator, restarts and NICs).",
		Example: `  hangar vm ls
  hangar vm list -o wide
  hangar vm list --no-headers | cut -d' ' -f1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			vms, err := g.client().VMs(cmd.Context())
			if err != nil {
				return err
			}
			header := []string{"NAME", "STATE", "HOST", "CPUS", "MEMORY", "UPTIME"}
			if g.wide() {
				header = append(header, "PID", "ACCEL", "RESTARTS", "NICS")
			}
			var rows [][]string
			for _, v := range vms {
				r := []string{v.Spec.Name, v.Status.State, v.Spec.Host, strconv.Itoa(v.Spec.CPUs), fmt.Sprintf("%d MiB", v.Spec.MemoryMiB), uptime(v.Status)}
				if g.wide() {
					r = append(r, strconv.Itoa(v.Status.PID), orDash(v.Status.Accelerator), strconv.Itoa(v.Status.Restarts), nicSummary(v.Spec.NICs))
				}
				rows = append(rows, r)
			}
			return g.printList(cmd, vms, header, rows)
		},
	}
	addOutput(cmd, g, true)
	return cmd
}

func newVMShow(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "show NAME",
		Short:             "Show a VM",
		Long:              "Show a VM's spec and what its host observes: state, PID, uptime, accelerator, disks and NICs.",
		Example:           "  hangar vm show web1\n  hangar vm show web1 -o json",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			v, err := g.client().VM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(cmd, v, func(w *tabwriter.Writer) {
				defer printUsage(cmd.Context(), w, g, v)
				s, st := v.Spec, v.Status
				fmt.Fprintf(w, "Name:\t%s\nState:\t%s\nWanted:\t%s\nHost:\t%s\nPID:\t%d\nUptime:\t%s\nAccelerator:\t%s\n",
					s.Name, st.State, s.Power, s.Host, st.PID, uptime(st), st.Accelerator)
				if st.UID != 0 {
					fmt.Fprintf(w, "QEMU uid:\t%d\n", st.UID)
				}
				fmt.Fprintf(w, "CPUs:\t%d (%s)\nMemory:\t%d MiB\nMachine:\t%s\nRestart policy:\t%s\nRestarts:\t%d\n",
					s.CPUs, s.CPUModel, s.MemoryMiB, s.Machine, s.RestartPolicy, st.Restarts)
				fmt.Fprintf(w, "HA:\t%s\n", haSummary(s.HA))
				fmt.Fprintf(w, "I/O error policy:\t%s\n", ioErrorSummary(s))
				fmt.Fprintf(w, "Resources:\t%s\n", resourcesSummary(s))
				if st.Reason != "" {
					fmt.Fprintf(w, "Reason:\t%s\n", st.Reason)
				}
				for _, e := range st.IOErrors {
					fmt.Fprintf(w, "I/O errors %s:\t%s\n", e.Disk, ioErrorLine(e))
				}
				for _, d := range st.Disks {
					where := d.Path
					if d.Pool != "" {
						where = volumeRef(d.Pool, d.Volume)
					}
					fmt.Fprintf(w, "Disk %s:\t%s (%s)", d.Name, where, d.Format)
					if d.Backing != "" {
						fmt.Fprintf(w, " on %s", d.Backing)
					}
					fmt.Fprintln(w)
				}
				for i, n := range s.NICs {
					fmt.Fprintf(w, "NIC %d:\t%s %s", i, n.Mode, n.MAC)
					if n.Bridge != "" {
						fmt.Fprintf(w, " bridge %s", n.Bridge)
					}
					for _, f := range n.Forwards {
						fmt.Fprintf(w, " 127.0.0.1:%d->%d/%s", f.HostPort, f.GuestPort, f.Protocol)
					}
					fmt.Fprintln(w)
				}
			})
		},
	}
	addOutput(cmd, g, false)
	return cmd
}

// printUsage adds a running VM's usage, read from its host, to vm show
// (the table only: -o json prints the VM record unchanged).
func printUsage(ctx context.Context, w *tabwriter.Writer, g *globals, v v1.VM) {
	if st := v.Status.State; st != v1.StateRunning && st != v1.StatePaused {
		return
	}
	u, err := g.client().VMUsage(ctx, v.Spec.Name)
	if err != nil {
		fmt.Fprintf(w, "Usage:\tunavailable (%v)\n", err)
		return
	}
	limit := "none"
	if u.MemoryLimitBytes > 0 {
		limit = mib(u.MemoryLimitBytes)
	}
	fmt.Fprintf(w, "Usage:\tat %s (from the %s)\n", u.At.Local().Format(time.TimeOnly), orDash(u.Source))
	fmt.Fprintf(w, "  CPU:\t%.1f s, %.2f cores\n", u.CPUSeconds, u.CPUCores)
	fmt.Fprintf(w, "  Memory:\t%s (limit %s)\n", mib(u.MemoryBytes), limit)
	if u.BalloonBytes > 0 {
		fmt.Fprintf(w, "  Balloon:\t%s left to the guest\n", mib(u.BalloonBytes))
	}
	fmt.Fprintf(w, "  Disk read:\t%s in %d requests\n", mib(u.DiskReadBytes), u.DiskReadOps)
	fmt.Fprintf(w, "  Disk written:\t%s in %d requests\n", mib(u.DiskWriteBytes), u.DiskWriteOps)
	fmt.Fprintf(w, "  Network:\t%s received, %s sent\n", mib(u.NetRxBytes), mib(u.NetTxBytes))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func nicSummary(nics []v1.NIC) string {
	var parts []string
	for _, n := range nics {
		p := n.Mode
		if n.Bridge != "" {
			p += ":" + n.Bridge
		}
		for _, f := range n.Forwards {
			p += fmt.Sprintf(",%d->%d", f.HostPort, f.GuestPort)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func newVMAction(g *globals, verb, short, long string) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:               verb + " NAME",
		Short:             short,
		Long:              long,
		Example:           fmt.Sprintf("  hangar vm %s web1\n  hangar vm %s web1 --wait=false", verb, verb),
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := g.client()
			op, err := c.Action(cmd.Context(), args[0], verb, nil, 0)
			_, err = follow(cmd, c, op, err, wait)
			return err
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the operation is done")
	return cmd
}

func newVMStop(g *globals) *cobra.Command {
	var wait, force bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Stop a VM: ACPI power button, then quit QEMU after --timeout",
		Long: `Stop a VM: press its ACPI power button and wait for the guest to power off; after
--timeout (default: the server's --stop-timeout) QEMU is quit. --force quits at once.`,
		Example:           "  hangar vm stop web1\n  hangar vm stop web1 --timeout 10s\n  hangar vm stop web1 --force",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := notNegative(cmd, "timeout", timeout); err != nil {
				return err
			}
			c := g.client()
			op, err := c.Action(cmd.Context(), args[0], "stop", v1.StopArgs{Force: force, TimeoutSeconds: int(timeout.Seconds())}, 0)
			_, err = follow(cmd, c, op, err, wait)
			return err
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the operation is done")
	cmd.Flags().BoolVar(&force, "force", false, "quit QEMU at once, without asking the guest")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "how long to wait for the guest (default: the server's --stop-timeout)")
	return cmd
}

func newVMDelete(g *globals) *cobra.Command {
	var wait, force bool
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a VM and the disks Hangar created for it",
		Long: `Delete a VM and the disks Hangar created for it (volumes attached with volume: stay).
A running VM is refused unless --force, which kills it first.`,
		Example:           "  hangar vm rm web1\n  hangar vm delete web1 --force",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := g.client()
			op, err := c.DeleteVM(cmd.Context(), args[0], force, 0)
			_, err = follow(cmd, c, op, err, wait)
			return err
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the operation is done")
	cmd.Flags().BoolVar(&force, "force", false, "delete even when it runs (kills it)")
	return cmd
}

func newVMConsole(g *globals) *cobra.Command {
	var logOnly bool
	cmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to the serial console (Ctrl-] detaches); --log prints the console log",
		Long: `Attach the terminal to a VM's serial console, both ways; Ctrl-] detaches.
--log prints the serial output persisted since the VM was created, and exits.`,
		Example:           "  hangar vm console web1\n  hangar vm console web1 --log | tail",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := g.client()
			if logOnly {
				b, err := c.ConsoleLog(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			conn, err := c.Console(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer conn.Close()
			fd := int(os.Stdin.Fd())
			if term.IsTerminal(fd) {
				old, err := term.MakeRaw(fd)
				if err != nil {
					return err
				}
				defer term.Restore(fd, old)
			}
			fmt.Fprintf(os.Stderr, "connected to %s's serial console; Ctrl-] detaches\r\n", args[0])
			done := make(chan struct{}, 2)
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := conn.Read(buf)
					if n > 0 {
						_, _ = os.Stdout.Write(buf[:n])
					}
					if err != nil {
						done <- struct{}{}
						return
					}
				}
			}()
			go func() {
				buf := make([]byte, 1024)
				for {
					n, err := os.Stdin.Read(buf)
					for i := 0; i < n; i++ {
						if buf[i] == 0x1d { // Ctrl-]
							_, _ = conn.Write(buf[:i])
							done <- struct{}{}
							return
						}
					}
					if n > 0 {
						if _, werr := conn.Write(buf[:n]); werr != nil {
							done <- struct{}{}
							return
						}
					}
					if err != nil {
						done <- struct{}{}
						return
					}
				}
			}()
			select {
			case <-done:
			case <-cmd.Context().Done():
			}
			fmt.Fprint(os.Stderr, "\r\ndetached\r\n")
			return nil
		},
	}
	cmd.Flags().BoolVar(&logOnly, "log", false, "print the persisted serial log and exit")
	return cmd
}

// ioErrorLine is one disk's I/O error record in a line: "3 errors, last
// write 2026-…: No space left on device (no space), stopped; 1 pause,
// resumed 2026-…".
func ioErrorLine(e v1.DiskIOError) string {
	s := fmt.Sprintf("%d errors, last %s %s: %s", e.Count, e.Operation, e.Last.Local().Format(time.DateTime), orDash(e.Message))
	if e.NoSpace {
		s += " (no space)"
	}
	s += ", " + map[string]string{v1.IOErrorStop: "paused", v1.IOErrorReport: "reported to the guest", v1.IOErrorIgnore: "ignored"}[e.Action]
	if e.Pauses > 0 {
		s += fmt.Sprintf("; %d pauses", e.Pauses)
	}
	if e.Resumed != nil {
		s += ", resumed " + e.Resumed.Local().Format(time.DateTime)
	}
	return s
}
