package manager

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"path"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/authn"
)

// The HTTP edge: what every request goes through before its handler.
//   - a path that is not clean (//, /./, /../) is refused with 400, never
//     redirected;
//   - over TCP the caller authenticates (401), but on the public routes;
//   - no route: 404, wrong method: 405 with Allow — JSON like every answer;
//   - cross-site browser requests that change things: 403;
//   - the route's access rule (access.Rules) and, for session cookies,
//     the CSRF token: 403;
//   - a request body must be of the route's media type (415) and not larger
//     than the route's limit (413);
//   - security headers on every answer, one access-log line per request
//     and an audit record per mutating one.

// defaultBodyLimit bounds the JSON arguments of actions.
const defaultBodyLimit = 64 << 10

// bodyLimits by route pattern; -1 is no limit (streamed uploads).
var bodyLimits = map[string]int64{
	"POST /api/v1/vms":                            1 << 20, // cloud-init seeds up to 64 KiB, JSON-escaped
	"POST /api/v1/hosts/{name}/check-sources":     1 << 20, // a VM spec, like a create
	"PUT /api/v1/pools/{pool}/volumes/{vol}/data": -1,
}

// mediaTypes a route's request body may have; application/json otherwise.
var mediaTypes = map[string][]string{
	"PUT /api/v1/pools/{pool}/volumes/{vol}/data": {"application/octet-stream"},
	"PATCH /api/v1/vms/{name}":                    {"application/json", "application/merge-patch+json"},
}

// noBody are routes that take no request body: a body there would be
// ignored, and a caller who sent {"force":true} to DELETE /vms/x would
// think it counted. (POST /vms/{name}/{action} takes one only for stop.)
var noBody = map[string]bool{
	"DELETE /api/v1/vms/{name}":                       true,
	"POST /api/v1/vms/{name}/suspend":                 true,
	"POST /api/v1/vms/{name}/snapshots/{snap}/revert": true,
	"DELETE /api/v1/vms/{name}/snapshots/{snap}":      true,
	"DELETE /api/v1/templates/{name}":                 true,
	"DELETE /api/v1/operations/{id}":                  true,
	"DELETE /api/v1/pools/{pool}/volumes/{vol}":       true,
	"POST /api/v1/pools/{pool}/volumes/{vol}/flatten": true,
	"DELETE /api/v1/hosts/{name}":                     true,
}

// takesNoBody reports whether the request's route takes no body.
func takesNoBody(pattern string, r *http.Request) bool {
	if pattern == "POST /api/v1/vms/{name}/{action}" {
		p := r.URL.EscapedPath()
		return p[strings.LastIndexByte(p, '/')+1:] != "stop"
	}
	return noBody[pattern]
}

// checkNoBody refuses a body (other than nothing, {} or null) on a route
// that takes none.
func checkNoBody(r *http.Request) error {
	if r.ContentLength == 0 {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, 65))
	if err != nil {
		return &v1.Error{Code: v1.CodeInvalidArgument, Field: "body", Message: "body: " + err.Error()}
	}
	switch string(bytes.TrimSpace(b)) {
	case "", "{}", "null":
		r.Body = http.NoBody
		return nil
	}
	return &v1.Error{Code: v1.CodeInvalidArgument, Field: "body",
		Message: fmt.Sprintf("body: %s %s takes no body (options are query parameters, like ?force=true)", r.Method, truncate(r.URL.EscapedPath(), 200))}
}

func bodyLimit(pattern string) int64 {
	if n, ok := bodyLimits[pattern]; ok {
		return n
	}
	return defaultBodyLimit
}

// cleanPath is path.Clean that keeps a trailing slash.
func cleanPath(p string) string {
	if p == "" || p[0] != '/' {
		return ""
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

// ServeHTTP checks a request at the edge, serves it and logs it. It is
// the unix socket's handler: its requests are root's (authn.Local).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.logged(w, r, http.HandlerFunc(s.serveRecorded))
}

// remote marks a request that came over TCP: it must authenticate (auth,
// or an identity that a wrapper put in its context), but for the public
// routes.
type remote struct{ auth authn.Authenticator }

type remoteKey struct{}

// TCP is the handler of the TLS listener: every request authenticates
// with auth, but for the routes whose access rule is Public (the login,
// the join); a request without an accepted credential is 401.
func (s *Server) TCP(auth authn.Authenticator) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.logged(w, r.WithContext(context.WithValue(r.Context(), remoteKey{}, remote{auth: auth})), http.HandlerFunc(s.serveRecorded))
	})
}

// Logged returns the server wrapped by wrap (authentication) with the
// access log outside: a request that wrap refuses gets its line too. Its
// requests are remote: wrap must put their identity in the context.
func (s *Server) Logged(wrap func(http.Handler) http.Handler) http.Handler {
	inner := wrap(http.HandlerFunc(s.serveRecorded))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.logged(w, r.WithContext(context.WithValue(r.Context(), remoteKey{}, remote{})), inner)
	})
}

// serveRecorded serves a request and notes on the recorder (when w is
// one) what the access log and the audit want to know from inside.
func (s *Server) serveRecorded(w http.ResponseWriter, r *http.Request) {
	route, r := s.serve(w, r)
	if rec, ok := w.(*recorder); ok {
		rec.route, rec.pathID = route, r.PathValue("id")
		if id, ok := authn.FromContext(r.Context()); ok {
			rec.id = id
			if id.Method != authn.MethodLocal {
				rec.client = id.Name
			}
		}
		rec.note, _ = r.Context().Value(noteKey{}).(*auditNote)
	}
}

