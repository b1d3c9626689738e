package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"sigs.k8s.io/yaml"

	v1 "hangar/api/v1"
	"hangar/client"
)

const wideAnnotation = "hangar/output-wide"

// addOutput gives a list or show command -o table|json|yaml (and wide when
// its table has more columns to show) and --no-headers.
func addOutput(cmd *cobra.Command, g *globals, wide bool) {
	formats := []string{"table", "json", "yaml"}
	if wide {
		formats = []string{"table", "wide", "json", "yaml"}
		if cmd.Annotations == nil {
			cmd.Annotations = map[string]string{}
		}
		cmd.Annotations[wideAnnotation] = "true"
	}
	cmd.Flags().StringVarP(&g.output, "output", "o", "table", "output format: "+strings.Join(formats, ", "))
	cmd.Flags().BoolVar(&g.noHeaders, "no-headers", false, "print tables without their header line (for scripts)")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
}

// checkOutput validates -o before a command talks to the server.
func (g *globals) checkOutput(cmd *cobra.Command) error {
	switch g.output {
	case "table", "json", "yaml", "":
		return nil
	case "wide":
		if cmd.Annotations[wideAnnotation] == "true" {
			return nil
		}
		return fmt.Errorf("--output: %q: %s has no wide table; use table, json or yaml", g.output, cmd.CommandPath())
	}
	if cmd.Annotations[wideAnnotation] == "true" {
		return fmt.Errorf("--output: %q is not table, wide, json or yaml", g.output)
	}
	return fmt.Errorf("--output: %q is not table, json or yaml", g.output)
}

func (g *globals) wide() bool { return g.output == "wide" }

// printList writes v as JSON or YAML, or header and rows as a table.
func (g *globals) printList(cmd *cobra.Command, v any, header []string, rows [][]string) error {
	return g.print(cmd, v, func(w *tabwriter.Writer) {
		if !g.noHeaders {
			fmt.Fprintln(w, strings.Join(header, "\t"))
		}
		for _, r := range rows {
			fmt.Fprintln(w, strings.Join(r, "\t"))
		}
	})
}

// print writes v as JSON or YAML, or calls table for the table formats.
func (g *globals) print(cmd *cobra.Command, v any, table func(*tabwriter.Writer)) error {
	if err := g.checkOutput(cmd); err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	switch g.output {
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
	default:
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
}

func uptime(st v1.VMStatus) string {
	if st.StartedAt == nil || (st.State != v1.StateRunning && st.State != v1.StatePaused) {
		return "-"
	}
	return time.Since(*st.StartedAt).Truncate(time.Second).String()
}

// follow waits for an operation and shows its progress on stderr: a bar on
// a terminal, plain lines otherwise.
func follow(cmd *cobra.Command, c *client.Client, op v1.Operation, err error, wait bool) (v1.Operation, error) {
	if err != nil {
		return op, err
	}
	if !wait {
		fmt.Fprintf(cmd.OutOrStdout(), "operation %s %s (%s)\n", op.ID, op.Kind, op.State)
		return op, nil
	}
	p := newProgress(cmd.ErrOrStderr(), fmt.Sprintf("%s %s", op.Kind, op.Target), 0)
	done, err := c.Wait(cmd.Context(), op, func(o v1.Operation) {
		p.fraction(o.Progress.Fraction, opPhase(o), o.Progress.Bytes, o.Progress.TotalBytes)
	})
	p.finish(err == nil)
	if err != nil && cmd.Context().Err() != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "stopped waiting: operation %s (%s %s) goes on in the server; hangar op wait %s follows it\n",
			op.ID, op.Kind, op.Target, op.ID)
	}
	return done, err
}

// opPhase is what an operation is doing: its phase, else its state (a
// phase of "queued" on an operation that runs is stale).
func opPhase(o v1.Operation) string {
	ph := o.Progress.Phase
	if ph == "" || (ph == "queued" && o.State != v1.OpPending) {
		ph = o.State
	}
	if m := o.Progress.Migration; m != nil {
		ph += migrationLine(*m)
	}
	return ph
}

