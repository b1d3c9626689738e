package manager

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/authn"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

// sse is one event read from a stream ("" event: a comment line).
type sse struct {
	id, event, data, comment string
}

// openEvents opens GET /api/v1/events as c (with Last-Event-ID last, if
// any) and returns its events as they come.
func openEvents(t *testing.T, c *caller, last string) <-chan sse {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", c.a.url+"/api/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	resp, err := c.a.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan sse, 1000)
	go func() {
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var e sse
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if e != (sse{}) {
					out <- e
				}
				e = sse{}
			case strings.HasPrefix(line, ":"):
				e.comment = strings.TrimSpace(line[1:])
			default:
				k, v, _ := strings.Cut(line, ": ")
				switch k {
				case "id":
					e.id = v
				case "event":
					e.event = v
				case "data":
					e.data = v
				}
			}
		}
	}()
	return out
}

// until reads events until one satisfies ok (and returns it and those
// before it); the test fails after a generous deadline.
func until(t *testing.T, ch <-chan sse, what string, ok func(sse) bool) (sse, []sse) {
	t.Helper()
	var seen []sse
	deadline := time.After(60 * time.Second)
	for {
		select {
		case e, open := <-ch:
			if !open {
				t.Fatalf("stream ended waiting for %s; seen %v", what, seen)
			}
			if ok(e) {
				return e, seen
			}
			seen = append(seen, e)
		case <-deadline:
			t.Fatalf("no %s in 60 s; seen %v", what, seen)
		}
	}
}

func vmEvent(name, state string) func(sse) bool {
	return func(e sse) bool {
		if e.event != v1.EventVM {
			return false
		}
		var v v1.VM
		return json.Unmarshal([]byte(e.data), &v) == nil && (name == "" || v.Spec.Name == name) && (state == "" || v.Status.State == state)
	}
}

func isEvent(name string) func(sse) bool { return func(e sse) bool { return e.event == name } }

