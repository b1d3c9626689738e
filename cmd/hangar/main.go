// Command hangar is Hangar's single binary: the daemon (serve), the CLI,
// the demo and the benchmarks.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"hangar/client"
)

// exitInterrupted is the exit code after Ctrl-C (128 + SIGINT), as shells report it.
const exitInterrupted = 130

// errInterrupted ends a command that stopped because of Ctrl-C after it
// cleaned up and said so: main exits 130 without another message.
var errInterrupted = errors.New("interrupted")

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errInterrupted):
		return exitInterrupted
	case ctx.Err() != nil:
		// Ctrl-C while waiting on the server: the server did nothing wrong.
		fmt.Fprintln(os.Stderr, "interrupted")
		return exitInterrupted
	}
	fmt.Fprintln(os.Stderr, "error:", err)
	if isUsageError(err) {
		if c, _, ferr := root.Find(args); ferr == nil {
			if strings.HasPrefix(err.Error(), "accepts ") || strings.HasPrefix(err.Error(), "requires ") {
				fmt.Fprintf(os.Stderr, "Usage: %s\n", c.UseLine())
			}
			fmt.Fprintf(os.Stderr, "Run '%s --help' for usage.\n", c.CommandPath())
		}
	}
	return 1
}

// isUsageError tells cobra's and pflag's errors about the command line
// itself from errors of the work.
func isUsageError(err error) bool {
	for _, p := range []string{"unknown command ", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least ",
		"flag needs an argument", "invalid argument "} {
		if strings.HasPrefix(err.Error(), p) {
			return true
		}
	}
	return false
}

type globals struct {
	socket string
	url    string
	// credentials is a bundle dir of hangar pool credentials.
	credentials string
	output      string
	noHeaders   bool
	c           *client.Client
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "hangar",
		Short: "Hangar runs virtual machines on a pool of hosts",
		Long: `Hangar runs virtual machines on a pool of hosts: one binary is the server
(hangar serve: host agent, manager and embedded etcd) and the CLI that talks to it.

The CLI talks to the API on a unix socket: --socket, else $HANGAR_SOCKET, else
` + client.DefaultSocket + `. Every verb that starts an operation waits for it
and shows its progress (--wait=false returns at once with the operation's id).
Lists and shows take -o table|json|yaml (and wide where there is more to show).`,
		Example: `  hangar serve &
  hangar vm create web1 --image guest.qcow2 --forward 8080:80 --start
  hangar vm list
  hangar vm show web1 -o yaml
  hangar version`,
		Version:       clientVersion().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SuggestionsMinimumDistance = 2
	root.SetVersionTemplate("hangar {{.Version}}\n")
	root.PersistentFlags().StringVar(&g.socket, "socket", client.SocketFromEnv(), "API unix socket (env HANGAR_SOCKET)")
	root.PersistentFlags().StringVar(&g.url, "url", client.ServerFromEnv(),
		"API over TCP, https://host:port, instead of the socket (env HANGAR_URL or HANGAR_SERVER; credentials from --credentials or HANGAR_CA, HANGAR_CERT, HANGAR_KEY, HANGAR_TOKEN)")
	root.PersistentFlags().StringVar(&g.url, "server", client.ServerFromEnv(), "alias of --url: a pool host's API, https://h1:8443 (env HANGAR_SERVER)")
	root.PersistentFlags().StringVar(&g.credentials, "credentials", os.Getenv("HANGAR_CREDENTIALS"),
		"directory of a client certificate bundle from 'hangar pool credentials' (ca.crt, client.crt, client.key; env HANGAR_CREDENTIALS)")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if runsServer(cmd) {
			return nil
		}
		if g.url == "" {
			if cmd.Flags().Changed("credentials") {
				return errors.New("--credentials is for a server over TCP: give --server https://HOST:PORT too")
			}
			return nil
		}
		c, err := g.newClient()
		if err != nil {
			return fmt.Errorf("--server: %w", err)
		}
		g.c = c
		return nil
	}
	root.AddCommand(newServe(g), newHost(g), newOp(g), newAlerts(g), newEvents(g), newDemo(g), newBench(g), newVersion(g))
	root.AddCommand(newVMAndStorage(g)...)
	root.AddCommand(newAccessCommands(g)...)
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	finishTree(root)
	return root
}

// finishTree makes every command without a RunE of its own a group: it
// prints its help when called alone and refuses unknown subcommands with a
// suggestion and a non-zero exit (cobra prints help and exits 0 for them).
func finishTree(cmd *cobra.Command) {
	if cmd.HasSubCommands() && cmd.RunE == nil && cmd.Run == nil {
		cmd.Args = unknownSubcommand
		cmd.SuggestionsMinimumDistance = 2
		cmd.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	}
	for _, c := range cmd.Commands() {
		finishTree(c)
	}
}

func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
	}
	return errors.New(msg)
}

// serverAnnotation marks commands that run a server rather than talk to one.
const serverAnnotation = "hangar/server"

func runsServer(cmd *cobra.Command) bool {
	for c := cmd; c != nil; c = c.Parent() {
		if c.Annotations[serverAnnotation] == "true" {
			return true
		}
	}
	return false
}

// client is the API client of this invocation: of --url over TLS when
// given, else of the unix socket.
func (g *globals) client() *client.Client {
	if g.c != nil {
		return g.c
	}
	c, err := g.newClient()
	if err != nil { // only completion gets here without PersistentPreRunE's check
		c = client.New(g.socket)
	}
	g.c = c
	return c
}

func (g *globals) newClient() (*client.Client, error) {
	if g.url == "" {
		return client.New(g.socket), nil
	}
	o, err := client.OptionsFromEnv(g.credentials)
	if err != nil {
		return nil, err
	}
	if o.Token == "" && o.CertFile == "" {
		// The token hangar login stored for this server.
		l, ok, err := storedLogin(g.url)
		if err != nil {
			return nil, err
		}
		if ok {
			o.Token = l.Token
			if o.CAFile == "" {
				o.CAFile = l.CAFile
			}
		}
	}
	return client.NewTLS(g.url, o)
}

// serverName says which server the CLI talks to.
func (g *globals) serverName() string {
	if g.url != "" {
		return g.url
	}
	return "unix://" + g.socket
}

// serverSocket is where a server listens: --socket or $HANGAR_SOCKET when
// given, else hangar.sock in its run directory.
func (g *globals) serverSocket(cmd *cobra.Command, runDir string) string {
	if cmd.Flags().Changed("socket") || os.Getenv("HANGAR_SOCKET") != "" {
		return g.socket
	}
	return filepath.Join(runDir, "hangar.sock")
}