// progress shows how far a long verb is: a bar with phase, percent (bytes
// and rate when total > 0) and elapsed time on a terminal; on anything
// else a plain line at the start, every 10% or 5 s, and at the end.
type progress struct {
	w         io.Writer
	label     string
	total     int64 // bytes; 0: the bar counts fractions
	bar       *progressbar.ProgressBar
	start     time.Time
	cur       int64
	phase     string
	lastPct   int
	lastPhase string
	lastLine  time.Time
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newProgress(w io.Writer, label string, totalBytes int64) *progress {
	p := &progress{w: w, label: label, total: totalBytes, start: time.Now(), lastPct: -1}
	if !isTerminal(w) {
		return p
	}
	opts := []progressbar.Option{progressbar.OptionSetWriter(w), progressbar.OptionSetWidth(30),
		progressbar.OptionSetDescription(label), progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionSetElapsedTime(true), progressbar.OptionSetPredictTime(totalBytes > 0),
		progressbar.OptionThrottle(100 * time.Millisecond), progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) })}
	max := int64(1000)
	if totalBytes > 0 {
		max = totalBytes
		opts = append(opts, progressbar.OptionShowBytes(true), progressbar.OptionShowCount(), progressbar.OptionUseIECUnits(true))
	}
	p.bar = progressbar.NewOptions64(max, opts...)
	return p
}

// fraction reports progress of an operation (0..1) in a phase, with the
// bytes it moved of total when the server counts them (total > 0).
func (p *progress) fraction(f float64, phase string, bytes, total int64) {
	if f < 0 {
		f = 0
	} else if f > 1 {
		f = 1
	}
	p.phase = phase
	extra := ""
	if total > 0 {
		extra = p.bytesRate(bytes, total)
	}
	if p.bar != nil {
		p.bar.Describe(fmt.Sprintf("%s: %s%s", p.label, phase, extra))
		_ = p.bar.Set64(int64(f * 1000))
		return
	}
	p.line(int(f*100), extra)
}

// bytesRate says how many of total bytes are done and at what rate since
// the verb started.
func (p *progress) bytesRate(done, total int64) string {
	rate := 0.0
	if el := time.Since(p.start).Seconds(); el > 0 {
		rate = float64(done) / el
	}
	return fmt.Sprintf(" %s of %s, %s/s", mib(done), mib(total), mib(int64(rate)))
}

// add counts n more bytes of total.
func (p *progress) add(n int64) {
	p.cur += n
	if p.bar != nil {
		_ = p.bar.Add64(n)
		return
	}
	pct := 0
	if p.total > 0 {
		pct = int(p.cur * 100 / p.total)
	}
	p.line(pct, p.bytesRate(p.cur, p.total))
}

func (p *progress) line(pct int, extra string) {
	now := time.Now()
	if pct < 100 && p.phase == p.lastPhase && pct < p.lastPct+10 && now.Sub(p.lastLine) < 5*time.Second {
		return
	}
	if pct == p.lastPct && p.phase == p.lastPhase {
		return
	}
	p.lastPct, p.lastPhase, p.lastLine = pct, p.phase, now
	label := p.label
	if p.phase != "" {
		label += ": " + p.phase
	}
	fmt.Fprintf(p.w, "%s %d%%%s\n", label, pct, extra)
}

// finish closes the bar (or prints the last line).
func (p *progress) finish(ok bool) {
	if p.bar != nil {
		if ok {
			_ = p.bar.Finish()
		} else {
			_ = p.bar.Exit()
			fmt.Fprintln(p.w)
		}
		return
	}
	if ok {
		fmt.Fprintf(p.w, "%s: done in %s\n", p.label, time.Since(p.start).Round(100*time.Millisecond))
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// progressReader counts what is read from r into p.
type progressReader struct {
	r io.Reader
	p *progress
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	if n > 0 {
		r.p.add(int64(n))
	}
	return n, err
}
