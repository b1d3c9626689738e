package manager

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/access"
	"hangar/internal/audit"
	"hangar/internal/authn"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

// TestEveryRouteHasARule: the router's routes and the access rule table
// are the same list: a new route without a rule fails here (and is
// refused with 500 at run time).
func TestEveryRouteHasARule(t *testing.T) {
	s := New(Config{})
	seen := map[string]bool{}
	for _, r := range s.routes {
		seen[r] = true
		if _, ok := access.Rules[r]; !ok {
			t.Errorf("route %s has no access rule in access.Rules", r)
		}
	}
	for r := range access.Rules {
		if !seen[r] {
			t.Errorf("access rule for %s, which is no route", r)
		}
	}
	if len(seen) < 60 {
		t.Fatalf("only %d routes", len(seen))
	}
}

// clock is a settable clock for expiry tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// accessServer is the API on a TLS listener that authenticates like the
// daemon's (users' tokens and sessions; nothing else), with users alice
// (admin), vera (viewer), olga (operator on prefix:web-) and tim (operator
// on tag:web), and stopped VMs web-1, db1 and tagged (tag web).
type accessServer struct {
	*testServer
	url   string
	hc    *http.Client
	clock *clock
	audit *audit.Log
}

const testPassword = "correct horse battery"

func newAccessServer(t *testing.T) *accessServer {
	t.Helper()
	ts := newTestServer(t)
	c := &clock{now: time.Now()}
	ts.s.cfg.Access.Now = c.Now
	ts.s.cfg.Logins.Now = c.Now
	ts.s.cfg.Logins.MaxFailures = 3
	ts.s.cfg.Logins.Lockout = time.Minute
	ts.s.cfg.Consoles = hostConsoles{host: "h1", dir: t.TempDir()}
	srv := httptest.NewTLSServer(ts.s.TCP(authn.AnyOf{ts.s.cfg.Access}))
	t.Cleanup(srv.Close)
	a := &accessServer{testServer: ts, url: srv.URL, hc: srv.Client(), clock: c, audit: ts.s.cfg.Audit}
	for _, u := range []v1.UserRequest{
		{Name: "alice", Password: testPassword, Grants: []v1.Grant{{Role: v1.RoleAdmin, Scope: v1.ScopePool}}},
		{Name: "vera", Password: testPassword, Grants: []v1.Grant{{Role: v1.RoleViewer, Scope: v1.ScopePool}}},
		{Name: "olga", Password: testPassword, Grants: []v1.Grant{{Role: v1.RoleOperator, Scope: "prefix:web-"}}},
		{Name: "tim", Password: testPassword, Grants: []v1.Grant{{Role: v1.RoleOperator, Scope: "tag:web"}}},
	} {
		if _, err := ts.s.cfg.Access.AddUser(t.Context(), u); err != nil {
			t.Fatal(err)
		}
	}
	for _, spec := range []v1.VMSpec{
		{Name: "web-1", CPUs: 1, MemoryMiB: 64, Power: v1.PowerStopped, Host: "h1"},
		{Name: "db1", CPUs: 1, MemoryMiB: 64, Power: v1.PowerStopped, Host: "h1"},
		{Name: "tagged", CPUs: 1, MemoryMiB: 64, Power: v1.PowerStopped, Host: "h1", Tags: []string{"web"}},
	} {
		if _, err := ts.st.Put(t.Context(), inventory.VMKey(spec.Name), inventory.Marshal(spec), store.MustNotExist); err != nil {
			t.Fatal(err)
		}
		ts.setState(spec.Name, v1.StateStopped)
	}
	return a
}

// caller sends requests as one principal.
type caller struct {
	a      *accessServer
	token  string
	cookie *http.Cookie
	csrf   string
}

func (a *accessServer) anon() *caller { return &caller{a: a} }

