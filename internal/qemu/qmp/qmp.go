// Package qmp is a client for the QEMU Machine Protocol on a unix socket.
//
// One Client is one monitor connection. Commands may be issued from many
// goroutines at once: each carries an "id" that QEMU echoes, so answers are
// matched to requests and an answer that comes after its caller gave up is
// dropped. Asynchronous events are fanned out to every subscription.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// eventBuffer is how many events a subscription holds before the oldest
// are dropped.
const eventBuffer = 256

// ErrClosed is returned for calls on/after a lost connection.
var ErrClosed = errors.New("qmp connection closed")

// Error is an error answer from QEMU.
type Error struct {
	Class string `json:"class"` // e.g. "GenericError", "CommandNotFound", "DeviceNotFound"
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// Event is an asynchronous QMP event. Data is shared by all subscribers and
// must not be modified.
type Event struct {
	Name      string // e.g. "STOP", "RESUME", "SHUTDOWN", "JOB_STATUS_CHANGE"
	Data      json.RawMessage
	Timestamp time.Time
}

// Version is the QEMU version from the greeting.
type Version struct {
	Major, Minor, Micro int
	Package             string // e.g. "Debian 1:7.2+dfsg-7"
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// Client is one QMP connection. All methods are safe for concurrent use.
type Client struct {
	conn      *net.UnixConn
	dec       *json.Decoder
	version   Version
	log       *slog.Logger
	events    <-chan Event
	done      chan struct{}
	wsem      chan struct{} // one writer at a time; a channel so waiting honours ctx
	closeConn func() error  // closes conn once

	mu      sync.Mutex
	closed  bool
	nextID  uint64
	pending map[uint64]chan response
	subs    map[*subscriber]struct{}
}

type response struct {
	ret json.RawMessage
	err *Error
}

type subscriber struct {
	ch     chan Event
	warned bool
}

// message is anything QEMU sends after the greeting: an answer or an event.
type message struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	ID     json.RawMessage `json:"id"`
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        uint64 `json:"id"`
}

// Dial connects to a QMP unix socket, reads the greeting, negotiates
// capabilities (qmp_capabilities) and starts the reader. ctx bounds the
// whole handshake, including waiting for a greeting that QEMU holds back
// while another client owns the monitor.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("qmp dial %s: %w", socketPath, err)
	}
	conn := nc.(*net.UnixConn)
	c := &Client{
		conn:    conn,
		dec:     json.NewDecoder(conn),
		log:     slog.Default().With("qmp", socketPath),
		done:    make(chan struct{}),
		wsem:    make(chan struct{}, 1),
		pending: make(map[uint64]chan response),
		subs:    make(map[*subscriber]struct{}),
	}
	c.closeConn = sync.OnceValue(conn.Close)
	if err := c.readGreeting(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp dial %s: greeting: %w", socketPath, err)
	}
	c.events, _ = c.Subscribe()
	go c.readLoop()
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp dial %s: %w", socketPath, err)
	}
	return c, nil
}

func (c *Client) readGreeting(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { c.conn.SetReadDeadline(time.Unix(1, 0)) })
	var g struct {
		QMP *struct {
			Version struct {
				QEMU struct {
					Major int `json:"major"`
					Minor int `json:"minor"`
					Micro int `json:"micro"`
				} `json:"qemu"`
				Package string `json:"package"`
			} `json:"version"`
		} `json:"QMP"`
	}
	err := c.dec.Decode(&g)
	if !stop() {
		return ctx.Err() // the deadline may be set; the conn is discarded anyway
	}
	if err != nil {
		return err
	}
	if g.QMP == nil {
		return errors.New("not a qmp greeting")
	}
	v := g.QMP.Version
	c.version = Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
	return nil
}

// Version returns the QEMU version from the greeting.
func (c *Client) Version() Version { return c.version }

// Done is closed when the connection ends (QEMU exited or Close was called).
func (c *Client) Done() <-chan struct{} { return c.done }

// Events delivers asynchronous events; it is the subscription made at Dial.
// It never blocks the reader: when the consumer lags, the oldest events are
// dropped. It is closed when the connection ends.
func (c *Client) Events() <-chan Event { return c.events }

// Close closes the connection and waits for the reader to stop. Pending
// and later calls fail with ErrClosed. Closing twice is harmless.
func (c *Client) Close() error {
	err := c.closeConn()
	<-c.done
	if err != nil {
		return fmt.Errorf("qmp close: %w", err)
	}
	return nil
}

// Subscribe returns a new channel receiving every event from now on, with
// the same drop-oldest buffering as Events. cancel stops and closes it; the
// channel is also closed when the connection ends. To be sure to see the
// event a command causes, subscribe before executing it.
func (c *Client) Subscribe() (<-chan Event, func()) {
	s := &subscriber{ch: make(chan Event, eventBuffer)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		close(s.ch)
		return s.ch, func() {}
	}
	c.subs[s] = struct{}{}
	return s.ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.subs[s]; ok {
			delete(c.subs, s)
			close(s.ch)
		}
	}
}

// WaitEvent waits for the first event from now on for which match returns
// true (match nil: any event). It uses its own subscription, so it takes
// nothing away from Events or other waiters. An event caused by a command
// issued before WaitEvent is called may be missed: use Subscribe then.
func (c *Client) WaitEvent(ctx context.Context, match func(Event) bool) (Event, error) {
	ch, cancel := c.Subscribe()
	defer cancel()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return Event{}, fmt.Errorf("qmp wait event: %w", ErrClosed)
			}
			if match == nil || match(ev) {
				return ev, nil
			}
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qmp wait event: %w", ctx.Err())
		}
	}
}

