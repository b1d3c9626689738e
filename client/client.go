// Package client is the Go client of Hangar's REST API. The CLI and the
// tests use it.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	v1 "hangar/api/v1"
)

// DefaultSocket is where `hangar serve` listens by default.
const DefaultSocket = "/run/hangar/hangar.sock"

// SocketFromEnv returns $HANGAR_SOCKET or the default socket.
func SocketFromEnv() string {
	if s := os.Getenv("HANGAR_SOCKET"); s != "" {
		return s
	}
	return DefaultSocket
}

// Client talks to one Hangar API endpoint.
type Client struct {
	hc   *http.Client
	root string // scheme://host of every request
	base string // root + "/api/v1"
	// endpoint names the server in error messages: the socket or the URL.
	endpoint string
	// dial opens a raw connection to the server (for the console upgrade).
	dial func(ctx context.Context) (net.Conn, error)
	// token, when set, is sent as Authorization: Bearer on every request.
	token string
}

// New returns a client of the API on a unix socket.
func New(socket string) *Client {
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}
	tr := &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		MaxIdleConnsPerHost: 4,
	}
	return &Client{hc: &http.Client{Transport: tr}, root: "http://hangar", base: "http://hangar/api/v1", endpoint: socket, dial: dial}
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) (int, error) {
	code, _, err := c.doHeaders(ctx, method, path, q, nil, body, out)
	return code, err
}

// doHeaders is do with request headers hdr, returning the answer's
// headers too.
func (c *Client) doHeaders(ctx context.Context, method, path string, q url.Values, hdr http.Header, body, out any) (int, http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, nil, err
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w (is `hangar serve` running on %s?)", method, path, err, c.endpoint)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		var er v1.ErrorResponse
		b, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(b, &er) == nil && er.Error != nil {
			return resp.StatusCode, resp.Header, er.Error
		}
		return resp.StatusCode, resp.Header, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, resp.Header, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, resp.Header, nil
}

func waitQuery(wait time.Duration) url.Values {
	q := url.Values{}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	return q
}

// CreateVM submits a VM; with start it boots once created. wait > 0 waits
// for the operation on the server (up to wait).
func (c *Client) CreateVM(ctx context.Context, spec v1.VMSpec, start bool, wait time.Duration) (v1.Operation, error) {
	q := waitQuery(wait)
	if start {
		q.Set("start", "true")
	}
	var op v1.Operation
	_, err := c.do(ctx, "POST", "/vms", q, spec, &op)
	return op, err
}

// VMs lists all VMs.
func (c *Client) VMs(ctx context.Context) ([]v1.VM, error) {
	var vms []v1.VM
	_, err := c.do(ctx, "GET", "/vms", nil, nil, &vms)
	return vms, err
}

// VM returns one VM.
func (c *Client) VM(ctx context.Context, name string) (v1.VM, error) {
	var vm v1.VM
	_, err := c.do(ctx, "GET", "/vms/"+url.PathEscape(name), nil, nil, &vm)
	return vm, err
}

// PatchVM changes a VM's settings (PATCH /vms/{name}); nil fields stay as
// they are. CPUs and memory change only while the VM is stopped.
func (c *Client) PatchVM(ctx context.Context, name string, p v1.VMPatch) (v1.VM, error) {
	var vm v1.VM
	_, err := c.do(ctx, "PATCH", "/vms/"+url.PathEscape(name), nil, p, &vm)
	return vm, err
}

// Action submits start, stop, reboot, pause or resume. body may be nil.
func (c *Client) Action(ctx context.Context, name, action string, body any, wait time.Duration) (v1.Operation, error) {
	var op v1.Operation
	_, err := c.do(ctx, "POST", "/vms/"+url.PathEscape(name)+"/"+action, waitQuery(wait), body, &op)
	return op, err
}

// DeleteVM deletes a VM (force: even when it runs).
func (c *Client) DeleteVM(ctx context.Context, name string, force bool, wait time.Duration) (v1.Operation, error) {
	q := waitQuery(wait)
	if force {
		q.Set("force", "true")
	}
	var op v1.Operation
	_, err := c.do(ctx, "DELETE", "/vms/"+url.PathEscape(name), q, nil, &op)
	return op, err
}

// Operation returns an operation, waiting on the server up to wait for it to finish.
func (c *Client) Operation(ctx context.Context, id string, wait time.Duration) (v1.Operation, error) {
	var op v1.Operation
	_, err := c.do(ctx, "GET", "/operations/"+url.PathEscape(id), waitQuery(wait), nil, &op)
	return op, err
}

// Operations lists operations.
func (c *Client) Operations(ctx context.Context) ([]v1.Operation, error) {
	var ops []v1.Operation
	_, err := c.do(ctx, "GET", "/operations", nil, nil, &ops)
	return ops, err
}

// CancelOperation cancels a pending operation.
func (c *Client) CancelOperation(ctx context.Context, id string) (v1.Operation, error) {
	var op v1.Operation
	_, err := c.do(ctx, "DELETE", "/operations/"+url.PathEscape(id), nil, nil, &op)
	return op, err
}