// token logs in as user and makes an API token (with grants, if any).
func (a *accessServer) token(user string, grants ...v1.Grant) *caller {
	a.t.Helper()
	s := a.session(user)
	var nt v1.NewToken
	body, _ := json.Marshal(v1.TokenRequest{Name: "t-" + fmt.Sprint(time.Now().UnixNano()), Grants: grants})
	if code, b := s.do("POST", "/api/v1/tokens", string(body)); code != 201 || json.Unmarshal(b, &nt) != nil {
		a.t.Fatalf("token of %s: %d %s", user, code, b)
	}
	return &caller{a: a, token: nt.Secret}
}

// session logs in as user.
func (a *accessServer) session(user string) *caller {
	a.t.Helper()
	c := a.anon()
	code, b, resp := c.send("POST", "/api/v1/login", fmt.Sprintf(`{"user":%q,"password":%q}`, user, testPassword), nil)
	var sess v1.Session
	if code != 200 || json.Unmarshal(b, &sess) != nil {
		a.t.Fatalf("login %s: %d %s", user, code, b)
	}
	for _, ck := range resp.Cookies() {
		if ck.Name == access.SessionCookie {
			c.cookie = ck
		}
	}
	if c.cookie == nil || !c.cookie.HttpOnly || !c.cookie.Secure || c.cookie.SameSite != http.SameSiteStrictMode || c.cookie.Path != "/" {
		a.t.Fatalf("login %s: session cookie %+v, want HttpOnly, Secure, SameSite=Strict, Path=/", user, c.cookie)
	}
	c.csrf = sess.CSRFToken
	return c
}

func (c *caller) do(method, path, body string, hdr ...string) (int, []byte) {
	c.a.t.Helper()
	code, b, _ := c.send(method, path, body, hdr)
	return code, b
}

