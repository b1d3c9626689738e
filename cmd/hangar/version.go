package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// version is set at build time (-ldflags "-X main.version=…"); otherwise the
// module version from the build info.
var version = ""

// buildInfo is what this binary knows about itself.
type buildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"goVersion"`
}

func (b buildInfo) String() string {
	s := b.Version
	if b.Commit != "" {
		c := b.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		s += " (commit " + c
		if b.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return s + " " + b.GoVersion
}

func clientVersion() buildInfo {
	b := buildInfo{Version: version, GoVersion: runtime.Version()}
	info, ok := debug.ReadBuildInfo()
	if ok {
		if b.Version == "" && info.Main.Version != "" {
			b.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Commit = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Version == "" {
		b.Version = "(devel)"
	}
	return b
}

type versionReport struct {
	Client buildInfo     `json:"client"`
	Server serverVersion `json:"server"`
}

type serverVersion struct {
	Address string     `json:"address"`
	Error   string     `json:"error,omitempty"`
	Hosts   []hostQEMU `json:"hosts,omitempty"`
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
		Short: "Show the client's version and the server's (address, QEMU)",
		Long: `Show this binary's version and git commit, the server it talks to (--socket or
$HANGAR_SOCKET) and the QEMU version and accelerator of each of the server's hosts.
An unreachable server is reported, not an error (--client skips asking).`,
		Example: "  hangar version\n  hangar version -o json\n  hangar --version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			r := versionReport{Client: clientVersion(), Server: serverVersion{Address: g.serverName()}}
			if !clientOnly {
				ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
				hosts, err := g.client().Hosts(ctx)
				cancel()
				if err != nil {
					r.Server.Error = err.Error()
				}
				for _, h := range hosts {
					r.Server.Hosts = append(r.Server.Hosts, hostQEMU{Host: h.Name, QEMU: h.QEMUVersion, Accelerator: h.Accelerator})
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
				}
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
