// Package serialtest types commands on a test guest's serial console, for
// the tests that drive a QEMU of their own.
package serialtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"time"

	"hangar/internal/serial"
)

// probeEvery is how long a probe waits for its answer before the next: the
// guest prints its ready line a moment before init starts the shell on its
// console, and what is typed before that is lost.
const probeEvery = 3 * time.Second

// Shell connects to the console socket, waits until the guest's shell
// answers (a probe, typed again until it does), then types cmd and waits
// for re in the serial log (the connection stays open until then, and what
// comes back on it is drained: QEMU reads the socket only as fast as the
// UART takes it, and writes to it only as fast as it is read). It returns
// re's submatches.
func Shell(ctx context.Context, socket, log, cmd string, re *regexp.Regexp) ([]string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("console %s: %w", socket, err)
	}
	defer c.Close()
	// What the guest writes comes to this connection too, and is read
	// here: QEMU sends it a byte at a time, and a unix socket that nobody
	// reads is full after a few hundred of them (each byte is a buffer of
	// its own); then the UART waits, the guest's shell blocks writing and
	// the serial log stops (CI: a command's answer reached the log only
	// when the test gave up and closed the connection).
	go func() { _, _ = io.Copy(io.Discard, c) }()
	for n := 1; ; n++ {
		// The tag is made by the shell ($((n+1))): the echoed command line
		// does not match.
		off := serial.Size(log)
		if _, err := fmt.Fprintf(c, "\necho PROBE-%d-$((1+1))=ok\n", n); err != nil {
			return nil, fmt.Errorf("console %s: %w", socket, err)
		}
		pctx, cancel := context.WithTimeout(ctx, probeEvery)
		_, _, err := serial.WaitFor(pctx, log, off, regexp.MustCompile(`PROBE-`+strconv.Itoa(n)+`-2=ok`))
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("console %q: the guest's shell did not answer: %w", cmd, ctx.Err())
		}
	}
	off := serial.Size(log)
	if _, err := fmt.Fprintf(c, "%s\n", cmd); err != nil {
		return nil, fmt.Errorf("console %s: %w", socket, err)
	}
	m, _, err := serial.WaitFor(ctx, log, off, re)
	if err != nil {
		return nil, fmt.Errorf("console %q: %w", cmd, err)
	}
	return m, nil
}
