// Command hangar is Hangar's single binary: the daemon (serve), the CLI,
// the demo and the benchmarks.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"hangar/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

type globals struct {
	socket string
	output string
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "hangar",
		Short:         "Hangar runs virtual machines on a pool of hosts",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", client.SocketFromEnv(), "API unix socket (env HANGAR_SOCKET)")
	root.AddCommand(newServe(g), newHost(g), newOp(g), newDemo(g), newBench(g))
	root.AddCommand(newVMAndStorage(g)...)
	return root
}

func (g *globals) client() *client.Client { return client.New(g.socket) }

// serverSocket is where a server listens: --socket or $HANGAR_SOCKET when
// given, else hangar.sock in its run directory.
func (g *globals) serverSocket(cmd *cobra.Command, runDir string) string {
	if cmd.Flags().Changed("socket") || os.Getenv("HANGAR_SOCKET") != "" {
		return g.socket
	}
	return filepath.Join(runDir, "hangar.sock")
}