func (c *caller) send(method, path, body string, hdr []string) (int, []byte, *http.Response) {
	c.a.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(c.a.t.Context(), method, c.a.url+path, rd)
	if err != nil {
		c.a.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.cookie != nil {
		req.AddCookie(c.cookie)
		if c.csrf != "" && method != "GET" {
			req.Header.Set(access.CSRFHeader, c.csrf)
		}
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := c.a.hc.Do(req)
	if err != nil {
		c.a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp
}

// errCode is the code of an error answer.
func errCode(b []byte) string {
	var er v1.ErrorResponse
	if json.Unmarshal(b, &er) != nil || er.Error == nil {
		return ""
	}
	return er.Error.Code
}

// samplePath fills a route pattern's wildcards.
func samplePath(pattern string) (method, path string) {
	method, path, _ = strings.Cut(pattern, " ")
	r := strings.NewReplacer("{name}", "web-1", "{action}", "start", "{snap}", "s1", "{pool}", "default", "{vol}", "v1",
		"{id}", "0193a4b2-0000-7000-8000-000000000000", "{user}", "vera")
	return method, r.Replace(path)
}

// TestRoutesNeedCredentials: over TCP every route but the public ones
// (login, join) answers 401 JSON to a request without credentials, and to
// one with a bad token or a bad session cookie. The list is the router's.
func TestRoutesNeedCredentials(t *testing.T) {
	a := newAccessServer(t)
	bad := []*caller{a.anon(), {a: a, token: "hgt_0123456789abcdef_" + strings.Repeat("A", 43)},
		{a: a, cookie: &http.Cookie{Name: access.SessionCookie, Value: "hgs_0123456789abcdef_" + strings.Repeat("A", 43)}}}
	n := 0
	for _, route := range a.s.routes {
		if access.Rules[route].Target == access.Public {
			continue
		}
		n++
		method, path := samplePath(route)
		for i, c := range bad {
			code, b, resp := c.send(method, path, "", nil)
			if code != 401 || errCode(b) != v1.CodeUnauthenticated || resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s (caller %d): %d %s, want 401 unauthenticated", route, i, code, b)
			}
			if resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("%s: 401 without security headers: %v", route, resp.Header)
			}
		}
	}
	if n < 60 {
		t.Fatalf("only %d routes", n)
	}
	// Nothing was created by the refused requests.
	if vms, err := a.s.inv.VMList(t.Context()); err != nil || len(vms) != 3 {
		t.Fatalf("vms after refused requests: %d %v", len(vms), err)
	}
}

// TestRoles: a viewer reads but cannot start, stop or open a console; an
// operator scoped to web-* acts on web-1 but not on db1, sees only web-*
// and creates only web-*; an operator scoped to tag web acts on the
// tagged VM.
func TestRoles(t *testing.T) {
	a := newAccessServer(t)
	vera, olga, tim := a.token("vera"), a.token("olga"), a.token("tim")
	for _, p := range []string{"/api/v1/vms/web-1", "/api/v1/vms/db1", "/api/v1/hosts", "/api/v1/vms/web-1/snapshots"} {
		if code, b := vera.do("GET", p, ""); code != 200 {
			t.Errorf("viewer GET %s: %d %s", p, code, b)
		}
	}
	for _, r := range [][2]string{{"POST", "/api/v1/vms/web-1/start"}, {"POST", "/api/v1/vms/web-1/stop"},
		{"POST", "/api/v1/vms/web-1/console/ticket"}, {"GET", "/api/v1/vms/web-1/console"}, {"DELETE", "/api/v1/vms/web-1"},
		{"POST", "/api/v1/users"}, {"GET", "/api/v1/audit"}} {
		if code, b := vera.do(r[0], r[1], ""); code != 403 || errCode(b) != v1.CodePermissionDenied {
			t.Errorf("viewer %s %s: %d %s, want 403", r[0], r[1], code, b)
		}
	}
	// olga: web-* only.
	if code, b := olga.do("POST", "/api/v1/vms/web-1/start", ""); code != 202 {
		t.Errorf("operator of web-* starts web-1: %d %s", code, b)
	}
	for _, r := range [][2]string{{"POST", "/api/v1/vms/db1/start"}, {"DELETE", "/api/v1/vms/db1"}, {"GET", "/api/v1/vms/db1"},
		{"POST", "/api/v1/vms/db1/console/ticket"}, {"GET", "/api/v1/hosts"}, {"POST", "/api/v1/vms/tagged/start"}} {
		if code, b := olga.do(r[0], r[1], ""); code != 403 {
			t.Errorf("operator of web-* %s %s: %d %s, want 403", r[0], r[1], code, b)
		}
	}
	var vms []v1.VM
	if code, b := olga.do("GET", "/api/v1/vms", ""); code != 200 || json.Unmarshal(b, &vms) != nil || len(vms) != 1 || vms[0].Spec.Name != "web-1" {
		t.Errorf("operator of web-* lists %d %s, want web-1 alone", code, b)
	}
	var ops []v1.Operation
	if code, b := olga.do("GET", "/api/v1/operations", ""); code != 200 || json.Unmarshal(b, &ops) != nil || len(ops) != 1 || ops[0].Target != "web-1" {
		t.Errorf("operator of web-* lists operations %d %s, want web-1's start", code, b)
	} else if code, b := olga.do("GET", "/api/v1/operations/"+ops[0].ID, ""); code != 200 {
		t.Errorf("operator of web-* follows its operation: %d %s", code, b)
	} else if code, b := tim.do("GET", "/api/v1/operations/"+ops[0].ID, ""); code != 403 {
		t.Errorf("operator of tag web reads web-1's operation: %d %s, want 403", code, b)
	}
	if code, b := olga.do("POST", "/api/v1/vms", `{"name":"db2","memoryMiB":64}`); code != 403 {
		t.Errorf("operator of web-* creates db2: %d %s, want 403", code, b)
	}
	if code, b := olga.do("POST", "/api/v1/vms", `{"name":"web-2","memoryMiB":64}`); code != 202 {
		t.Errorf("operator of web-* creates web-2: %d %s", code, b)
	}
	if code, b := olga.do("POST", "/api/v1/vms/web-1/clone", `{"name":"db3"}`); code != 403 {
		t.Errorf("operator of web-* clones web-1 to db3: %d %s, want 403", code, b)
	}
	// tim: tag web.
	if code, b := tim.do("POST", "/api/v1/vms/tagged/start", ""); code != 202 {
		t.Errorf("operator of tag web starts tagged: %d %s", code, b)
	}
	if code, b := tim.do("POST", "/api/v1/vms/web-1/start", ""); code != 403 {
		t.Errorf("operator of tag web starts web-1: %d %s, want 403", code, b)
	}
	if code, b := tim.do("POST", "/api/v1/vms", `{"name":"x1","memoryMiB":64,"tags":["web"]}`); code != 202 {
		t.Errorf("operator of tag web creates a VM tagged web: %d %s", code, b)
	}
	// Bad grants name their field.
	alice := a.token("alice")
	if code, b := alice.do("POST", "/api/v1/users/vera/grants", `{"role":"root","scope":"pool"}`); code != 400 || !strings.Contains(string(b), `"field": "role"`) {
		t.Errorf("grant of an unknown role: %d %s", code, b)
	}
	if code, b := alice.do("DELETE", "/api/v1/users/vera/grants?role=viewer&scope=vm:x", ""); code != 400 || !strings.Contains(string(b), `"field": "scope"`) {
		t.Errorf("revoke with a bad scope: %d %s", code, b)
	}
	if code, b := alice.do("POST", "/api/v1/users", `{"name":"Bad Name","password":"long enough"}`); code != 400 || !strings.Contains(string(b), `"field": "name"`) {
		t.Errorf("user with a bad name: %d %s", code, b)
	}
	if code, b := alice.do("POST", "/api/v1/users", `{"name":"bob","password":"short"}`); code != 400 || !strings.Contains(string(b), `"field": "password"`) {
		t.Errorf("user with a short password: %d %s", code, b)
	}
	if code, b := alice.do("POST", "/api/v1/users", `{"name":"vera","password":"long enough"}`); code != 409 {
		t.Errorf("user vera again: %d %s", code, b)
	}
	// A viewer may change its own password, not another's.
	if code, b := vera.do("PUT", "/api/v1/users/vera/password", `{"password":"another long one"}`); code != 204 {
		t.Errorf("viewer sets its password: %d %s", code, b)
	}
	if code, b := vera.do("PUT", "/api/v1/users/olga/password", `{"password":"another long one"}`); code != 403 {
		t.Errorf("viewer sets olga's password: %d %s, want 403", code, b)
	}
}

// TestTokens: a token never exceeds its owner — not at creation, not when
// the owner loses a grant later — and a revoked or expired token is 401.
func TestTokens(t *testing.T) {
	a := newAccessServer(t)
	vera := a.session("vera")
	if code, b := vera.do("POST", "/api/v1/tokens", `{"name":"more","grants":[{"role":"admin","scope":"pool"}]}`); code != 403 {
		t.Errorf("viewer's token asking for admin: %d %s, want 403", code, b)
	}
	// olga's token limited to viewing: it cannot start what olga can.
	if code, b := a.session("olga").do("POST", "/api/v1/tokens", `{"name":"pool","grants":[{"role":"viewer","scope":"pool"}]}`); code != 403 {
		t.Errorf("web-* operator's token asking to view the pool: %d %s, want 403", code, b)
	}
	lim := a.token("olga", v1.Grant{Role: v1.RoleViewer, Scope: "prefix:web-"})
	if code, b := lim.do("GET", "/api/v1/vms/web-1", ""); code != 200 {
		t.Errorf("olga's viewer token reads web-1: %d %s", code, b)
	}
	if code, b := lim.do("GET", "/api/v1/vms/db1", ""); code != 403 {
		t.Errorf("olga's viewer token reads db1: %d %s, want 403", code, b)
	}
	if code, b := lim.do("POST", "/api/v1/vms/web-1/start", ""); code != 403 {
		t.Errorf("olga's viewer token starts web-1: %d %s, want 403", code, b)
	}
	// A full token of olga's loses what olga loses.
	full := a.token("olga")
	if code, b := full.do("POST", "/api/v1/vms/web-1/stop", `{"force":true}`); code != 202 {
		t.Fatalf("olga's token stops web-1: %d %s", code, b)
	}
	admin := a.token("alice")
	if code, b := admin.do("DELETE", "/api/v1/users/olga/grants?role=operator&scope=prefix:web-", ""); code != 200 {
		t.Fatalf("revoke olga's grant: %d %s", code, b)
	}
	if code, b := full.do("POST", "/api/v1/vms/web-1/stop", `{"force":true}`); code != 403 {
		t.Errorf("olga's token after olga lost the grant: %d %s, want 403", code, b)
	}
	// Revoked.
	var ts []v1.Token
	if code, b := admin.do("GET", "/api/v1/tokens?all=true", ""); code != 200 || json.Unmarshal(b, &ts) != nil || len(ts) != 3 {
		t.Fatalf("all tokens: %d %s", code, b)
	}
	if strings.Contains(fmt.Sprint(ts), "hgt_") {
		t.Errorf("token list shows secrets: %v", ts)
	}
	var veraTokens []v1.Token
	if code, b := vera.do("GET", "/api/v1/tokens", ""); code != 200 || json.Unmarshal(b, &veraTokens) != nil || len(veraTokens) != 0 {
		t.Errorf("vera's tokens: %d %s, want none", code, b)
	}
	if code, b := vera.do("DELETE", "/api/v1/tokens/"+ts[0].ID, ""); code != 404 {
		t.Errorf("vera revokes olga's token: %d %s, want 404", code, b)
	}
	v := a.token("vera")
	if code, _ := v.do("GET", "/api/v1/whoami", ""); code != 200 {
		t.Fatal("fresh token refused")
	}
	var mine []v1.Token
	_, b := v.do("GET", "/api/v1/tokens", "")
	_ = json.Unmarshal(b, &mine)
	if len(mine) != 1 {
		t.Fatalf("vera's tokens: %s", b)
	}
	if code, b := v.do("DELETE", "/api/v1/tokens/"+mine[0].ID, ""); code != 204 {
		t.Fatalf("revoke: %d %s", code, b)
	}
	if code, b := v.do("GET", "/api/v1/whoami", ""); code != 401 || !strings.Contains(string(b), "revoked") {
		t.Errorf("revoked token: %d %s, want 401 saying revoked", code, b)
	}
	// Expired.
	var short v1.NewToken
	if code, b := vera.do("POST", "/api/v1/tokens", `{"name":"short","ttlSeconds":60}`); code != 201 || json.Unmarshal(b, &short) != nil {
		t.Fatalf("short token: %d %s", code, b)
	}
	sc := &caller{a: a, token: short.Secret}
	if code, _ := sc.do("GET", "/api/v1/whoami", ""); code != 200 {
		t.Fatal("short token refused before it expired")
	}
	a.clock.add(61 * time.Second)
	if code, b := sc.do("GET", "/api/v1/whoami", ""); code != 401 || !strings.Contains(string(b), "expired") {
		t.Errorf("expired token: %d %s, want 401 saying expired", code, b)
	}
	// A deleted user's tokens die with it.
	if code, b := admin.do("DELETE", "/api/v1/users/olga", ""); code != 204 {
		t.Fatalf("delete olga: %d %s", code, b)
	}
	if code, b := lim.do("GET", "/api/v1/whoami", ""); code != 401 {
		t.Errorf("deleted user's token: %d %s, want 401", code, b)
	}
}

// openConsole sends the console upgrade with a ticket.
func (c *caller) openConsole(name, ticket string) (int, *bufio.Reader, *tls.Conn) {
	c.a.t.Helper()
	u, _ := url.Parse(c.a.url)
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		c.a.t.Fatal(err)
	}
	c.a.t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "GET /api/v1/vms/%s/console?ticket=%s HTTP/1.1\r\nHost: hangar\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: hangar-console\r\n\r\n", name, url.QueryEscape(ticket), c.token)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.a.t.Fatal(err)
	}
	return resp.StatusCode, br, conn
}

