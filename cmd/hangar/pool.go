package main

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
	"hangar/client"
)

// poolMembership are the subcommands of `hangar pool` about the pool of
// hosts (the others are about storage pools).
func poolMembership(g *globals) []*cobra.Command {

	var ttl time.Duration
	token := &cobra.Command{
		Use:   "join-token",
		Short: "Make a single-use token for a host to join the pool",
		Long: `Make a join token: a new host joins with
  hangar serve --host-name NAME --listen IP:PORT --join THIS-HOST:PORT --token TOKEN
The token carries the pool CA's fingerprint (the joiner checks the pool it reaches) and
a random secret; the pool keeps only a digest of it. It works once, until --ttl passes.
The token is the last line printed.`,
		Example: "  hangar pool join-token\n  tok=$(hangar pool join-token --ttl 30m | tail -n1)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ttl < time.Second || ttl > 24*time.Hour {
				return fmt.Errorf("--ttl %s: must be between 1s and 24h", ttl)
			}
			t, err := g.client().JoinToken(cmd.Context(), ttl)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "join token %s, single-use, valid until %s (%s)\n", t.ID, t.Expires.Local().Format(time.DateTime), ttl)
			// Joins are answered by manager hosts (they hold the CA key).
			via := "MANAGER:8443"
			if hosts, err := g.client().Hosts(cmd.Context()); err == nil {
				var managers []string
				for _, h := range hosts {
					if h.Role == v1.RoleMember && h.Address != "" {
						managers = append(managers, h.Address)
					}
				}
				if len(managers) > 0 {
					slices.Sort(managers)
					via = managers[0]
					fmt.Fprintf(w, "manager hosts that admit joins: %s\n", strings.Join(managers, ", "))
				}
			}
			fmt.Fprintf(w, "join a host with: hangar serve --host-name NAME --listen IP:8443 --join %s --token TOKEN\n", via)
			fmt.Fprintln(w, t.Token)
			return nil
		},
	}
	token.Flags().DurationVar(&ttl, "ttl", 10*time.Minute, "how long the token stays valid (1s to 24h)")

	var name, out string
	creds := &cobra.Command{
		Use:   "credentials",
		Short: "Issue a client certificate for a remote CLI",
		Long: `Issue a client certificate of the pool CA for a remote CLI (asked of a manager host, one
that holds the CA key) and write ca.crt, client.crt and client.key (0600) into --out.
Use it with: hangar --server https://HOST:8443 --credentials DIR …  (or HANGAR_SERVER and
HANGAR_CREDENTIALS). The name is what the API logs as the client.`,
		Example: "  hangar pool credentials --name alice --out ~/.config/hangar/alice\n  hangar --server https://h1:8443 --credentials ~/.config/hangar/alice host list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" || out == "" {
				return fmt.Errorf("--name and --out are required")
			}
			c, err := g.client().Credentials(cmd.Context(), name)
			if err != nil {
				return err
			}
			if err := client.WriteCredentials(out, c); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s/{%s,%s,%s} for %q\n", out, client.CredentialsCA, client.CredentialsCert, client.CredentialsKey, name)
			return nil
		},
	}
	creds.Flags().StringVar(&name, "name", "", "the client's name (a DNS label), the certificate's common name")
	creds.Flags().StringVar(&out, "out", "", "directory to write ca.crt, client.crt and client.key into (created 0700)")

	show := &cobra.Command{
		Use:     "show",
		Short:   "Show the pool: name, CA fingerprint, master, etcd members",
		Long:    "Show the pool's name, the SHA-256 fingerprint of its CA and its etcd members with their roles and URLs.",
		Example: "  hangar pool show\n  hangar pool show -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			p, err := g.client().PoolInfo(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(cmd, p, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Pool:\t%s\nCA fingerprint:\tsha256:%s\nMaster:\t%s\n", p.Name, p.CAFingerprint, dash(p.Master))
				if len(p.External) > 0 {
					fmt.Fprintf(w, "etcd:\texternal %s\n", strings.Join(p.External, ","))
				}
				if len(p.Members) > 0 {
					fmt.Fprintf(w, "\nMEMBER\tROLE\tPEER URLS\tCLIENT URLS\n")
					for _, m := range p.Members {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", m.Name, m.Role, strings.Join(m.PeerURLs, ","), strings.Join(m.ClientURLs, ","))
					}
				}
			})
		},
	}
	addOutput(show, g, false)
	return []*cobra.Command{token, creds, show}
}

func newHostRemove(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove HOST",
		Short: "Take a host out of the pool (evacuating it first)",
		Long: `Take a host out of the pool: while it is alive and not evacuated, it is evacuated first
exactly as by 'hangar host evacuate' (maintenance, its running VMs live-migrated to other
hosts, or shut down and parked when none can take them), with the same progress; a failed
evacuation leaves it in maintenance and removes nothing. Then its etcd membership (if it
is a member) and its records go. That last step is refused while the host is alive (stop
hangar serve there, then run remove again), while VMs are still placed on it (stopped and
parked VMs stay with their host), for the host that answers the request (ask another), and
for the pool's only etcd member. To bring the machine back, start it with a fresh data dir
and a new join token.`,
		Example:           "  hangar host remove h3\n  hangar --server https://h2:8443 --credentials ./alice host remove h1",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete(g, g.hostNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			host := args[0]
			// An evacuation that succeeded leaves nothing running there; a
			// second one is asked for only if a VM started meanwhile.
			for round := 1; ; round++ {
				op, err := g.client().RemoveHost(cmd.Context(), host)
				if err != nil {
					if round > 1 {
						return fmt.Errorf("host %s is evacuated and in maintenance, but not removed: %w", host, err)
					}
					return err
				}
				if op == nil {
					break
				}
				if round > 3 {
					return fmt.Errorf("host %s: VMs keep running there after %d evacuations; not removed", host, round-1)
				}
				done, err := follow(cmd, g.client(), *op, nil, true)
				if err != nil {
					return fmt.Errorf("evacuate %s before removing it: %w (the host stays in maintenance; nothing was removed)", host, err)
				}
				for _, w := range done.Warnings {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "host %s removed from the pool\n", host)
			return nil
		},
	}
}
