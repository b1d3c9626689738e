package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func dial(t *testing.T, f *fakeQMP) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestExecute(t *testing.T) {
	f := newFake(t, func(fc *fakeConn, req fakeRequest) {
		switch req.Execute {
		case "query-status":
			fc.reply(req, map[string]any{"status": "running", "singlestep": false, "running": true})
		case "echo":
			echoArgs(fc, req)
		case "query-jobs":
			fc.reply(req, []map[string]any{{"id": "mirror0", "type": "mirror", "status": "ready", "current-progress": 10, "total-progress": 10}})
		case "job-complete":
			if string(req.Arguments) != `{"id":"mirror0"}` {
				fc.replyError(req, "GenericError", "bad arguments "+string(req.Arguments))
				return
			}
			fc.reply(req, struct{}{})
		case "cont", "stop", "system_reset", "system_powerdown":
			if req.Arguments != nil {
				fc.replyError(req, "GenericError", "unexpected arguments")
				return
			}
			fc.reply(req, struct{}{})
		default:
			unknown(fc, req)
		}
	})
	c := dial(t, f)
	ctx := testCtx(t)

	if v := c.Version(); v != (Version{Major: 7, Minor: 2, Micro: 1, Package: "fake-pkg"}) || v.String() != "7.2.1" {
		t.Errorf("version = %+v (%s)", v, v)
	}
	st, err := c.QueryStatus(ctx)
	if err != nil || st != (Status{Status: "running", Running: true}) {
		t.Errorf("QueryStatus = %+v, %v", st, err)
	}
	var got struct{ A int }
	if err := c.Execute(ctx, "echo", map[string]int{"A": 42}, &got); err != nil || got.A != 42 {
		t.Errorf("echo = %+v, %v", got, err)
	}
	if err := c.Execute(ctx, "echo", nil, nil); err != nil {
		t.Errorf("echo without args/reply: %v", err)
	}
	jobs, err := c.QueryJobs(ctx)
	if err != nil || len(jobs) != 1 || jobs[0] != (Job{ID: "mirror0", Type: "mirror", Status: "ready", CurrentProgress: 10, TotalProgress: 10}) {
		t.Errorf("QueryJobs = %+v, %v", jobs, err)
	}
	for name, fn := range map[string]func(context.Context) error{
		"cont": c.Cont, "stop": c.Stop, "reset": c.SystemReset, "powerdown": c.SystemPowerdown,
		"job-complete": func(ctx context.Context) error { return c.JobComplete(ctx, "mirror0") },
	} {
		if err := fn(ctx); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	var bad struct{ A string }
	if err := c.Execute(ctx, "echo", map[string]int{"A": 1}, &bad); err == nil || !strings.Contains(err.Error(), "decode reply") {
		t.Errorf("decode into wrong type: err = %v", err)
	}
}

func TestErrorClass(t *testing.T) {
	f := newFake(t, func(fc *fakeConn, req fakeRequest) {
		switch req.Execute {
		case "device_del":
			fc.replyError(req, "DeviceNotFound", "Device 'nic9' not found")
		default:
			unknown(fc, req)
		}
	})
	c := dial(t, f)
	ctx := testCtx(t)

	err := c.Execute(ctx, "device_del", map[string]string{"id": "nic9"}, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" || qe.Desc != "Device 'nic9' not found" {
		t.Fatalf("err = %v, want *Error DeviceNotFound", err)
	}
	if want := "qmp device_del: qmp: DeviceNotFound: Device 'nic9' not found"; err.Error() != want {
		t.Errorf("message = %q, want %q", err, want)
	}
	err = c.JobCancel(ctx, "nope")
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("JobCancel err = %v, want CommandNotFound", err)
	}
}