// TestConsoleTicket: over TCP the console opens with a ticket of the same
// caller for the same VM, once; replayed, expired, another's or another
// VM's ticket is refused.
func TestConsoleTicket(t *testing.T) {
	a := newAccessServer(t)
	olga, other := a.token("olga"), a.token("alice")
	ticket := func(c *caller, name string) string {
		t.Helper()
		var tk v1.ConsoleTicket
		if code, b := c.do("POST", "/api/v1/vms/"+name+"/console/ticket", ""); code != 201 || json.Unmarshal(b, &tk) != nil || tk.VM != name {
			t.Fatalf("ticket: %d %s", code, b)
		}
		return tk.Ticket
	}
	if code, _, _ := olga.openConsole("web-1", ""); code != 401 {
		t.Errorf("console without a ticket: %d, want 401", code)
	}
	tk := ticket(olga, "web-1")
	code, br, conn := olga.openConsole("web-1", tk)
	if code != http.StatusSwitchingProtocols {
		t.Fatalf("console with a ticket: %d", code)
	}
	fmt.Fprintf(conn, "hello\n")
	if line, err := br.ReadString('\n'); err != nil || line != "h1:hello\n" {
		t.Fatalf("console answered %q %v", line, err)
	}
	if code, _, _ := olga.openConsole("web-1", tk); code != 401 {
		t.Errorf("replayed ticket: %d, want 401", code)
	}
	if code, _, _ := other.openConsole("web-1", ticket(olga, "web-1")); code != 401 {
		t.Errorf("olga's ticket used by alice: %d, want 401", code)
	}
	tk2 := ticket(other, "tagged")
	if code, _, _ := other.openConsole("db1", tk2); code != 401 {
		t.Errorf("ticket of another VM: %d, want 401", code)
	}
	tk3 := ticket(olga, "web-1")
	a.clock.add(access.TicketTTL + time.Second)
	if code, _, _ := olga.openConsole("web-1", tk3); code != 401 {
		t.Errorf("expired ticket: %d, want 401", code)
	}
}

