package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	v1 "hangar/api/v1"
)

// VMUsage reads a running VM's usage on its host (GET /vms/{name}/usage).
func (c *Client) VMUsage(ctx context.Context, name string) (v1.VMUsage, error) {
	var u v1.VMUsage
	_, err := c.do(ctx, "GET", "/vms/"+url.PathEscape(name)+"/usage", nil, nil, &u)
	return u, err
}

// VMHistory is the last hour of a VM's sampled usage (GET
// /vms/{name}/history).
func (c *Client) VMHistory(ctx context.Context, name string) (v1.History, error) {
	var h v1.History
	_, err := c.do(ctx, "GET", "/vms/"+url.PathEscape(name)+"/history", nil, nil, &h)
	return h, err
}

// HostHistory is the last hour of a host's sampled usage (GET
// /hosts/{name}/history).
func (c *Client) HostHistory(ctx context.Context, host string) (v1.History, error) {
	var h v1.History
	_, err := c.do(ctx, "GET", "/hosts/"+url.PathEscape(host)+"/history", nil, nil, &h)
	return h, err
}

// Event is one server-sent event of GET /events.
type Event struct {
	ID   string // the etcd revision (Last-Event-ID of a reconnect)
	Name string // v1.EventVM, v1.EventSynced, …
	Data json.RawMessage
}

// EventStream reads GET /events.
type EventStream struct {
	body io.ReadCloser
	sc   *bufio.Scanner
}

// Events opens the event stream; lastID, when not "", resumes after that
// event. Close it when done (or end ctx).
func (c *Client) Events(ctx context.Context, lastID string) (*EventStream, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/events", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET /events: %w (is `hangar serve` running on %s?)", err, c.endpoint)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var er v1.ErrorResponse
		if json.Unmarshal(b, &er) == nil && er.Error != nil {
			return nil, er.Error
		}
		return nil, fmt.Errorf("GET /events: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20) // one VM record per line
	return &EventStream{body: resp.Body, sc: sc}, nil
}

// Next returns the next event (comments such as pings are skipped); io.EOF
// when the server ended the stream.
func (s *EventStream) Next() (Event, error) {
	var e Event
	for s.sc.Scan() {
		line := s.sc.Text()
		if line == "" {
			if e.Name != "" || e.Data != nil {
				return e, nil
			}
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimPrefix(v, " ")
		switch k {
		case "id":
			e.ID = v
		case "event":
			e.Name = v
		case "data":
			e.Data = append(e.Data, v...)
		}
	}
	if err := s.sc.Err(); err != nil {
		return Event{}, err
	}
	return Event{}, io.EOF
}

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }

// Alerts lists the pool's active alerts (GET /alerts).
func (c *Client) Alerts(ctx context.Context) (v1.AlertList, error) {
	var al v1.AlertList
	_, err := c.do(ctx, "GET", "/alerts", nil, nil, &al)
	return al, err
}
