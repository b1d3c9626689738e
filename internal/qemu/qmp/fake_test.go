package qmp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// fakeQMP is a scripted QMP server on a unix socket.
type fakeQMP struct {
	t    *testing.T
	path string
	ln   *net.UnixListener
	// handle answers one command (after qmp_capabilities). It runs on the
	// connection's reader goroutine, so it may block to delay what follows,
	// or answer from another goroutine to answer out of order.
	handle func(fc *fakeConn, req fakeRequest)
}

type fakeRequest struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
	fds       []int           // received with this command (SCM_RIGHTS)
}

type fakeConn struct {
	t  *testing.T
	c  *net.UnixConn
	mu sync.Mutex
}

func newFake(t *testing.T, handle func(fc *fakeConn, req fakeRequest)) *fakeQMP {
	t.Helper()
	path, ln := listen(t)
	f := &fakeQMP{t: t, path: path, ln: ln, handle: handle}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []*net.UnixConn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.serve(&fakeConn{t: t, c: c})
			}()
		}
	}()
	return f
}

// listen makes a unix listener in a temporary directory.
func listen(t *testing.T) (string, *net.UnixListener) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return path, ln
}

func (f *fakeQMP) serve(fc *fakeConn) {
	defer fc.c.Close()
	fc.sendRaw(`{"QMP": {"version": {"qemu": {"micro": 1, "minor": 2, "major": 7}, "package": "fake-pkg"}, "capabilities": ["oob"]}}`)
	negotiated := false
	fc.readRequests(func(req fakeRequest) {
		if !negotiated {
			if req.Execute != "qmp_capabilities" {
				fc.send(map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": req.ID})
				return
			}
			negotiated = true
			fc.reply(req, struct{}{})
			return
		}
		f.handle(fc, req)
	})
}

// readRequests reads commands one per line, collecting the descriptors
// that arrive with them.
func (fc *fakeConn) readRequests(fn func(fakeRequest)) {
	var buf []byte
	var fds []int
	data := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(4*8))
	for {
		n, oobn, _, _, err := fc.c.ReadMsgUnix(data, oob)
		n, oobn = max(n, 0), max(oobn, 0)
		if oobn > 0 {
			msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn])
			if perr != nil {
				fc.t.Errorf("fake: parse control message: %v", perr)
			}
			for _, m := range msgs {
				got, perr := syscall.ParseUnixRights(&m)
				if perr != nil {
					fc.t.Errorf("fake: parse unix rights: %v", perr)
				}
				fds = append(fds, got...)
			}
		}
		buf = append(buf, data[:n]...)
		for {
			i := bytes.IndexByte(buf, '\n')
			if i < 0 {
				break
			}
			line := buf[:i]
			buf = buf[i+1:]
			var req fakeRequest
			if err := json.Unmarshal(line, &req); err != nil {
				fc.t.Errorf("fake: bad request %q: %v", line, err)
				return
			}
			req.fds, fds = fds, nil
			fn(req)
		}
		if err != nil {
			for _, fd := range fds {
				syscall.Close(fd)
			}
			return
		}
	}
}

func (fc *fakeConn) sendRaw(line string) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.c.Write([]byte(line + "\n")) // errors: the client went away, which tests provoke
}

func (fc *fakeConn) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fc.t.Errorf("fake: marshal: %v", err)
		return
	}
	fc.sendRaw(string(b))
}

func (fc *fakeConn) reply(req fakeRequest, ret any) {
	fc.send(map[string]any{"return": ret, "id": req.ID})
}

func (fc *fakeConn) replyError(req fakeRequest, class, desc string) {
	fc.send(map[string]any{"error": map[string]string{"class": class, "desc": desc}, "id": req.ID})
}

func (fc *fakeConn) event(name string, data any, sec, usec int64) {
	fc.send(map[string]any{"event": name, "data": data,
		"timestamp": map[string]int64{"seconds": sec, "microseconds": usec}})
}

func (fc *fakeConn) hangUp() { fc.c.Close() }

// echoArgs answers with the command's arguments.
func echoArgs(fc *fakeConn, req fakeRequest) {
	if req.Arguments == nil {
		fc.reply(req, struct{}{})
		return
	}
	fc.reply(req, req.Arguments)
}

func unknown(fc *fakeConn, req fakeRequest) {
	fc.replyError(req, "CommandNotFound", fmt.Sprintf("The command %s has not been found", req.Execute))
}