// TestEvents: a pool viewer's stream starts with every VM and host, then
// synced; a status change, a new operation, a crash (alert, and
// alert-cleared when it ends) and a deletion follow as events, with pings
// between; a viewer scoped to web-* sees web-1 and never db1, nor hosts;
// a reconnect with Last-Event-ID gets only the changes it missed.
func TestEvents(t *testing.T) {
	a := newAccessServer(t)
	a.s.hostsEvery = 50 * time.Millisecond
	a.s.pingEvery = 300 * time.Millisecond
	vera := a.token("vera")
	scoped := a.token("olga", v1.Grant{Role: v1.RoleViewer, Scope: "prefix:web-"})
	alice := a.token("alice")

	ev := openEvents(t, vera, "")
	sy, initial := until(t, ev, "synced", isEvent(v1.EventSynced))
	if sy.data != `{"full":true}` {
		t.Errorf("the initial state's synced says %s, want full", sy.data)
	}
	names := map[string]bool{}
	host := false
	for _, e := range initial {
		if vmEvent("", "")(e) {
			var v v1.VM
			_ = json.Unmarshal([]byte(e.data), &v)
			names[v.Spec.Name] = true
		}
		host = host || (e.event == v1.EventHost && strings.Contains(e.data, `"name":"h1"`))
		if e.id == "" {
			t.Errorf("event without an id: %+v", e)
		}
	}
	if !names["web-1"] || !names["db1"] || !names["tagged"] || !host {
		t.Fatalf("initial state: vms %v, host h1 %v; events %v", names, host, initial)
	}
	sc := openEvents(t, scoped, "")
	_, scopedInitial := until(t, sc, "synced (scoped)", isEvent(v1.EventSynced))
	for _, e := range scopedInitial {
		if strings.Contains(e.data, "db1") || e.event == v1.EventHost || e.event == v1.EventPool {
			t.Errorf("scoped viewer got %+v", e)
		}
	}
	if _, ok := findEvent(scopedInitial, vmEvent("web-1", "")); !ok {
		t.Errorf("scoped viewer's initial state lacks web-1: %v", scopedInitial)
	}

	// A status change.
	a.setState("db1", v1.StateRunning)
	got, _ := until(t, ev, "db1 running", vmEvent("db1", v1.StateRunning))
	// An operation.
	code, b := alice.do("POST", "/api/v1/vms/web-1/start", "")
	if code != 202 {
		t.Fatalf("start web-1: %d %s", code, b)
	}
	var op v1.Operation
	_ = json.Unmarshal(b, &op)
	until(t, ev, "the start operation", func(e sse) bool {
		var o v1.Operation
		return e.event == v1.EventOperation && json.Unmarshal([]byte(e.data), &o) == nil && o.ID == op.ID
	})
	// A crash: an alert, cleared when the VM runs again; /alerts agrees.
	a.setState("db1", v1.StateCrashed)
	until(t, ev, "db1's alert", func(e sse) bool {
		return e.event == v1.EventAlert && strings.Contains(e.data, `"id":"vm-crashed/db1"`) && strings.Contains(e.data, `"severity":"critical"`)
	})
	code, b = vera.do("GET", "/api/v1/alerts", "")
	var al v1.AlertList
	if code != 200 || json.Unmarshal(b, &al) != nil || len(al.Alerts) != 1 || al.Alerts[0].ID != "vm-crashed/db1" || al.Alerts[0].Target != "db1" {
		t.Errorf("alerts: %d %s", code, b)
	}
	if code, _ := scoped.do("GET", "/api/v1/alerts", ""); code != 403 {
		t.Errorf("alerts as a scoped viewer: %d, want 403", code)
	}
	a.setState("db1", v1.StateRunning)
	until(t, ev, "db1's alert cleared", func(e sse) bool {
		return e.event == v1.EventAlertCleared && e.data == `{"id":"vm-crashed/db1"}`
	})
	until(t, ev, "a ping", func(e sse) bool { return e.comment == "ping" })

	// The scoped viewer saw none of it about db1, and sees web-1 change.
	a.setState("web-1", v1.StatePaused)
	_, before := until(t, sc, "web-1 paused (scoped)", vmEvent("web-1", v1.StatePaused))
	for _, e := range before {
		if strings.Contains(e.data, "db1") || e.event == v1.EventAlert || e.event == v1.EventHost {
			t.Errorf("scoped viewer got %+v", e)
		}
	}

	// Resume: what changed after the db1 running event (its crash and
	// recovery, tagged's deletion), with the alert's start and end.
	if err := a.st.Delete(t.Context(), inventory.VMKey("tagged"), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	re := openEvents(t, vera, got.id)
	sy, replay := until(t, re, "synced (resumed)", isEvent(v1.EventSynced))
	if sy.data != `{"full":false}` {
		t.Errorf("a resumed stream's synced says %s, want not full (the client keeps what it has)", sy.data)
	}
	if _, ok := findEvent(replay, func(e sse) bool { return e.event == v1.EventVMDeleted && e.data == `{"name":"tagged"}` }); !ok {
		t.Errorf("resumed stream lacks tagged's deletion: %v", replay)
	}
	if e, ok := findEvent(replay, vmEvent("db1", v1.StateCrashed)); !ok {
		t.Errorf("resumed stream lacks db1's crash: %v", replay)
	} else if n, _ := strconv.ParseInt(e.id, 10, 64); n <= mustInt(t, got.id) {
		t.Errorf("replayed event %s at or before the resume point %s", e.id, got.id)
	}
	if _, ok := findEvent(replay, vmEvent("db1", v1.StateRunning)); !ok {
		t.Errorf("resumed stream lacks db1 running again: %v", replay)
	}
	if _, ok := findEvent(replay, isEvent(v1.EventAlertCleared)); !ok {
		t.Errorf("resumed stream lacks the alert's end: %v", replay)
	}
	if e, ok := findEvent(replay, vmEvent("web-1", "")); ok && mustInt(t, e.id) <= mustInt(t, got.id) {
		t.Errorf("resumed stream sent web-1 as of %s, before its resume point %s", e.id, got.id)
	}
	// A revision etcd no longer has is a fresh start: the whole state, then
	// synced.
	_, now, err := a.st.List(t.Context(), inventory.PoolRecord)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.st.(*store.Etcd).Client().Compact(t.Context(), now); err != nil {
		t.Fatal(err)
	}
	fresh := openEvents(t, vera, got.id)
	sy, again := until(t, fresh, "synced (after compaction)", isEvent(v1.EventSynced))
	if sy.data != `{"full":true}` {
		t.Errorf("after compaction synced says %s, want full", sy.data)
	}
	for _, name := range []string{"web-1", "db1"} {
		if e, ok := findEvent(again, vmEvent(name, "")); !ok || mustInt(t, e.id) < now {
			t.Errorf("after compaction: %s %+v (found %v), want it in a whole state at revision %d or later", name, e, ok, now)
		}
	}
	if code, b := vera.do("GET", "/api/v1/events", "", "Last-Event-ID", "x1"); code != 400 || errCode(b) != v1.CodeInvalidArgument {
		t.Errorf("bad Last-Event-ID: %d %s", code, b)
	}
}

func mustInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("event id %q: %v", s, err)
	}
	return n
}

