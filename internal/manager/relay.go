package manager

import (
	"fmt"
	"io"
	"sync"
)

// consoleBacklog bounds the guest's console output a relay holds for a
// client that does not keep up. QEMU writes to its console socket only as
// fast as the socket is read, and its UART, and the guest's processes
// writing to the console, wait for it: a stalled viewer (a suspended CLI,
// a browser tab that stopped reading) would stall the guest. So the relay
// reads the console at once, always, and past the backlog drops output
// for that client, telling it how much when it catches up; the serial log
// has every byte.
const consoleBacklog = 256 << 10

// relay copies in to the console and the console to out until either
// direction ends.
func relay(cons io.ReadWriter, in io.Reader, out io.Writer) {
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(cons, in)
		done <- struct{}{}
	}()
	q := newBacklog(consoleBacklog)
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := cons.Read(buf)
			q.put(buf[:n])
			if err != nil {
				q.close()
				return
			}
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			b, dropped, ok := q.take()
			if dropped > 0 {
				if _, err := fmt.Fprintf(out, "\r\n[hangar: %d bytes of console output dropped: this client fell behind; the serial log has them]\r\n", dropped); err != nil {
					return
				}
			}
			if !ok {
				return
			}
			if _, err := out.Write(b); err != nil {
				return
			}
		}
	}()
	<-done
}

// backlog is the bounded queue between a console and a client: put never
// blocks (past the bound it counts what it drops), take waits for data.
type backlog struct {
	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	max     int
	dropped int64
	closed  bool
}

func newBacklog(max int) *backlog {
	b := &backlog{max: max}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *backlog) put(p []byte) {
	if len(p) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	room := max(0, b.max-len(b.buf))
	keep := min(room, len(p))
	b.buf = append(b.buf, p[:keep]...)
	b.dropped += int64(len(p) - keep)
	b.cond.Signal()
}

func (b *backlog) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.cond.Signal()
}

// take returns what is queued (a copy) and how much was dropped before
// it; ok is false once the console ended and everything was taken.
func (b *backlog) take() (p []byte, dropped int64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.buf) == 0 && b.dropped == 0 && !b.closed {
		b.cond.Wait()
	}
	p, dropped = append([]byte(nil), b.buf...), b.dropped
	b.buf, b.dropped = b.buf[:0], 0
	return p, dropped, len(p) > 0 || !b.closed
}
