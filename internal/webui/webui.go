// Package webui serves the browser UI: static assets embedded with go:embed,
// plain JS modules, no inline script or style (the manager's CSP allows none).
package webui

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the UI: index.html at / and the assets under /ui/.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	files := http.FileServerFS(sub)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, sub, "index.html")
	})
	assets := http.StripPrefix("/ui/", files)
	mux.HandleFunc("GET /ui/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ui/console.html" {
			w.Header().Set("Content-Security-Policy", ConsoleCSP)
		}
		assets.ServeHTTP(w, r)
	})
	return mux
}

// ConsoleCSP is the console page's policy: the manager's strict one but
// for styles. xterm.js's DOM renderer writes <style> elements (cell
// sizes, theme colours) that carry no nonce, so this page alone allows
// inline styles; scripts stay 'self' only, as everywhere.
const ConsoleCSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
