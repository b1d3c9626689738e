package manager

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/coder/websocket"

	v1 "hangar/api/v1"
	"hangar/internal/hostapi"
)

// The browser's console (docs/architecture.md "Consoles"): the same
// GET /api/v1/vms/{name}/console with Upgrade: websocket instead of
// hangar-console, binary messages both ways carrying the serial bytes.
// A browser's websocket cannot set headers, so the ticket comes in
// ?ticket=; its session cookie authenticates it as any other request.

// isWebsocket reports whether r asks for a websocket upgrade.
func isWebsocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// consoleReadLimit bounds one message from the browser: keystrokes and
// pastes, not files.
const consoleReadLimit = 64 << 10

// checkWebsocketOrigin refuses a websocket opened by a page of another
// origin (cross-site websocket hijacking: the browser would send the
// session cookie along). A request without Origin comes from no browser;
// a forwarded one was checked by the host that took it (its Host names
// this host's address, not the origin's).
func checkWebsocketOrigin(r *http.Request) error {
	origin := r.Header.Get("Origin")
	if origin == "" || len(r.Header.Values(hostapi.Header)) > 0 {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) {
		return &v1.Error{Code: v1.CodePermissionDenied, Field: "Origin",
			Message: fmt.Sprintf("Origin: %q is not this server's origin (%s): a console opens from Hangar's own pages only", origin, r.Host)}
	}
	return nil
}

// serveWebsocketConsole accepts the websocket and relays binary messages
// to and from cons until either side ends.
func serveWebsocketConsole(w http.ResponseWriter, r *http.Request, cons net.Conn) {
	// The origin was checked before the ticket was taken (and before any
	// forwarding), so Accept's own check, which compares with Host, is off.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return // Accept answered the request
	}
	defer c.CloseNow()
	c.SetReadLimit(consoleReadLimit)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	ws := websocket.NetConn(ctx, c, websocket.MessageBinary)
	relay(cons, ws, ws)
	_ = c.Close(websocket.StatusNormalClosure, "console closed")
}
