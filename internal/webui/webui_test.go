package webui

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandlerServesPageAndAssets(t *testing.T) {
	h := Handler()
	for path, want := range map[string]string{"/": "<title>Hangar</title>", "/ui/app.js": "X-CSRF-Token", "/ui/style.css": ".bar"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), want) {
			t.Errorf("GET %s: %d, body lacks %q", path, rec.Code, want)
		}
	}
	// No inline script or style: the manager's CSP forbids them.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if b := rec.Body.String(); strings.Contains(b, "<script>") || strings.Contains(b, "style=") || strings.Contains(b, "onclick") {
		t.Errorf("index.html has inline script or style")
	}
}