// TestSessionCSRF: a session cookie reads; a mutating request with the
// cookie needs the session's CSRF token (a cross-site form has none), and
// a cross-site browser request is refused even with it; logout ends it.
func TestSessionCSRF(t *testing.T) {
	a := newAccessServer(t)
	s := a.session("olga")
	if code, b := s.do("GET", "/api/v1/vms/web-1", ""); code != 200 {
		t.Fatalf("GET with the session: %d %s", code, b)
	}
	noCSRF := &caller{a: a, cookie: s.cookie}
	if code, b := noCSRF.do("POST", "/api/v1/vms/web-1/start", ""); code != 403 || !strings.Contains(string(b), access.CSRFHeader) {
		t.Errorf("POST with the cookie, without the CSRF token: %d %s, want 403", code, b)
	}
	wrong := &caller{a: a, cookie: s.cookie, csrf: "not-the-token"}
	if code, b := wrong.do("POST", "/api/v1/vms/web-1/start", ""); code != 403 {
		t.Errorf("POST with a wrong CSRF token: %d %s, want 403", code, b)
	}
	if code, b := s.do("POST", "/api/v1/vms/web-1/start", "", "Sec-Fetch-Site", "cross-site"); code != 403 {
		t.Errorf("cross-site POST with the CSRF token: %d %s, want 403", code, b)
	}
	if code, b := s.do("POST", "/api/v1/vms/web-1/start", "", "Origin", "https://evil.example"); code != 403 {
		t.Errorf("POST from another origin: %d %s, want 403", code, b)
	}
	if ops, _, _, _ := a.s.inv.Ops(t.Context()); len(ops) != 0 {
		t.Fatalf("refused POSTs made operations: %v", ops)
	}
	if code, b := s.do("POST", "/api/v1/vms/web-1/start", ""); code != 202 {
		t.Errorf("POST with the cookie and the CSRF token: %d %s", code, b)
	}
	if code, b := s.do("POST", "/api/v1/logout", ""); code != 204 {
		t.Fatalf("logout: %d %s", code, b)
	}
	if code, b := s.do("GET", "/api/v1/vms/web-1", ""); code != 401 {
		t.Errorf("GET after logout: %d %s, want 401", code, b)
	}
}

