package pool_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/webui/webuitest"
)

const uiPassword = "web ui password 1"

// TestWebUIMigrate: in a headless Chromium, an admin opens a guest's page
// on h1's web UI, migrates it to h2 with the form and watches the
// operation's progress bar until it succeeds; the guest runs on h2 after.
// The browser runs in this namespace and reaches h1's listener through a
// loopback relay into the lab.
func TestWebUIMigrate(t *testing.T) {
	webuitest.Chromium(t)
	p := sharedPool(t)
	if !p.Joined {
		t.Skip("the hosts are not one pool: no migration")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	if _, err := p.API(t, "h1").AddUser(ctx, v1.UserRequest{Name: "ui-admin", Password: uiPassword,
		Grants: []v1.Grant{{Role: v1.RoleAdmin, Scope: v1.ScopePool}}}); err != nil {
		t.Fatal(err)
	}
	url := relay(ctx, t, p, listenAddr(p.Host(t, "h1")))
	const name = "uimig"
	p.BootGuest(t, "h1", name, nil)

	b := webuitest.New(t, url)
	b.Login("ui-admin", uiPassword)
	b.Page("#/vm/"+name, "#migrate-form")
	b.WaitJS("h2 offered", 2*time.Minute, `[...document.querySelectorAll('#migrate-to option')].some(o => o.value === 'h2')`)
	b.Shot("before")
	b.Submit(`#migrate-form`, map[string]string{"to": "h2"})
	// The bar of the VM's migrate operation, as the page shows it.
	const bar = `(() => { const r = [...document.querySelectorAll('#vm-ops tr[data-op]')].find(tr => tr.firstChild.textContent === 'migrate');
		return r ? r.dataset.state + ' ' + r.querySelector('progress').value : ''; })()`
	var seen []string
	shot := false
	deadline := time.Now().Add(10 * time.Minute)
	for {
		v := webuitest.Eval[string](b, "progress", bar)
		if v != "" && (len(seen) == 0 || seen[len(seen)-1] != v) {
			seen = append(seen, v)
			if strings.HasPrefix(v, "running") && !shot {
				b.Shot("migrating")
				shot = true
			}
		}
		if strings.HasPrefix(v, "succeeded") || strings.HasPrefix(v, "failed") || strings.HasPrefix(v, "cancelled") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the migration did not end in the page; seen %q", seen)
		}
		time.Sleep(200 * time.Millisecond)
	}
	b.Shot("after")
	t.Logf("progress bar as the page showed it: %q", seen)
	if last := seen[len(seen)-1]; last != "succeeded 1" {
		t.Fatalf("migration ended %q in the page", last)
	}
	// Moved: a running value between empty and full (the page reads running
	// operations every second without events; a migration of this guest
	// takes several).
	moved := false
	for _, v := range seen {
		var f float64
		if _, err := fmt.Sscanf(v, "running %g", &f); err == nil && f > 0 && f < 1 {
			moved = true
		}
	}
	if !moved {
		t.Errorf("the progress bar never moved: %q", seen)
	}
	p.WaitVM(t, "h1", name, "h2", 2*time.Minute, v1.StateRunning)
}

// relay serves https://127.0.0.1:PORT in this namespace as addr in the
// lab (reached through the client namespace) and returns the URL.
func relay(ctx context.Context, t *testing.T, p *Pool, addr string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	d := p.Client.Dialer()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					t.Logf("relay to %s: %v", addr, err)
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return "https://" + l.Addr().String()
}
