package manager

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	v1 "hangar/api/v1"
)

// dialConsole opens the console websocket as the browser does: the session
// cookie, the page's Origin and the ticket in the query.
func (c *caller) dialConsole(name, ticket, origin string) (*websocket.Conn, int, error) {
	c.a.t.Helper()
	ctx, cancel := context.WithTimeout(c.a.t.Context(), 30*time.Second)
	defer cancel()
	u := strings.Replace(c.a.url, "https://", "wss://", 1) + "/api/v1/vms/" + name + "/console?ticket=" + url.QueryEscape(ticket)
	h := http.Header{}
	if c.cookie != nil {
		h.Set("Cookie", c.cookie.Name+"="+c.cookie.Value)
	}
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	if origin != "" {
		h.Set("Origin", origin)
	}
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.a.hc, HTTPHeader: h})
	code := 0
	if resp != nil {
		code = resp.StatusCode
	}
	if conn != nil {
		c.a.t.Cleanup(func() { conn.CloseNow() })
	}
	return conn, code, err
}

// readLine reads binary messages from the console websocket up to a newline.
func readLine(t *testing.T, ctx context.Context, conn *websocket.Conn) string {
	t.Helper()
	var got []byte
	for !strings.Contains(string(got), "\n") {
		typ, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("read the console: %v (so far %q)", err, got)
		}
		if typ != websocket.MessageBinary {
			t.Errorf("message type %v, want binary", typ)
		}
		got = append(got, b...)
	}
	return string(got)
}

// TestConsoleWebsocket: the browser's console is the same route upgraded
// to a websocket: it needs a ticket of the caller for the VM, once, and
// the page's own origin; binary messages carry the serial bytes.
func TestConsoleWebsocket(t *testing.T) {
	a := newAccessServer(t)
	olga := a.session("olga")
	ticket := func(name string) string {
		t.Helper()
		var tk v1.ConsoleTicket
		if code, b := olga.do("POST", "/api/v1/vms/"+name+"/console/ticket", ""); code != 201 || json.Unmarshal(b, &tk) != nil {
			t.Fatalf("ticket: %d %s", code, b)
		}
		return tk.Ticket
	}
	origin := a.url // the page's origin: scheme and the Host the browser asked
	if _, code, err := olga.dialConsole("web-1", "", origin); err == nil || code != 401 {
		t.Errorf("websocket without a ticket: %d %v, want 401", code, err)
	}
	tk := ticket("web-1")
	conn, code, err := olga.dialConsole("web-1", tk, origin)
	if err != nil {
		t.Fatalf("websocket with a ticket: %d %v", code, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := conn.Write(ctx, websocket.MessageBinary, []byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, ctx, conn); got != "h1:hello\n" {
		t.Errorf("console answered %q, want %q", got, "h1:hello\n")
	}
	conn.Close(websocket.StatusNormalClosure, "")
	if _, code, err := olga.dialConsole("web-1", tk, origin); err == nil || code != 401 {
		t.Errorf("replayed ticket: %d %v, want 401", code, err)
	}
	// A page of another origin cannot open it, even with a good ticket
	// (the browser would send the cookie along); the ticket stays unused.
	tk2 := ticket("web-1")
	if _, code, err := olga.dialConsole("web-1", tk2, "https://evil.example"); err == nil || code != 403 {
		t.Errorf("websocket from another origin: %d %v, want 403", code, err)
	}
	if _, code, err := olga.dialConsole("web-1", tk2, origin); err != nil {
		t.Errorf("the ticket after a cross-origin refusal: %d %v", code, err)
	}
	// Another user's VM: no ticket to begin with.
	if code, b := olga.do("POST", "/api/v1/vms/db1/console/ticket", ""); code != 403 {
		t.Errorf("olga's ticket for db1: %d %s, want 403", code, b)
	}
}