// TestLoginLockout: after 3 failed logins (the test's limit) of one user
// from one address, even the right password is 429 with Retry-After until
// the lockout ends; unknown users fail like wrong passwords.
func TestLoginLockout(t *testing.T) {
	a := newAccessServer(t)
	c := a.anon()
	for i := 0; i < 3; i++ {
		if code, b := c.do("POST", "/api/v1/login", `{"user":"vera","password":"wrong password"}`); code != 401 || !strings.Contains(string(b), "user or password not accepted") {
			t.Fatalf("failed login %d: %d %s", i, code, b)
		}
	}
	code, b, resp := c.send("POST", "/api/v1/login", fmt.Sprintf(`{"user":"vera","password":%q}`, testPassword), nil)
	if code != 429 || errCode(b) != v1.CodeTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("login after 3 failures: %d %s Retry-After %q, want 429", code, b, resp.Header.Get("Retry-After"))
	}
	// Another user is not locked.
	if code, b := c.do("POST", "/api/v1/login", fmt.Sprintf(`{"user":"olga","password":%q}`, testPassword)); code != 200 {
		t.Errorf("olga's login while vera's is locked: %d %s", code, b)
	}
	if code, b := c.do("POST", "/api/v1/login", `{"user":"nobody","password":"whatever it is"}`); code != 401 || !strings.Contains(string(b), "user or password not accepted") {
		t.Errorf("unknown user: %d %s", code, b)
	}
	a.clock.add(time.Minute + time.Second)
	if code, b := c.do("POST", "/api/v1/login", fmt.Sprintf(`{"user":"vera","password":%q}`, testPassword)); code != 200 {
		t.Errorf("login after the lockout: %d %s", code, b)
	}
}