func findEvent(es []sse, ok func(sse) bool) (sse, bool) {
	for _, e := range es {
		if ok(e) {
			return e, true
		}
	}
	return sse{}, false
}

// TestEventsFollowRights: a stream follows its caller's rights as they
// change. olga (operator on web-*) streams with a token that inherits her
// grants: granted viewer on the pool, her new rights (whoami), db1 and the
// host arrive; that grant
// revoked, db1 and the host are deleted from her view and db1's changes no
// longer reach her; her token revoked, the stream ends and a reconnect gets
// 401. A token that expires while its stream is open ends it at the next
// ping.
func TestEventsFollowRights(t *testing.T) {
	a := newAccessServer(t)
	a.s.hostsEvery = 50 * time.Millisecond
	a.s.pingEvery = 200 * time.Millisecond
	olga := a.token("olga")
	ev := openEvents(t, olga, "")
	_, initial := until(t, ev, "synced", isEvent(v1.EventSynced))
	if _, ok := findEvent(initial, vmEvent("db1", "")); ok {
		t.Fatalf("olga's initial state has db1: %v", initial)
	}
	poolView := v1.Grant{Role: v1.RoleViewer, Scope: v1.ScopePool}
	if _, err := a.s.cfg.Access.AddGrant(t.Context(), "olga", poolView); err != nil {
		t.Fatal(err)
	}
	who, _ := until(t, ev, "whoami after the grant", isEvent(v1.EventWhoami))
	var w v1.Whoami
	if json.Unmarshal([]byte(who.data), &w) != nil || w.User != "olga" || len(w.Grants) != 2 {
		t.Errorf("whoami after the grant: %s, want olga with two grants", who.data)
	}
	until(t, ev, "db1 after the grant", vmEvent("db1", ""))
	until(t, ev, "host h1 after the grant", func(e sse) bool {
		return e.event == v1.EventHost && strings.Contains(e.data, `"name":"h1"`)
	})

	if _, err := a.s.cfg.Access.RemoveGrant(t.Context(), "olga", poolView); err != nil {
		t.Fatal(err)
	}
	// The host goes first, then the VMs: wait for the last, look for both.
	last, gone := until(t, ev, "db1 deleted from view", func(e sse) bool { return e.event == v1.EventVMDeleted && e.data == `{"name":"db1"}` })
	gone = append(gone, last)
	if _, ok := findEvent(gone, func(e sse) bool { return e.event == v1.EventHostDeleted && e.data == `{"name":"h1"}` }); !ok {
		t.Errorf("no host-deleted h1 when olga lost pool read: %v", gone)
	}
	a.setState("db1", v1.StateRunning)
	a.setState("web-1", v1.StatePaused)
	_, before := until(t, ev, "web-1 paused", vmEvent("web-1", v1.StatePaused))
	for _, e := range before {
		if strings.Contains(e.data, "db1") || e.event == v1.EventHost {
			t.Errorf("after losing the grant olga got %+v", e)
		}
	}

	toks, err := a.s.cfg.Access.Tokens(t.Context(), "olga")
	if err != nil || len(toks) != 1 {
		t.Fatalf("olga's tokens: %v %v", toks, err)
	}
	if err := a.s.cfg.Access.RevokeToken(t.Context(), authn.Identity{User: "olga"}, toks[0].ID); err != nil {
		t.Fatal(err)
	}
	ended(t, ev, "after the token's revocation")
	if code, b := olga.do("GET", "/api/v1/events", ""); code != 401 {
		t.Errorf("events with a revoked token: %d %s, want 401", code, b)
	}

	// Expiry: nothing in etcd changes, the next ping checks.
	short := a.session("olga")
	var nt v1.NewToken
	if code, b := short.do("POST", "/api/v1/tokens", `{"name":"short","ttlSeconds":3600}`); code != 201 || json.Unmarshal(b, &nt) != nil {
		t.Fatalf("short token: %d %s", code, b)
	}
	sc := &caller{a: a, token: nt.Secret}
	es := openEvents(t, sc, "")
	until(t, es, "synced (short token)", isEvent(v1.EventSynced))
	a.clock.add(2 * time.Hour)
	ended(t, es, "after the token expired")
}

// ended waits for a stream to end, reading (and dropping) what comes
// before; the test fails after a generous deadline.
func ended(t *testing.T, ch <-chan sse, what string) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case _, open := <-ch:
			if !open {
				return
			}
		case <-deadline:
			t.Fatalf("stream still open 60 s %s", what)
		}
	}
}