// Execute sends one command; args may be nil; reply (may be nil) receives
// the "return" value (json.Unmarshal). An error answer is an *Error. If ctx
// ends before the answer, the ctx error is returned and the late answer is
// discarded.
func (c *Client) Execute(ctx context.Context, cmd string, args any, reply any) error {
	return c.execute(ctx, cmd, args, nil, reply)
}

// ExecuteWithFile sends the command together with f's descriptor
// (SCM_RIGHTS), as QEMU's getfd and add-fd need. QEMU gets its own copy;
// the caller still owns f.
func (c *Client) ExecuteWithFile(ctx context.Context, cmd string, args any, f *os.File, reply any) error {
	if f == nil {
		return fmt.Errorf("qmp %s: nil file", cmd)
	}
	return c.execute(ctx, cmd, args, f, reply)
}

func (c *Client) execute(ctx context.Context, cmd string, args any, f *os.File, reply any) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	ch := make(chan response, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", cmd, ErrClosed)
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	b, err := json.Marshal(request{Execute: cmd, Arguments: args, ID: id})
	if err != nil {
		forget()
		return fmt.Errorf("qmp %s: encode arguments: %w", cmd, err)
	}
	if err := c.send(ctx, append(b, '\n'), f); err != nil {
		forget()
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}

	var r response
	select {
	case r = <-ch:
	case <-ctx.Done():
		forget()
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	case <-c.done:
		select {
		case r = <-ch: // answered just before the end (e.g. quit)
		default:
			return fmt.Errorf("qmp %s: %w", cmd, ErrClosed)
		}
	}
	if r.err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, r.err)
	}
	if reply != nil {
		if err := json.Unmarshal(r.ret, reply); err != nil {
			return fmt.Errorf("qmp %s: decode reply: %w", cmd, err)
		}
	}
	return nil
}

// send writes one whole command. A write that ctx interrupts before any
// byte went out leaves the connection usable; a partial or failed write
// breaks the stream, so the connection is closed.
func (c *Client) send(ctx context.Context, b []byte, f *os.File) error {
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
	defer func() { <-c.wsem }()

	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	n, err := c.write(b, f)
	if !stop() {
		<-fired
		c.conn.SetWriteDeadline(time.Time{})
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		if n > 0 {
			c.closeConn()
		}
		return ctx.Err()
	}
	c.closeConn()
	select {
	case <-c.done: // already lost: say so plainly
		return ErrClosed
	default:
		return fmt.Errorf("write: %v: %w", err, ErrClosed)
	}
}

func (c *Client) write(b []byte, f *os.File) (int, error) {
	if f == nil {
		return c.conn.Write(b)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("file descriptor: %w", err)
	}
	var n int
	var werr error
	// Control keeps the descriptor valid (and f open) while it is sent.
	if err := rc.Control(func(fd uintptr) {
		n, _, werr = c.conn.WriteMsgUnix(b, syscall.UnixRights(int(fd)), nil)
	}); err != nil {
		return 0, fmt.Errorf("file descriptor: %w", err)
	}
	if werr == nil && n < len(b) { // the fd went with the first bytes
		var m int
		m, werr = c.conn.Write(b[n:])
		n += m
	}
	return n, werr
}

func (c *Client) readLoop() {
	var err error
	for {
		var m message
		if err = c.dec.Decode(&m); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) { // a well-formed line of an unexpected shape
				c.log.Warn("qmp: unexpected message", "err", err)
				continue
			}
			break
		}
		c.dispatch(&m)
	}
	c.shutdown(err)
}

func (c *Client) dispatch(m *message) {
	if m.Event != "" {
		ev := Event{Name: m.Event, Data: m.Data,
			Timestamp: time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)}
		c.mu.Lock()
		for s := range c.subs {
			c.deliver(s, ev)
		}
		c.mu.Unlock()
		return
	}
	var id uint64
	if m.ID == nil || json.Unmarshal(m.ID, &id) != nil {
		c.log.Warn("qmp: answer without a usable id", "id", string(m.ID), "error", m.Error)
		return
	}
	c.mu.Lock()
	ch, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if !ok {
		c.log.Debug("qmp: dropping answer nobody waits for", "id", id)
		return
	}
	ch <- response{ret: m.Return, err: m.Error} // buffered, never blocks
}

// deliver queues ev for s without blocking, dropping the oldest queued
// event when s is full. c.mu is held.
func (c *Client) deliver(s *subscriber, ev Event) {
	select {
	case s.ch <- ev:
		return
	default:
	}
	if !s.warned {
		s.warned = true
		c.log.Warn("qmp: event consumer lags, dropping oldest events", "event", ev.Name)
	}
	select {
	case <-s.ch:
	default:
	}
	select {
	case s.ch <- ev:
	default:
	}
}

func (c *Client) shutdown(err error) {
	c.closeConn()
	c.mu.Lock()
	c.closed = true
	for s := range c.subs {
		close(s.ch)
	}
	c.subs = nil
	c.pending = nil
	c.mu.Unlock()
	c.log.Debug("qmp: connection ended", "err", err)
	close(c.done)
}
