package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
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
					fmt.Fprintf(w, "Host:\t%s (%s, alive: %t)\nRole:\t%s\nAddress:\t%s\nCPU:\t%d x %s (%s)\nvCPUs:\t%s booked/admitted (overcommit %.1f)\nMemory:\t%d MiB (%d MiB allocated, %d MiB free)\nStorage:\t%s\nQEMU:\t%s\nAccelerator:\t%s\nKernel:\t%s\nVMs:\t%d (%s)\n\n",
						h.Name, h.State, h.Alive, dash(h.Role), dash(h.Address), h.CPUs, h.CPUModel, h.Arch, vcpus(h.AllocatedCPUs, h.CPUs, h.CPUOvercommit), h.CPUOvercommit,
						h.MemoryMiB, h.AllocatedMemoryMiB, h.FreeMemoryMiB, storageLine(h.Storage), h.QEMUVersion, h.Accelerator, h.Kernel, h.VMs, vmStates(h.VMStates))
				}
			})
		},
	}
	addOutput(info, g, false)
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List the pool's hosts and its capacity", Args: cobra.NoArgs,
		Long: `List the pool's hosts, one a line, with the pool's capacity below them: state (alive, down,
maintenance), role, CPUs, vCPUs booked/admitted (CPUs × the CPU overcommit ratio), memory booked and
free (under the memory overcommit ratio), and VMs (total and running). -o wide adds the VM counts by
state, storage per pool, accelerator, CPU model, QEMU, address and kernel. The pool's lines (after a
blank line; not with --no-headers) sum the hosts: free figures count only hosts that take new VMs,
a shared storage pool is counted once, a dir pool summed over its hosts; and name the pool's CPU
model, the default of a VM that names none.
-o json|yaml prints the whole overview (GET /api/v1/capacity): {"pool": {...}, "hosts": [...]}.`,
		Example: "  hangar host ls\n  hangar host ls -o wide\n  hangar host ls -o json | jq .pool.freeMemoryMiB",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			capa, err := g.client().Capacity(cmd.Context())
			if err != nil {
				return err
			}
			header := []string{"NAME", "STATE", "ROLE", "CPUS", "VCPUS", "MEMORY", "ALLOCATED", "FREE", "VMS"}
			if g.wide() {
				header = append(header, "VM STATES", "STORAGE", "ACCEL", "CPU MODEL", "QEMU", "ADDRESS", "KERNEL")
			}
			var rows [][]string
			for _, h := range capa.Hosts {
				r := []string{h.Name, h.State, dash(h.Role), strconv.Itoa(h.CPUs), vcpus(h.AllocatedCPUs, h.CPUs, h.CPUOvercommit),
					fmt.Sprintf("%d MiB", h.MemoryMiB), fmt.Sprintf("%d MiB", h.AllocatedMemoryMiB), fmt.Sprintf("%d MiB", h.FreeMemoryMiB),
					fmt.Sprintf("%d (%d running)", h.VMs, h.VMStates[v1.StateRunning])}
				if g.wide() {
					r = append(r, vmStates(h.VMStates), storageLine(h.Storage), h.Accelerator, h.CPUModel, h.QEMUVersion, dash(h.Address), h.Kernel)
				}
				rows = append(rows, r)
			}
			return g.print(cmd, capa, func(w *tabwriter.Writer) {
				if !g.noHeaders {
					fmt.Fprintln(w, strings.Join(header, "\t"))
				}
				for _, r := range rows {
					fmt.Fprintln(w, strings.Join(r, "\t"))
				}
				if g.noHeaders {
					return
				}
				_ = w.Flush()
				p := capa.Pool
				fmt.Fprintf(w, "\nPool:\t%d hosts (%d alive, %d down, %d in maintenance)\n", p.Hosts, p.HostsAlive, p.HostsDown, p.HostsMaintenance)
				fmt.Fprintf(w, "CPU model:\t%s\n", p.CPUModel)
				fmt.Fprintf(w, "vCPUs:\t%d booked, %d free (%d CPUs, overcommit %.1f)\n", p.AllocatedCPUs, p.FreeCPUs, p.CPUs, p.CPUOvercommit)
				fmt.Fprintf(w, "Memory:\t%d MiB booked, %d MiB free (%d MiB, overcommit %.1f)\n", p.AllocatedMemoryMiB, p.FreeMemoryMiB, p.MemoryMiB, p.MemoryOvercommit)
				fmt.Fprintf(w, "Storage:\t%s\n", storageLine(p.Storage))
				fmt.Fprintf(w, "VMs:\t%s\n", vmStates(p.VMStates))
			})
		},
	}
	addOutput(list, g, true)
	cmd.AddCommand(info, list, newHostRemove(g), newHostEvacuate(g), newHostMaintenance(g))
	return cmd
}

// vcpus is "booked/admitted": vCPUs booked on a host and how many its CPUs
// take under the overcommit ratio.
func vcpus(booked, cpus int, ratio float64) string {
	return fmt.Sprintf("%d/%d", booked, int(float64(cpus)*ratio))
}

// vmStates is "2 running, 1 stopped" ("-" for none), states by name.
func vmStates(m map[string]int) string {
	var parts []string
	for st, n := range m {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, st))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	sort.Slice(parts, func(i, j int) bool { return strings.SplitN(parts[i], " ", 2)[1] < strings.SplitN(parts[j], " ", 2)[1] })
	return strings.Join(parts, ", ")
}

// storageLine is "default 1.2/9.8 GiB free, …": each pool's free and
// total space.
func storageLine(us []v1.StorageUsage) string {
	if len(us) == 0 {
		return "-"
	}
	parts := make([]string, len(us))
	for i, u := range us {
		parts[i] = fmt.Sprintf("%s %.1f/%.1f GiB free", u.Pool, float64(u.FreeBytes)/(1<<30), float64(u.TotalBytes)/(1<<30))
	}
	return strings.Join(parts, ", ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
	for _, wn := range op.Warnings {
		fmt.Fprintf(w, "Warning:\t%s\n", wn)
	}
	if op.Kind == "failover" {
		failoverDetail(w, op)
	}
}

// failoverDetail prints a failover's restart plan (ha.Plan's JSON shape,
// read loosely: this is display only).
func failoverDetail(w *tabwriter.Writer, op v1.Operation) {
	var plan struct {
		Restarts []struct {
			VM, Host, State, Error string
			Priority, Attempt      int
		}
		Parked, Skipped, Lost []struct{ VM, Reason string }
		Stopped               []string
	}
	if json.Unmarshal(op.Args, &plan) != nil {
		return
	}
	for _, r := range plan.Restarts {
		line := fmt.Sprintf("%s → %s (priority %d, attempt %d): %s", r.VM, r.Host, r.Priority, r.Attempt, r.State)
		if r.Error != "" {
			line += ": " + r.Error
		}
		fmt.Fprintf(w, "Restart:\t%s\n", line)
	}
	for _, l := range []struct {
		what string
		held []struct{ VM, Reason string }
	}{{"Parked", plan.Parked}, {"Skipped", plan.Skipped}, {"Lost", plan.Lost}} {
		for _, h := range l.held {
			fmt.Fprintf(w, "%s:\t%s: %s\n", l.what, h.VM, h.Reason)
		}
	}
	if len(plan.Stopped) > 0 {
		fmt.Fprintf(w, "Stopped:\t%s\n", strings.Join(plan.Stopped, ", "))
	}
}
