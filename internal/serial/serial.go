// Package serial reads what guests write to their serial console log.
package serial

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"time"
)

// ReadyMarker matches the test guest's ready line:
// "HANGAR-GUEST-READY boot_id=<id> hostname=<name>".
var ReadyMarker = regexp.MustCompile(`HANGAR-GUEST-READY boot_id=([0-9a-f-]+) hostname=(\S+)`)

// WaitFor polls the log file from byte offset until re matches a complete
// line, and returns the submatches and the offset just past that line.
func WaitFor(ctx context.Context, path string, offset int64, re *regexp.Regexp) ([]string, int64, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		b, err := os.ReadFile(path)
		if err == nil && int64(len(b)) > offset {
			chunk := b[offset:]
			for len(chunk) > 0 {
				i := bytes.IndexByte(chunk, '\n')
				if i < 0 {
					break
				}
				line := chunk[:i]
				if m := re.FindSubmatch(line); m != nil {
					out := make([]string, len(m))
					for j := range m {
						out[j] = string(m[j])
					}
					return out, offset + int64(i) + 1, nil
				}
				offset += int64(i) + 1
				chunk = chunk[i+1:]
			}
		}
		select {
		case <-ctx.Done():
			return nil, offset, fmt.Errorf("wait for %q in %s: %w", re, path, ctx.Err())
		case <-t.C:
		}
	}
}

// Size returns the current size of a log (0 if it does not exist).
func Size(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}
