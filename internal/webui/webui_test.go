package webui

import (
	"io/fs"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandlerServesPageAndAssets(t *testing.T) {
	h := Handler()
	for path, want := range map[string]string{"/": "<title>Hangar</title>", "/ui/app.js": "X-CSRF-Token", "/ui/style.css": ".bar",
		"/ui/console.html": "/ui/console.js", "/ui/console.js": "WebSocket", "/ui/vendor/xterm.mjs": "Terminal",
		"/ui/vendor/addon-fit.mjs": "FitAddon", "/ui/vendor/uPlot.esm.js": "uPlot", "/ui/vendor/xterm.css": ".xterm"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), want) {
			t.Errorf("GET %s: %d, body lacks %q", path, rec.Code, want)
		}
		// Module scripts load only with a JavaScript type (nosniff).
		if ct := rec.Header().Get("Content-Type"); (strings.HasSuffix(path, ".js") || strings.HasSuffix(path, ".mjs")) && !strings.HasPrefix(ct, "text/javascript") {
			t.Errorf("GET %s: Content-Type %q", path, ct)
		}
	}
	// Only the console page relaxes the policy, and only for styles.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/ui/console.html", nil))
	if csp := rec.Header().Get("Content-Security-Policy"); csp != ConsoleCSP || !strings.Contains(csp, "script-src 'self';") {
		t.Errorf("console page CSP %q", csp)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/ui/app.js", nil))
	if csp := rec.Header().Get("Content-Security-Policy"); csp != "" {
		t.Errorf("app.js CSP %q, want the edge's (none set here)", csp)
	}
	// No inline script, style or handler in our own pages and modules, and
	// nothing from another origin.
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(p, "/vendor/") {
			return err
		}
		b, _ := fs.ReadFile(static, p)
		s := string(b)
		if strings.Contains(s, "<script>") || strings.Contains(s, "style=") || strings.Contains(s, "onclick=") ||
			strings.Contains(s, "<style") || strings.Contains(s, "innerHTML") || strings.Contains(s, "http://") || strings.Contains(s, "https://") {
			t.Errorf("%s has inline script or style, innerHTML or a third-party URL", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
