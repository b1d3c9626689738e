// Package img runs qemu-img and reads its progress output.
package img

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Run runs qemu-img with args (no shell), stdout to w (may be nil); a
// failure carries qemu-img's own message.
func Run(ctx context.Context, w io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("qemu-img %s: %w", args[0], ctx.Err())
		}
		msg := strings.ReplaceAll(strings.TrimSpace(stderr.String()), "\n", "; ")
		if msg == "" {
			msg = err.Error()
		}
		return fmt.Errorf("qemu-img %s: %s", args[0], msg)
	}
	return nil
}

// ProgressWriter parses qemu-img -p output ("    (12.34/100%)\r") written
// to it and calls fn with each new, larger fraction, at most limit.
func ProgressWriter(fn func(float64), limit float64) io.Writer {
	return &progressWriter{fn: fn, last: -1, limit: limit}
}

type progressWriter struct {
	fn          func(float64)
	last, limit float64
	buf         []byte
}

func (w *progressWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexAny(w.buf, "\r\n")
		if i < 0 {
			break
		}
		w.line(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 4096 {
		w.buf = w.buf[:0]
	}
	return len(b), nil
}

func (w *progressWriter) line(s string) {
	s, ok1 := strings.CutPrefix(strings.TrimSpace(s), "(")
	s, ok2 := strings.CutSuffix(s, "/100%)")
	if !ok1 || !ok2 {
		return
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return
	}
	if v = min(max(v/100, 0), w.limit); v > w.last {
		w.last = v
		w.fn(v)
	}
}