// logged runs h and writes one access-log line.
func (s *Server) logged(w http.ResponseWriter, r *http.Request, h http.Handler) {
	start := time.Now()
	securityHeaders(w.Header(), r)
	rw := &recorder{ResponseWriter: w}
	h.ServeHTTP(rw, r)
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	s.audit(r, rw)
	level := slog.LevelInfo
	if rw.route == "GET /healthz" || rw.route == "GET /metrics" {
		level = slog.LevelDebug
	}
	attrs := []any{"method", truncate(r.Method, 20), "path", truncate(r.URL.EscapedPath(), 512), "status", rw.status,
		"dur", time.Since(start).Round(time.Microsecond), "bytes", rw.bytes}
	if rw.route != "" {
		attrs = append(attrs, "route", rw.route)
	}
	if op := opID(rw.Header().Get("Location"), rw.pathID); op != "" {
		attrs = append(attrs, "op", op)
	}
	if rw.client != "" {
		attrs = append(attrs, "client", rw.client)
	}
	s.cfg.Log.Log(r.Context(), level, "http", attrs...)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// opID is the operation a request made (its Location) or asked about.
func opID(location, pathID string) string {
	if id, ok := strings.CutPrefix(location, "/api/v1/operations/"); ok {
		return id
	}
	return pathID
}

// serve answers the request and returns the route pattern it matched and
// the request as its handler saw it (with the caller's identity).
func (s *Server) serve(w http.ResponseWriter, r *http.Request) (string, *http.Request) {
	if ep := r.URL.EscapedPath(); cleanPath(ep) != ep {
		writeErr(w, &v1.Error{Code: v1.CodeInvalidArgument, Field: "path",
			Message: fmt.Sprintf("path: %q is not a clean path (no //, . or .. elements)", truncate(ep, 200))})
		return "", r
	}
	if err := s.checkForwarded(r); err != nil {
		writeErr(w, err)
		return "", r
	}
	h, pattern := s.mux.Handler(r)
	r, err := s.authenticate(r, pattern)
	if err != nil {
		authn.WriteUnauthenticated(w, err)
		return pattern, r
	}
	if pattern == "" {
		s.noRoute(w, r, h)
		return "", r
	}
	if err := s.csrf.Check(r); err != nil {
		writeErr(w, &v1.Error{Code: v1.CodePermissionDenied, Message: "cross-site request refused: " + err.Error()})
		return pattern, r
	}
	if err := s.authorize(r, pattern); err != nil {
		writeErr(w, err)
		return pattern, r
	}
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		if err := checkMediaType(r, pattern); err != nil {
			writeErr(w, err)
			return pattern, r
		}
		if n := bodyLimit(pattern); n >= 0 {
			if r.ContentLength > n {
				writeErr(w, tooLarge(n))
				return pattern, r
			}
			r.Body = http.MaxBytesReader(w, r.Body, n)
		}
		if takesNoBody(pattern, r) {
			if err := checkNoBody(r); err != nil {
				writeErr(w, err)
				return pattern, r
			}
		}
	}
	s.mux.ServeHTTP(w, r) // sets r's path values
	return pattern, r
}

func tooLarge(n int64) error {
	return &v1.Error{Code: v1.CodeTooLarge, Field: "body", Message: fmt.Sprintf("body: larger than this request's limit of %d bytes", n)}
}

// checkMediaType: a request that has a body, or says what it has, must
// send one of the route's media types. (An HTML form or a text/plain
// fetch from another site is not one.)
func checkMediaType(r *http.Request, pattern string) error {
	ct := r.Header.Get("Content-Type")
	if ct == "" && r.ContentLength == 0 {
		return nil
	}
	want := mediaTypes[pattern]
	if want == nil {
		want = []string{"application/json"}
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil {
		for _, w := range want {
			if mt == w {
				return nil
			}
		}
	}
	return &v1.Error{Code: v1.CodeUnsupportedMediaType, Field: "Content-Type",
		Message: fmt.Sprintf("Content-Type: want %s, got %q", strings.Join(want, " or "), truncate(ct, 100))}
}

// noRoute answers a request no route takes: 405 with Allow when the path
// has routes for other methods, else 404. The mux's own handler works out
// the allowed methods; its plain-text answer is not sent.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request, h http.Handler) {
	probe := &headerProbe{h: http.Header{}}
	h.ServeHTTP(probe, r)
	if probe.status == http.StatusMethodNotAllowed {
		allow := probe.h.Get("Allow")
		w.Header().Set("Allow", allow)
		writeErr(w, &v1.Error{Code: v1.CodeMethodNotAllowed,
			Message: fmt.Sprintf("method %s is not allowed on %s (allowed: %s)", truncate(r.Method, 20), truncate(r.URL.EscapedPath(), 200), allow)})
		return
	}
	writeErr(w, &v1.Error{Code: v1.CodeNotFound, Message: fmt.Sprintf("no route %s %s", truncate(r.Method, 20), truncate(r.URL.EscapedPath(), 200))})
}

// headerProbe is a ResponseWriter that keeps the status and headers and
// drops the body.
type headerProbe struct {
	h      http.Header
	status int
}

func (p *headerProbe) Header() http.Header         { return p.h }
func (p *headerProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *headerProbe) WriteHeader(code int)        { p.status = code }

// recorder keeps the status and size of an answer for the access log; it
// passes hijacking through (consoles) and flushing.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	// set from inside (serveRecorded)
	route, pathID, client string
	id                    authn.Identity
	note                  *auditNote
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	r.status = http.StatusSwitchingProtocols
	return hj.Hijack()
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
