package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"hangar/internal/buildinfo"
)

// clientVersion is this binary's build (the Makefile sets the version with
// -ldflags "-X hangar/internal/buildinfo.Version=…").
func clientVersion() buildinfo.Info { return buildinfo.Get() }

type versionReport struct {
	Client buildinfo.Info `json:"client"`
	Server serverVersion  `json:"server"`
}

type serverVersion struct {
	Address string `json:"address"`
	Error   string `json:"error,omitempty"`
	// The server's own build (GET /api/v1/version).
	Version   string     `json:"version,omitempty"`
	Commit    string     `json:"commit,omitempty"`
	Modified  bool       `json:"modified,omitempty"`
	GoVersion string     `json:"goVersion,omitempty"`
	Hosts     []hostQEMU `json:"hosts,omitempty"`
}

type hostQEMU struct {
	Host        string `json:"host"`
	QEMU        string `json:"qemu"`
	Accelerator string `json:"accelerator"`
}

func newVersion(g *globals) *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show the client's version and the server's (address, build, QEMU)",
		Long: `Show this binary's version and git commit, the server it talks to (--socket or
$HANGAR_SOCKET), that server's version and git commit, and the QEMU version and
accelerator of each of the server's hosts. An unreachable server is reported, not
an error (--client skips asking).`,
		Example: "  hangar version\n  hangar version -o json\n  hangar --version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			r := versionReport{Client: clientVersion(), Server: serverVersion{Address: g.serverName()}}
			if !clientOnly {
				ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
				v, err := g.client().Version(ctx)
				cancel()
				if err != nil {
					r.Server.Error = err.Error()
				}
				r.Server.Version, r.Server.Commit, r.Server.Modified, r.Server.GoVersion = v.Version, v.Commit, v.Modified, v.GoVersion
				for _, h := range v.QEMU {
					r.Server.Hosts = append(r.Server.Hosts, hostQEMU{Host: h.Host, QEMU: h.Version, Accelerator: h.Accelerator})
				}
			}
			return g.print(cmd, r, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Client:\thangar %s\n", r.Client)
				if clientOnly {
					return
				}
				fmt.Fprintf(w, "Server:\t%s\n", r.Server.Address)
				if r.Server.Error != "" {
					fmt.Fprintf(w, "\tnot reachable: %s\n", strings.TrimSpace(r.Server.Error))
					return
				}
				b := buildinfo.Info{Version: r.Server.Version, Commit: r.Server.Commit, Modified: r.Server.Modified, GoVersion: r.Server.GoVersion}
				fmt.Fprintf(w, "\thangar %s\n", b)
				for _, h := range r.Server.Hosts {
					fmt.Fprintf(w, "Host %s:\tQEMU %s, %s\n", h.Host, h.QEMU, h.Accelerator)
				}
			})
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "only this binary's version; do not ask the server")
	addOutput(cmd, g, false)
	return cmd
}
