package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"sigs.k8s.io/yaml"

	v1 "hangar/api/v1"
	"hangar/client"
)

func addOutput(cmd *cobra.Command, g *globals) {
	cmd.Flags().StringVarP(&g.output, "output", "o", "table", "table, json or yaml")
}

// print writes v as JSON or YAML, or calls table for the table format.
func print(w io.Writer, format string, v any, table func(*tabwriter.Writer)) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "table", "":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	default:
		return fmt.Errorf("--output: %q is not table, json or yaml", format)
	}
}

func uptime(st v1.VMStatus) string {
	if st.StartedAt == nil || (st.State != v1.StateRunning && st.State != v1.StatePaused) {
		return "-"
	}
	return time.Since(*st.StartedAt).Truncate(time.Second).String()
}

// follow waits for an operation with a progress bar on stderr.
func follow(cmd *cobra.Command, c *client.Client, op v1.Operation, err error, wait bool) (v1.Operation, error) {
	if err != nil {
		return op, err
	}
	if !wait {
		fmt.Fprintf(cmd.OutOrStdout(), "operation %s %s (%s)\n", op.ID, op.Kind, op.State)
		return op, nil
	}
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return c.Wait(cmd.Context(), op, nil)
	}
	bar := progressbar.NewOptions(100, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetWidth(30),
		progressbar.OptionSetDescription(fmt.Sprintf("%s %s", op.Kind, op.Target)), progressbar.OptionClearOnFinish())
	done, err := c.Wait(cmd.Context(), op, func(o v1.Operation) {
		_ = bar.Set(int(o.Progress.Fraction * 100))
		bar.Describe(fmt.Sprintf("%s %s: %s", o.Kind, o.Target, o.Progress.Phase))
	})
	_ = bar.Finish()
	return done, err
}
