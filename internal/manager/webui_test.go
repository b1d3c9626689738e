package manager

import (
	"strings"
	"testing"
)

// The web UI's page and assets load without credentials (the login form is
// among them) and carry the strict CSP.
func TestWebUIServedAnonymously(t *testing.T) {
	a := newAccessServer(t)
	for path, want := range map[string]string{"/": "/ui/app.js", "/ui/app.js": "/api/v1"} {
		code, b, resp := a.anon().send("GET", path, "", nil)
		if code != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d, body lacks %q", path, code, want)
		}
		if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("GET %s: CSP %q", path, resp.Header.Get("Content-Security-Policy"))
		}
	}
	if code, _, _ := a.anon().send("GET", "/api/v1/hosts", "", nil); code != 401 {
		t.Errorf("GET /api/v1/hosts anonymously: %d, want 401", code)
	}
}