func TestTimeoutThenLaterCall(t *testing.T) {
	hung := make(chan fakeRequest, 1)
	f := newFake(t, func(fc *fakeConn, req fakeRequest) {
		switch req.Execute {
		case "hang":
			hung <- req // answered late, below
		case "fresh":
			// The stale answer comes first, with its own id.
			fc.reply(<-hung, "stale")
			fc.reply(req, "fresh")
		}
	})
	c := dial(t, f)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Execute(ctx, "hang", nil, new(string))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("timeout took %v", d)
	}
	var s string
	if err := c.Execute(testCtx(t), "fresh", nil, &s); err != nil || s != "fresh" {
		t.Fatalf("later call = %q, %v; want fresh", s, err)
	}
	// A cancelled ctx fails before anything is sent.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := c.Execute(ctx, "fresh", nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: err = %v", err)
	}
	c.mu.Lock()
	n := len(c.pending)
	c.mu.Unlock()
	if n != 0 {
		t.Errorf("%d pending entries leaked", n)
	}
}

func TestEvents(t *testing.T) {
	f := newFake(t, func(fc *fakeConn, req fakeRequest) {
		switch req.Execute {
		case "emit":
			fc.event("STOP", struct{}{}, 1700000000, 250)
			fc.event("JOB_STATUS_CHANGE", map[string]string{"id": "j1", "status": "ready"}, 1700000001, 0)
			fc.event("RESUME", struct{}{}, 1700000002, 0)
			fc.reply(req, struct{}{})
		}
	})
	c := dial(t, f)
	ctx := testCtx(t)

	// Two concurrent waiters for different events, plus Events().
	type result struct {
		ev  Event
		err error
	}
	stopc, jobc := make(chan result, 1), make(chan result, 1)
	go func() {
		ev, err := c.WaitEvent(ctx, func(e Event) bool { return e.Name == "STOP" })
		stopc <- result{ev, err}
	}()
	go func() {
		ev, err := c.WaitEvent(ctx, func(e Event) bool {
			var d struct{ ID, Status string }
			return e.Name == "JOB_STATUS_CHANGE" && json.Unmarshal(e.Data, &d) == nil && d.Status == "ready"
		})
		jobc <- result{ev, err}
	}()
	waitSubs(t, c, 3) // Events() + 2 waiters

	if err := c.Execute(ctx, "emit", nil, nil); err != nil {
		t.Fatal(err)
	}
	r := <-stopc
	if r.err != nil || r.ev.Name != "STOP" || !r.ev.Timestamp.Equal(time.Unix(1700000000, 250000)) {
		t.Errorf("STOP waiter: %+v, %v", r.ev, r.err)
	}
	r = <-jobc
	if r.err != nil || r.ev.Name != "JOB_STATUS_CHANGE" {
		t.Errorf("job waiter: %+v, %v", r.ev, r.err)
	}
	// Events() saw all of them, in order: the waiters took nothing away.
	for _, want := range []string{"STOP", "JOB_STATUS_CHANGE", "RESUME"} {
		select {
		case ev := <-c.Events():
			if ev.Name != want {
				t.Errorf("Events: got %s, want %s", ev.Name, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Events: no %s", want)
		}
	}
	waitSubs(t, c, 1) // waiters unsubscribed

	// WaitEvent honours ctx.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := c.WaitEvent(short, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitEvent timeout: err = %v", err)
	}

	// A cancelled subscription is closed and gets nothing more.
	sub, unsub := c.Subscribe()
	unsub()
	unsub()
	if _, ok := <-sub; ok {
		t.Error("cancelled subscription still open")
	}
}

func waitSubs(t *testing.T, c *Client, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		got := len(c.subs)
		c.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d subscriptions, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestEventsDropOldest(t *testing.T) {
	const extra = 10
	f := newFake(t, func(fc *fakeConn, req fakeRequest) {
		for i := range eventBuffer + extra {
			fc.event("TICK", map[string]int{"n": i}, 0, 0)
		}
		fc.reply(req, struct{}{})
	})
	c := dial(t, f)
	// Events are dispatched in order before the answer, so once the answer
	// is in, all of them went through the (unread) Events channel.
	if err := c.Execute(testCtx(t), "flood", nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Events()); n != eventBuffer {
		t.Fatalf("%d events buffered, want %d", n, eventBuffer)
	}
	for i := range eventBuffer {
		ev := <-c.Events()
		var d struct{ N int }
		json.Unmarshal(ev.Data, &d)
		if d.N != extra+i {
			t.Fatalf("event %d has n=%d, want %d (oldest dropped)", i, d.N, extra+i)
		}
	}
}

func TestConnectionLoss(t *testing.T) {
	f := newFake(t, func(fc *fakeConn, req fakeRequest) {
		switch req.Execute {
		case "hang":
		case "die":
			fc.hangUp()
		}
	})
	c := dial(t, f)
	ctx := testCtx(t)

	hangErr := make(chan error, 1)
	go func() { hangErr <- c.Execute(ctx, "hang", nil, nil) }()
	waitErr := make(chan error, 1)
	go func() {
		_, err := c.WaitEvent(ctx, nil)
		waitErr <- err
	}()
	waitSubs(t, c, 2)

	if err := c.Execute(ctx, "die", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("die: err = %v, want ErrClosed", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if err := <-hangErr; !errors.Is(err, ErrClosed) {
		t.Errorf("pending call: err = %v, want ErrClosed", err)
	}
	if err := <-waitErr; !errors.Is(err, ErrClosed) {
		t.Errorf("WaitEvent: err = %v, want ErrClosed", err)
	}
	if _, ok := <-c.Events(); ok {
		t.Error("Events not closed")
	}
	if err := c.Execute(ctx, "hang", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("call after loss: err = %v, want ErrClosed", err)
	}
	if err := c.ExecuteWithFile(ctx, "getfd", nil, os.Stdin, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("file call after loss: err = %v, want ErrClosed", err)
	}
	if sub, _ := c.Subscribe(); sub != nil {
		if _, ok := <-sub; ok {
			t.Error("Subscribe after loss: channel open")
		}
	}
	if err := c.Quit(ctx); err != nil {
		t.Errorf("Quit after loss: %v (lost connection means done)", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close after loss: %v", err)
	}
}

func TestClose(t *testing.T) {
	f := newFake(t, func(fc *fakeConn, req fakeRequest) {})
	c := dial(t, f)
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(context.Background(), "hang", nil, nil) }()
	waitPending(t, c, 1)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done open after Close")
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("pending call: err = %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func waitPending(t *testing.T, c *Client, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		got := len(c.pending)
		c.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pending, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestConcurrentExecute(t *testing.T) {
	// Answers come back out of order, after random delays.
	f := newFake(t, func(fc *fakeConn, req fakeRequest) {
		go func() {
			time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
			echoArgs(fc, req)
		}()
	})
	c := dial(t, f)
	ctx := testCtx(t)

	const workers, calls = 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range calls {
				want := fmt.Sprintf("w%d-%d", w, i)
				var got struct{ S string }
				if err := c.Execute(ctx, "echo", map[string]string{"S": want}, &got); err != nil {
					t.Errorf("%s: %v", want, err)
					return
				}
				if got.S != want {
					t.Errorf("got %q, want %q", got.S, want)
				}
			}
		})
	}
	wg.Wait()
}

func TestExecuteWithFile(t *testing.T) {
	type got struct {
		cmd string
		n   int
		err error
	}
	gotc := make(chan got, 2)
	f := newFake(t, func(fc *fakeConn, req fakeRequest) {
		if len(req.fds) != 1 {
			gotc <- got{cmd: req.Execute, n: len(req.fds)}
			fc.replyError(req, "GenericError", "No file descriptor supplied via SCM_RIGHTS")
			return
		}
		// Use the descriptor: write through it into the test's pipe.
		file := os.NewFile(uintptr(req.fds[0]), "received")
		_, err := file.WriteString("hello through " + req.Execute)
		file.Close()
		gotc <- got{cmd: req.Execute, n: 1, err: err}
		fc.reply(req, struct{}{})
	})
	c := dial(t, f)
	ctx := testCtx(t)

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := c.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": "pipe"}, w, nil); err != nil {
		t.Fatal(err)
	}
	if g := <-gotc; g.cmd != "getfd" || g.n != 1 || g.err != nil {
		t.Fatalf("fake got %+v", g)
	}
	// Our copy stays ours: still open and usable.
	if _, err := w.WriteString("; caller's copy works"); err != nil {
		t.Fatalf("caller's file after send: %v", err)
	}
	w.Close()
	b, err := io.ReadAll(r)
	if err != nil || string(b) != "hello through getfd; caller's copy works" {
		t.Fatalf("pipe read %q, %v", b, err)
	}

	// A plain Execute carries no descriptor.
	var qe *Error
	if err := c.Execute(ctx, "getfd", map[string]string{"fdname": "none"}, nil); !errors.As(err, &qe) {
		t.Errorf("getfd without fd: err = %v", err)
	}
	if g := <-gotc; g.n != 0 {
		t.Errorf("plain Execute sent %d fds", g.n)
	}
	if err := c.ExecuteWithFile(ctx, "getfd", nil, nil, nil); err == nil {
		t.Error("nil file accepted")
	}
}

func TestDial(t *testing.T) {
	t.Run("no socket", func(t *testing.T) {
		_, err := Dial(testCtx(t), t.TempDir()+"/missing.sock")
		if !errors.Is(err, syscall.ENOENT) {
			t.Errorf("err = %v, want ENOENT", err)
		}
	})
	t.Run("no greeting", func(t *testing.T) {
		// As when another client holds QEMU's monitor: connected, silent.
		path, ln := listen(t)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				defer c.Close()
				io.Copy(io.Discard, c)
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := Dial(ctx, path)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want deadline exceeded", err)
		}
	})
	t.Run("not qmp", func(t *testing.T) {
		path, ln := listen(t)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				defer c.Close()
				c.Write([]byte("{\"hello\": 1}\n"))
				io.Copy(io.Discard, c)
			}
		}()
		_, err := Dial(testCtx(t), path)
		if err == nil || !strings.Contains(err.Error(), "not a qmp greeting") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("capabilities refused", func(t *testing.T) {
		path, ln := listen(t)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 9}, "package": ""}, "capabilities": []}}` + "\n"))
			var req fakeRequest
			json.NewDecoder(c).Decode(&req)
			fmt.Fprintf(c, `{"error": {"class": "GenericError", "desc": "no"}, "id": %s}`+"\n", req.ID)
			io.Copy(io.Discard, c)
		}()
		_, err := Dial(testCtx(t), path)
		var qe *Error
		if !errors.As(err, &qe) || qe.Desc != "no" {
			t.Errorf("err = %v", err)
		}
	})
}

func TestBlockedWriteHonoursCtx(t *testing.T) {
	// QEMU that negotiates, reads the first bytes of the next command, then
	// stops reading (its main loop hangs).
	path, ln := listen(t)
	stuck := make(chan struct{})
	started := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}` + "\n"))
		rd := bufio.NewReader(c)
		line, err := rd.ReadBytes('\n')
		if err != nil {
			return
		}
		var req fakeRequest
		json.Unmarshal(line, &req)
		fmt.Fprintf(c, `{"return": {}, "id": %s}`+"\n", req.ID)
		if _, err := rd.ReadByte(); err != nil {
			return
		}
		close(started) // the client is writing
		<-stuck
	}()
	c, err := Dial(testCtx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Far more than the socket buffers hold, so the write blocks; the
	// deadline strikes once the peer has seen its first bytes (cancelling on
	// a timer instead would race with encoding on a loaded machine, and a
	// cancel before any byte went out rightly keeps the connection).
	big := strings.Repeat("x", 4<<20)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-started:
			cancel()
		case <-stuck:
		}
	}()
	start := time.Now()
	err = c.Execute(ctx, "echo", map[string]string{"s": big}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want canceled", err)
	}
	// A safety net, not a timing assert: without honouring ctx the write
	// would block for as long as the peer does (forever here).
	if d := time.Since(start); d > time.Minute {
		t.Errorf("blocked write returned after %v", d)
	}
	// Half a command went out: the stream is unusable, so the client hung up.
	select {
	case <-c.Done():
	case <-time.After(time.Minute):
		t.Fatal("connection kept after a partial write")
	}
}