// TestAudit: mutating requests are recorded with who, what, the VM, the
// source and the status (refused ones too); GET /audit filters by VM and
// user; the retention prunes the oldest.
func TestAudit(t *testing.T) {
	a := newAccessServer(t)
	olga, alice := a.token("olga"), a.token("alice")
	olga.do("POST", "/api/v1/vms/web-1/start", "")
	olga.do("POST", "/api/v1/vms/db1/start", "")
	a.anon().do("DELETE", "/api/v1/vms/db1", "")
	// The unix socket is recorded as root, local.
	a.do("POST", "/api/v1/vms/db1/start", "", "")
	var recs []v1.AuditRecord
	if code, b := alice.do("GET", "/api/v1/audit?vm=db1", ""); code != 200 || json.Unmarshal(b, &recs) != nil {
		t.Fatalf("audit: %d %s", code, b)
	}
	var got []string
	for _, r := range recs {
		got = append(got, fmt.Sprintf("%s %s %s %d %t", r.User, r.Action, r.VM, r.Status, r.Source != ""))
	}
	want := []string{
		"root POST /api/v1/vms/{name}/{action} db1 202 true",
		" DELETE /api/v1/vms/{name} db1 401 true",
		"olga POST /api/v1/vms/{name}/{action} db1 403 true",
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit of db1:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(recs) == 3 && (recs[0].Source != "local" || !strings.HasPrefix(recs[2].Source, "127.0.0.1:") || recs[0].Op == "") {
		t.Errorf("sources %q %q, op %q", recs[0].Source, recs[2].Source, recs[0].Op)
	}
	// olga's: her login (under the name it gave), her token, two starts.
	if code, b := alice.do("GET", "/api/v1/audit?user=olga", ""); code != 200 || json.Unmarshal(b, &recs) != nil || len(recs) != 4 {
		t.Errorf("olga's records: %d %s, want 4", code, b)
	}
	for _, r := range recs {
		if r.User != "olga" {
			t.Errorf("user filter: %+v", r)
		}
	}
	// Retention: at most 5 are kept.
	a.audit.MaxRecords = 5
	for i := 0; i < 8; i++ {
		olga.do("POST", "/api/v1/vms/web-1/reboot", "")
	}
	kvs, _, err := a.st.List(t.Context(), audit.Prefix)
	if err != nil || len(kvs) > 5 {
		t.Errorf("audit records kept: %d %v, want at most 5", len(kvs), err)
	}
}
