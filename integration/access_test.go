package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/access"
)

const accessPassword = "integration password 1"

func mustCLI(t *testing.T, r cliResult, what string) cliResult {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", what, r.code, r.stdout, r.stderr)
	}
	return r
}

// TestAccessOverTCP: a real hangar serve on a TLS loopback listener. Root
// on the unix socket adds users; over TCP every route but login and join
// is 401 without credentials; hangar login stores a token the CLI then
// uses; a viewer cannot stop a VM or open its console; an operator of
// web-* cannot touch db1 but talks to web-1's guest through its console
// with a single-use ticket (a replay is refused); a token cannot exceed
// its owner; revoked and expired tokens are 401; a cookie POST without
// the CSRF token is refused; logins lock after 3 failures; the audit log
// has it all.
func TestAccessOverTCP(t *testing.T) {
	needQEMU(t)
	tf := newAPITLS(t)
	s := newServerArgs(t, "", "--listen", tf.addr, "--tls-cert", tf.serverCert, "--tls-key", tf.serverKey,
		"--login-max-failures", "3", "--login-lockout", "10m")
	url := "https://" + tf.addr
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg := filepath.Join(t.TempDir(), "cli", "cli.json")
	env := []string{"HANGAR_CONFIG=" + cfg, "HANGAR_SOCKET=", "HANGAR_SERVER=", "HANGAR_URL=", "HANGAR_TOKEN=", "HANGAR_CA="}

	// Root on the socket is an admin: it adds the users.
	for _, u := range [][]string{{"alice", "--role", "admin"}, {"vera", "--role", "viewer"}, {"olga", "--role", "operator", "--scope", "prefix:web-"}} {
		mustCLI(t, runHangarWith(t, env, accessPassword+"\n", append([]string{"--socket", s.socket, "user", "add", "--password-stdin"}, u...)...), "user add "+u[0])
	}
	if out := mustCLI(t, runHangarWith(t, env, "", "--socket", s.socket, "user", "list"), "user list").stdout; !strings.Contains(out, "operator@prefix:web-") {
		t.Fatalf("user list:\n%s", out)
	}

	// Without credentials every route is 401 (the rules are the router's:
	// TestEveryRouteHasARule).
	anon, err := client.NewTLS(url, client.TLSOptions{CAFile: tf.serverCA})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for route, rule := range access.Rules {
		if rule.Target == access.Public {
			continue
		}
		method, path, _ := strings.Cut(route, " ")
		path = strings.NewReplacer("{name}", "web-1", "{action}", "start", "{snap}", "s1", "{pool}", "default", "{vol}", "v1",
			"{id}", "0193a4b2-0000-7000-8000-000000000000", "{user}", "vera").Replace(path)
		code, hdr, body, err := anon.RawRequest(ctx, method, path, http.Header{}, nil)
		if err != nil || code != 401 || errCodeOf(body) != v1.CodeUnauthenticated {
			t.Errorf("%s without credentials: %d %s %v, want 401", route, code, body, err)
		}
		if hdr.Get("Content-Security-Policy") == "" || !strings.Contains(hdr.Get("Content-Security-Policy"), "frame-ancestors 'none'") ||
			hdr.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: security headers %v", route, hdr)
		}
		n++
	}
	if n < 60 {
		t.Fatalf("only %d routes tried", n)
	}

	// The VMs: web-1 a running guest, db1 a stopped one.
	s.createGuest("web-1", nil)
	if op, err := s.c.CreateVM(ctx, v1.VMSpec{Name: "db1", CPUs: 1, MemoryMiB: 64}, false, time.Minute); err != nil {
		t.Fatal(err)
	} else if _, err := s.c.Wait(ctx, op, nil); err != nil {
		t.Fatal(err)
	}

	// hangar login keeps a token; --server uses it.
	r := mustCLI(t, runHangarWith(t, env, "olga\n"+accessPassword+"\n", "login", url, "--ca", tf.serverCA), "login")
	if st, err := os.Stat(cfg); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("CLI config %v %v, want mode 0600", st, err)
	}
	if b, _ := os.ReadFile(cfg); !strings.Contains(string(b), "hgt_") {
		t.Fatalf("CLI config holds no token:\n%s\n%s", b, r.stdout)
	}
	out := mustCLI(t, runHangarWith(t, env, "", "--server", url, "vm", "list"), "vm list as olga").stdout
	if !strings.Contains(out, "web-1") || strings.Contains(out, "db1") {
		t.Errorf("olga's vm list shows web-* alone:\n%s", out)
	}
	// Her event stream over TLS: web-1 and nothing of db1 or the hosts.
	out = mustCLI(t, runHangarWith(t, env, "", "--server", url, "events", "--until-synced"), "events as olga").stdout
	if !strings.Contains(out, `"name":"web-1"`) || strings.Contains(out, "db1") || strings.Contains(out, "\nhost ") || !strings.Contains(out, "synced ") {
		t.Errorf("olga's event stream shows web-* alone, no hosts:\n%s", out)
	}
	if r := runHangarWith(t, env, "", "--server", url, "vm", "start", "db1"); r.code == 0 || !strings.Contains(r.stderr, "may not") {
		t.Errorf("olga starts db1: exit %d %s", r.code, r.stderr)
	}
	if out := mustCLI(t, runHangarWith(t, env, "", "--server", url, "whoami"), "whoami").stdout; !strings.Contains(out, "olga") {
		t.Errorf("whoami: %s", out)
	}

	tokenOf := func(user string) *client.Client {
		t.Helper()
		nt, err := anon.LoginToken(ctx, user, accessPassword, "it-"+user, time.Hour)
		if err != nil {
			t.Fatalf("login %s: %v", user, err)
		}
		c, err := client.NewTLS(url, client.TLSOptions{CAFile: tf.serverCA, Token: nt.Secret})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	vera, olga := tokenOf("vera"), tokenOf("olga")

	// The viewer reads, and may not stop or open a console.
	if _, err := vera.VM(ctx, "web-1"); err != nil {
		t.Errorf("viewer reads web-1: %v", err)
	}
	if _, err := vera.Action(ctx, "web-1", "stop", nil, 0); !isCode(err, v1.CodePermissionDenied) {
		t.Errorf("viewer stops web-1: %v, want permission_denied", err)
	}
	if _, err := vera.Console(ctx, "web-1"); !isCode(err, v1.CodePermissionDenied) {
		t.Errorf("viewer opens web-1's console: %v, want permission_denied", err)
	}
	if _, err := vera.CreateToken(ctx, v1.TokenRequest{Name: "more", Grants: []v1.Grant{{Role: v1.RoleAdmin, Scope: v1.ScopePool}}}); !isCode(err, v1.CodePermissionDenied) {
		t.Errorf("viewer's token asking for admin: %v, want permission_denied", err)
	}
	// The operator of web-* cannot touch db1.
	for _, verb := range []string{"start", "stop"} {
		if _, err := olga.Action(ctx, "db1", verb, nil, 0); !isCode(err, v1.CodePermissionDenied) {
			t.Errorf("operator of web-* %s db1: %v, want permission_denied", verb, err)
		}
	}
	if _, err := olga.VM(ctx, "db1"); !isCode(err, v1.CodePermissionDenied) {
		t.Errorf("operator of web-* reads db1: %v", err)
	}

	// The console with a ticket: the guest's shell answers.
	s.waitReady("web-1", 0)
	conn, err := olga.Console(ctx, "web-1")
	if err != nil {
		t.Fatalf("olga's console of web-1: %v", err)
	}
	shellAnswers(t, conn, "tcp-console")
	conn.Close()
	// A ticket opens the console once.
	tk, err := olga.ConsoleTicket(ctx, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	upgrade := http.Header{"Upgrade": {"hangar-console"}}
	if code, _, b, err := olga.RawRequest(ctx, "GET", "/api/v1/vms/web-1/console?ticket="+tk.Ticket, upgrade, nil); code != 101 {
		t.Fatalf("console with a fresh ticket: %d %s %v", code, b, err)
	}
	if code, _, b, err := olga.RawRequest(ctx, "GET", "/api/v1/vms/web-1/console?ticket="+tk.Ticket, upgrade, nil); code != 401 || !strings.Contains(string(b), "ticket") {
		t.Errorf("replayed ticket: %d %s %v, want 401", code, b, err)
	}
	if code, _, b, _ := olga.RawRequest(ctx, "GET", "/api/v1/vms/web-1/console", upgrade, nil); code != 401 {
		t.Errorf("console without a ticket: %d %s, want 401", code, b)
	}

	// Revoked and expired tokens.
	short, err := olga.CreateToken(ctx, v1.TokenRequest{Name: "short", TTLSeconds: 2})
	if err != nil {
		t.Fatal(err)
	}
	sc, _ := client.NewTLS(url, client.TLSOptions{CAFile: tf.serverCA, Token: short.Secret})
	if _, err := sc.Whoami(ctx); err != nil {
		t.Fatalf("fresh short token: %v", err)
	}
	time.Sleep(2500 * time.Millisecond)
	if _, err := sc.Whoami(ctx); !isCode(err, v1.CodeUnauthenticated) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired token: %v, want unauthenticated, expired", err)
	}
	ts, err := vera.Tokens(ctx, false)
	if err != nil || len(ts) != 1 {
		t.Fatalf("vera's tokens: %v %v", ts, err)
	}
	if err := vera.RevokeToken(ctx, ts[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := vera.Whoami(ctx); !isCode(err, v1.CodeUnauthenticated) {
		t.Errorf("revoked token: %v, want unauthenticated", err)
	}

	// A session: a POST with the cookie but without the CSRF token is refused.
	code, hdr, body, err := anon.RawRequest(ctx, "POST", "/api/v1/login", http.Header{"Content-Type": {"application/json"}},
		[]byte(`{"user":"olga","password":"`+accessPassword+`"}`))
	var sess v1.Session
	if err != nil || code != 200 || json.Unmarshal(body, &sess) != nil {
		t.Fatalf("login: %d %s %v", code, body, err)
	}
	cookie := (&http.Response{Header: hdr}).Cookies()
	if len(cookie) != 1 || !cookie[0].HttpOnly || !cookie[0].Secure || cookie[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie %v", hdr.Values("Set-Cookie"))
	}
	withCookie := http.Header{"Cookie": {cookie[0].Name + "=" + cookie[0].Value}}
	if code, _, b, _ := anon.RawRequest(ctx, "POST", "/api/v1/vms/web-1/reboot", withCookie, nil); code != 403 || !strings.Contains(string(b), access.CSRFHeader) {
		t.Errorf("cookie POST without the CSRF token: %d %s, want 403", code, b)
	}
	withCookie.Set("Origin", "https://evil.example")
	withCookie.Set(access.CSRFHeader, sess.CSRFToken)
	if code, _, b, _ := anon.RawRequest(ctx, "POST", "/api/v1/vms/web-1/reboot", withCookie, nil); code != 403 {
		t.Errorf("cross-site cookie POST: %d %s, want 403", code, b)
	}

	// Three failed logins lock vera's out from here.
	for i := 0; i < 3; i++ {
		if _, err := anon.LoginToken(ctx, "vera", "wrong password!", "x", time.Hour); !isCode(err, v1.CodeUnauthenticated) {
			t.Fatalf("failed login %d: %v", i, err)
		}
	}
	if _, err := anon.LoginToken(ctx, "vera", accessPassword, "x", time.Hour); !isCode(err, v1.CodeTooManyRequests) {
		t.Errorf("login after 3 failures: %v, want too_many_requests", err)
	}

	// The audit log: olga's refused start of db1 and her ticketed console.
	admin := tokenOf("alice")
	recs, err := admin.Audit(ctx, "db1", "olga", 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		if r.Action == "POST /api/v1/vms/{name}/{action}" && r.Status == 403 && strings.HasPrefix(r.Source, "127.0.0.1:") {
			found = true
		}
	}
	if !found {
		t.Errorf("audit of db1 by olga has no refused start: %+v", recs)
	}
	out = mustCLI(t, runHangarWith(t, env, "", "--socket", s.socket, "audit", "list", "--vm", "web-1"), "audit list").stdout
	if !strings.Contains(out, "console/ticket") || !strings.Contains(out, "olga") {
		t.Errorf("audit list --vm web-1:\n%s", out)
	}
	mustCLI(t, runHangarWith(t, env, "", "logout", url), "logout")
	if r := runHangarWith(t, env, "", "--server", url, "vm", "list"); r.code == 0 {
		t.Errorf("vm list after logout worked:\n%s", r.stdout)
	}
}

func errCodeOf(b []byte) string {
	var er v1.ErrorResponse
	if json.Unmarshal(b, &er) != nil || er.Error == nil {
		return ""
	}
	return er.Error.Code
}