// Wait follows an operation until it is done, calling progress (may be
// nil) on every change; a failed operation returns its error.
func (c *Client) Wait(ctx context.Context, op v1.Operation, progress func(v1.Operation)) (v1.Operation, error) {
	for !op.Done() {
		if progress != nil {
			progress(op)
		}
		next, err := c.Operation(ctx, op.ID, time.Second)
		if err != nil {
			return op, err
		}
		op = next
	}
	if progress != nil {
		progress(op)
	}
	if op.State != v1.OpSucceeded {
		if op.Error != nil {
			return op, op.Error
		}
		return op, fmt.Errorf("operation %s %s", op.ID, op.State)
	}
	return op, nil
}

// Hosts lists the pool's hosts.
func (c *Client) Hosts(ctx context.Context) ([]v1.Host, error) {
	var hs []v1.Host
	_, err := c.do(ctx, "GET", "/hosts", nil, nil, &hs)
	return hs, err
}

// Capacity returns the pool's capacity overview: every host and the pool's
// sums.
func (c *Client) Capacity(ctx context.Context) (v1.Capacity, error) {
	var capa v1.Capacity
	_, err := c.do(ctx, "GET", "/capacity", nil, nil, &capa)
	return capa, err
}

// Version returns the server's build and each host's QEMU.
func (c *Client) Version(ctx context.Context) (v1.Version, error) {
	var v v1.Version
	_, err := c.do(ctx, "GET", "/version", nil, nil, &v)
	return v, err
}

// ConsoleLog returns the persisted serial log.
func (c *Client) ConsoleLog(ctx context.Context, name string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/vms/"+url.PathEscape(name)+"/console/log", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("console log of %s: %w", name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		var er v1.ErrorResponse
		if json.Unmarshal(b, &er) == nil && er.Error != nil {
			return nil, er.Error
		}
		return nil, fmt.Errorf("console log of %s: %s", name, resp.Status)
	}
	return b, err
}

// Console attaches to a VM's serial console: a raw stream both ways.
func (c *Client) Console(ctx context.Context, name string) (net.Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("console of %s: %w", name, err)
	}
	auth := ""
	if c.token != "" {
		auth = "Authorization: Bearer " + c.token + "\r\n"
	}
	query := ""
	if strings.HasPrefix(c.root, "https://") {
		// Over TCP the console opens with a single-use ticket.
		t, err := c.ConsoleTicket(ctx, name)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("console of %s: %w", name, err)
		}
		query = "?ticket=" + url.QueryEscape(t.Ticket)
	}
	fmt.Fprintf(conn, "GET /api/v1/vms/%s/console%s HTTP/1.1\r\nHost: hangar\r\n%sConnection: Upgrade\r\nUpgrade: hangar-console\r\n\r\n", url.PathEscape(name), query, auth)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("console of %s: %w", name, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		var er v1.ErrorResponse
		if json.NewDecoder(resp.Body).Decode(&er) == nil && er.Error != nil {
			return nil, er.Error
		}
		return nil, fmt.Errorf("console of %s: %s", name, resp.Status)
	}
	return &bufConn{Conn: conn, r: br}, nil
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// Metrics returns the Prometheus text exposition.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.root+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Raw sends a request with a raw body (as application/json when there is
// one) and returns status and body (for tests of bad input).
func (c *Client) Raw(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	h := http.Header{}
	if len(body) > 0 {
		h.Set("Content-Type", "application/json")
	}
	status, _, b, err := c.RawRequest(ctx, method, path, h, body)
	return status, b, err
}

// RawRequest sends one request exactly as given on a new connection: path
// goes on the request line as it is (not cleaned or escaped: "//x", "/./x",
// %2F stay), with the headers h and the body (a Content-Length is added
// when body is not nil, unless h has Transfer-Encoding: chunked, which
// sends it in chunks). It returns the status, headers and body of the
// answer.
func (c *Client) RawRequest(ctx context.Context, method, path string, h http.Header, body []byte) (int, http.Header, []byte, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return 0, nil, nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: hangar\r\nConnection: close\r\n", method, path)
	if c.token != "" && h.Get("Authorization") == "" {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", c.token)
	}
	for k, vs := range h {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	chunked := strings.EqualFold(h.Get("Transfer-Encoding"), "chunked")
	if body != nil && !chunked {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	if chunked { // in chunks of 32 KiB, for a body of unknown length
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 32<<10)
			fmt.Fprintf(&b, "%x\r\n%s\r\n", n, rest[:n])
			rest = rest[n:]
		}
		b.WriteString("0\r\n\r\n")
	} else {
		b.Write(body)
	}
	// Written while the answer is read: a server may answer (413) before
	// it has read a large body, and close.
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(b.Bytes())
		werr <- err
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		if we := <-werr; we != nil {
			err = fmt.Errorf("%w (writing the request: %v)", err, we)
		}
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, out, err
}
