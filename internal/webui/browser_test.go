package webui

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/webui/webuitest"
)

// fakeAPI answers the few routes the UI reads, as the manager will once
// the events, usage and history routes exist (docs: the API contract): its
// lists never change, so what changes on the page came by an event.
type fakeAPI struct {
	push chan v1.VM     // sent on the event stream
	who  chan v1.Whoami // sent on the event stream: the caller's rights changed
	end  chan struct{}  // ends the session: the stream closes, every route says 401
	out  atomic.Bool
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	write := func(v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	host := v1.Host{Name: "h1", CPUs: 4, MemoryMiB: 8192, AllocatedMemoryMiB: 256, AllocatedCPUs: 1, VMs: 1, Alive: true}
	alert := map[string]any{"id": "host-down/h9", "severity": "critical", "kind": "host-down", "target": "h9",
		"message": "host h9 is dead", "since": time.Now()}
	vm := v1.VM{Spec: v1.VMSpec{Name: "web-1", CPUs: 1, MemoryMiB: 256}, Status: v1.VMStatus{State: v1.StateStopped, Host: "h1"}}
	if f.out.Load() && r.URL.Path != "/api/v1/login" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":{"code":"unauthenticated","message":"session ended"}}`)
		return
	}
	switch r.URL.Path {
	case "/api/v1/login":
		write(v1.Session{User: "alice", CSRFToken: "csrf"})
	case "/api/v1/whoami":
		write(v1.Whoami{Name: "alice", Method: "session", User: "alice", Admin: true})
	case "/api/v1/hosts":
		write([]v1.Host{host})
	case "/api/v1/vms":
		write([]v1.VM{vm})
	case "/api/v1/vms/web-1":
		write(vm)
	case "/api/v1/operations", "/api/v1/vms/web-1/snapshots":
		write([]any{})
	case "/api/v1/alerts":
		write(map[string]any{"alerts": []map[string]any{alert}})
	case "/api/v1/vms/web-1/usage":
		write(map[string]any{"cpuSeconds": 12.5, "cpuCores": 0.25, "memoryBytes": 200 << 20, "at": time.Now()})
	case "/api/v1/vms/web-1/history":
		now := time.Now().Unix()
		var samples []map[string]any
		for i := range 30 {
			samples = append(samples, map[string]any{"t": now - int64(10*(30-i)), "cpuCores": float64(i%5) / 5, "memoryBytes": (100 + i) << 20,
				"diskReadBps": 1000 * i, "diskWriteBps": 500 * i, "netRxBps": 100 * i, "netTxBps": 50 * i})
		}
		write(map[string]any{"interval": 10, "samples": samples})
	case "/api/v1/events":
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		send := func(event string, v any) {
			b, _ := json.Marshal(v)
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
			fl.Flush()
		}
		send("host", host)
		send("vm", vm)
		send("alert", alert) // the stream starts with everything: what it leaves out is gone
		send("synced", v1.Synced{Full: true})
		for {
			select {
			case v := <-f.push:
				send("vm", v)
			case w := <-f.who:
				send("whoami", w)
			case <-f.end:
				f.out.Store(true)
				return
			case <-r.Context().Done():
				return
			}
		}
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"error":{"code":"not_found","message":"no route %s"}}`, r.URL.Path)
	}
}

// TestUILiveAndCharts: in Chromium, against a fake API that has the
// contract's events, usage and history routes, the overview shows the
// alerts, a VM's page its usage and four uPlot charts, and a vm event on
// the stream turns the VM running with no reload and no poll (the fake's
// lists never change). Rights taken away (a whoami event) turn the VM's
// actions read only. When the session ends (the stream closes and the
// reconnect gets 401) the page goes to the login form by itself.
func TestUILiveAndCharts(t *testing.T) {
	webuitest.Chromium(t)
	f := &fakeAPI{push: make(chan v1.VM, 1), who: make(chan v1.Whoami, 1), end: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle("/api/", f)
	mux.Handle("/", Handler())
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	b := webuitest.New(t, srv.URL)
	b.Login("alice", "pw")
	b.WaitJS("live", time.Minute, `document.querySelector('#live').textContent === 'live'`)
	if got := b.Text(`#alerts li[data-alert="host-down/h9"]`); got == "" {
		t.Errorf("the overview shows no alert")
	}
	b.Page("#/vm/web-1", "#vm-name")
	b.WaitJS("charts", time.Minute, `document.querySelectorAll('#charts:not([hidden]) canvas').length >= 4`)
	b.WaitJS("usage", time.Minute, `!!document.querySelector('#usage')`)
	b.Shot("vm")
	if got := b.Text("#vm-state"); got != "stopped" {
		t.Fatalf("state %q, want stopped", got)
	}
	f.push <- v1.VM{Spec: v1.VMSpec{Name: "web-1", CPUs: 1, MemoryMiB: 256}, Status: v1.VMStatus{State: v1.StateRunning, Host: "h1"}}
	b.WaitJS("running by the event", time.Minute, `document.querySelector('#vm-state')?.textContent === 'running'`)
	// Rights taken away while the page is open: its buttons go with them.
	if !webuitest.Eval[bool](b, "actions", `!!document.querySelector('#vm-actions')`) {
		t.Fatal("an admin's VM page shows no actions")
	}
	f.who <- v1.Whoami{Name: "alice", Method: "session", User: "alice", Grants: []v1.Grant{{Role: v1.RoleViewer, Scope: v1.ScopePool}}}
	b.WaitJS("read only after the whoami event", time.Minute, `!!document.querySelector('#read-only') && !document.querySelector('#vm-actions')`)
	close(f.end)
	b.WaitJS("the login form after the session ended", time.Minute, `!!document.querySelector('#login input[name=user]')`)
}
