package manager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/access"
	"hangar/internal/audit"
	"hangar/internal/authn"
	"hangar/internal/hostapi"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// Access control at the edge (docs/architecture.md "Who can use the
// API"): authenticate (TCP), check the route's rule (access.Rules), and
// record every mutating request (audit).

func (s *Server) accessRoutes() {
	s.route("POST /api/v1/login", s.login)
	s.route("POST /api/v1/logout", s.logout)
	s.route("GET /api/v1/whoami", s.whoami)
	s.route("GET /api/v1/users", s.listUsers)
	s.route("POST /api/v1/users", s.addUser)
	s.route("GET /api/v1/users/{user}", s.getUser)
	s.route("DELETE /api/v1/users/{user}", s.deleteUser)
	s.route("PUT /api/v1/users/{user}/password", s.setPassword)
	s.route("POST /api/v1/users/{user}/grants", s.addGrant)
	s.route("DELETE /api/v1/users/{user}/grants", s.removeGrant)
	s.route("GET /api/v1/tokens", s.listTokens)
	s.route("POST /api/v1/tokens", s.createToken)
	s.route("DELETE /api/v1/tokens/{id}", s.revokeToken)
	s.route("POST /api/v1/vms/{name}/console/ticket", s.consoleTicket)
	s.route("GET /api/v1/audit", s.listAudit)
}

// authenticate puts the caller's identity in the request's context: root
// on the unix socket; over TCP the identity a wrapper set or the one the
// listener's authenticator accepts. A public route goes on without one.
func (s *Server) authenticate(r *http.Request, pattern string) (*http.Request, error) {
	r = r.WithContext(context.WithValue(r.Context(), noteKey{}, &auditNote{}))
	rem, isRemote := r.Context().Value(remoteKey{}).(remote)
	if !isRemote {
		return r.WithContext(authn.WithIdentity(r.Context(), authn.Local)), nil
	}
	if _, ok := authn.FromContext(r.Context()); ok {
		return r, nil
	}
	if rule, ok := access.Rules[pattern]; ok && rule.Target == access.Public {
		return r, nil
	}
	if rem.auth == nil {
		return r, authn.ErrNoCredentials
	}
	id, err := rem.auth.Authenticate(r)
	if err != nil {
		return r, err
	}
	return r.WithContext(authn.WithIdentity(r.Context(), id)), nil
}

// reauthenticate checks again, now, the credential of a request that
// passed authenticate: a long answer (the event stream) asks after the
// access records changed. renewable is false for an identity that no
// record backs (root, a certificate, the tokens file, a wrapper's): it
// stays as it was.
func (s *Server) reauthenticate(r *http.Request) (id authn.Identity, renewable bool, err error) {
	id, _ = identity(r.Context())
	rem, isRemote := r.Context().Value(remoteKey{}).(remote)
	if !isRemote || rem.auth == nil || id.Full || id.User == "" {
		return id, false, nil
	}
	id, err = rem.auth.Authenticate(r)
	return id, true, err
}

// identity is the caller of a request that passed authenticate.
func identity(ctx context.Context) (authn.Identity, bool) { return authn.FromContext(ctx) }

// pathValue is the path's value of a {key} of pattern, read before the
// mux has set the request's path values.
func pathValue(pattern string, r *http.Request, key string) string {
	_, p, _ := strings.Cut(pattern, " ")
	ps, rs := strings.Split(p, "/"), strings.Split(r.URL.EscapedPath(), "/")
	if len(ps) != len(rs) {
		return ""
	}
	for i, seg := range ps {
		if seg == "{"+key+"}" {
			v, err := url.PathUnescape(rs[i])
			if err != nil {
				return ""
			}
			return v
		}
	}
	return ""
}

// denied is the 403 of a caller without the permission a route needs.
func denied(id authn.Identity, rule access.Rule, what string) error {
	return &v1.Error{Code: v1.CodePermissionDenied,
		Message: fmt.Sprintf("%s %q may not do this: it needs %s on %s", id.Method, id.Name, rule.Perm, what)}
}

// authorize applies the route's access rule to the caller.
func (s *Server) authorize(r *http.Request, pattern string) error {
	rule, known := access.Rules[pattern]
	if known && rule.Target == access.Public {
		return nil
	}
	id, ok := identity(r.Context())
	if !ok {
		return authn.ErrNoCredentials
	}
	if !known {
		// A route without a rule (TestEveryRouteHasARule fails) serves
		// only those who may do everything.
		if id.Full {
			return nil
		}
		return fmt.Errorf("route %s has no access rule", pattern)
	}
	if err := access.CheckCSRF(id, r); err != nil {
		return err
	}
	if id.Full {
		return nil
	}
	ctx := r.Context()
	switch rule.Target {
	case access.Self:
		return nil
	case access.Pool:
		if !access.Can(id, rule.Perm, nil) {
			return denied(id, rule, "the pool")
		}
	case access.Any:
		if !access.CanSomewhere(id, rule.Perm) {
			return denied(id, rule, "some scope")
		}
	case access.User:
		if u := pathValue(pattern, r, "user"); u == "" || u != id.User {
			if !access.Can(id, rule.Perm, nil) {
				return denied(id, rule, "the pool (or be user "+strconv.Quote(u)+")")
			}
		}
	case access.VM:
		name := pathValue(pattern, r, "name")
		ref, err := s.vmRef(ctx, name)
		if err != nil {
			return err
		}
		if !access.Can(id, rule.Perm, &ref) {
			return denied(id, rule, fmt.Sprintf("vm %q", name))
		}
	case access.Op:
		ref, what, err := s.opRef(ctx, pathValue(pattern, r, "id"))
		if err != nil {
			return err
		}
		if !access.Can(id, rule.Perm, ref) {
			return denied(id, rule, what)
		}
	default:
		return fmt.Errorf("route %s: unknown access target %d", pattern, rule.Target)
	}
	return nil
}

// vmRef is what scopes see of VM name: its name and tags (a VM that does
// not exist has none; the handler answers 404 when the name is covered).
func (s *Server) vmRef(ctx context.Context, name string) (access.VMRef, error) {
	ref := access.VMRef{Name: name}
	if vm.ValidateName("name", name) != nil {
		return ref, nil
	}
	spec, _, err := s.inv.Spec(ctx, name)
	switch {
	case err == nil:
		ref.Tags = spec.Tags
	case !isNotFound(err):
		return ref, err
	}
	return ref, nil
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

// opRef is what an operation is about for access: its VM, else the pool.
// An operation that does not exist is the pool's (only pool readers learn
// that it does not).
func (s *Server) opRef(ctx context.Context, id string) (*access.VMRef, string, error) {
	if validOpID(id) != nil {
		return nil, "the pool", nil
	}
	op, _, err := s.inv.Op(ctx, id)
	if err != nil {
		if isNotFound(err) {
			return nil, "the pool", nil
		}
		return nil, "", err
	}
	if vm.OpTarget(op.Kind) != vm.TargetVM {
		return nil, "the pool", nil
	}
	ref, err := s.vmRef(ctx, op.Target)
	return &ref, fmt.Sprintf("vm %q", op.Target), err
}

// mayCreate refuses a new VM the caller may not make (its name and tags
// outside the caller's operate scopes).
func mayCreate(ctx context.Context, spec v1.VMSpec) error {
	id, ok := identity(ctx)
	if !ok {
		return authn.ErrNoCredentials
	}
	if !access.Can(id, access.PermOperate, &access.VMRef{Name: spec.Name, Tags: spec.Tags}) {
		return &v1.Error{Code: v1.CodePermissionDenied, Field: "name",
			Message: fmt.Sprintf("name: %s %q may not create vm %q: it needs operate on a scope that takes in its name or one of its tags", id.Method, id.Name, spec.Name)}
	}
	return nil
}

// mayRead reports whether the caller may see VM ref (lists).
func mayRead(ctx context.Context, ref access.VMRef) bool {
	id, ok := identity(ctx)
	return ok && access.Can(id, access.PermRead, &ref)
}

// mayReadPool reports whether the caller may see the pool's things.
func mayReadPool(ctx context.Context) bool {
	id, ok := identity(ctx)
	return ok && access.Can(id, access.PermRead, nil)
}

// securityHeaderNames are the headers securityHeaders sets.
var securityHeaderNames = []string{"Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
	"Strict-Transport-Security", "Cache-Control"}

// securityHeaders go on every answer: no script but the server's own, no
// framing, no sniffing, no referrer; HSTS over TLS.
func securityHeaders(h http.Header, r *http.Request) {
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	if r.TLS != nil {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if strings.HasPrefix(r.URL.Path, "/api/") {
		h.Set("Cache-Control", "no-store")
	}
}

// auditNote is what a handler adds to its request's audit record.
type auditNote struct {
	vm   string
	user string // the login's user, before it authenticated
}

type noteKey struct{}

// noteVM names the VM a request is about in its audit record.
func noteVM(ctx context.Context, name string) {
	if n, ok := ctx.Value(noteKey{}).(*auditNote); ok && n.vm == "" {
		n.vm = name
	}
}

// source is where a request came from: the client's address, or "local".
func source(r *http.Request) string {
	if _, ok := r.Context().Value(remoteKey{}).(remote); !ok {
		return "local"
	}
	return r.RemoteAddr
}

// audit records a mutating request: who, what, the target, when, from
// where and the answer's status. A forwarded request is recorded by the
// host that received it from the client.
func (s *Server) audit(r *http.Request, rw *recorder) {
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
	default:
		return
	}
	if s.cfg.Audit == nil || (len(r.Header.Values(hostapi.Header)) > 0 && rw.status != http.StatusUnauthorized) {
		return
	}
	rec := v1.AuditRecord{User: rw.id.Name, Method: rw.id.Method, Action: rw.route, Path: truncate(r.URL.EscapedPath(), 512),
		Source: source(r), Status: rw.status, Op: opID(rw.Header().Get("Location"), "")}
	if rec.Action == "" {
		rec.Action = truncate(r.Method, 20) + " (no route)"
	}
	if n := rw.note; n != nil {
		rec.VM = n.vm
		if rec.User == "" {
			rec.User = n.user
		}
	}
	if rec.VM == "" && strings.Contains(rw.route, " /api/v1/vms/{name}") {
		rec.VM = pathValue(rw.route, r, "name")
	}
	rec.Target = auditTarget(r, rw.route)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	if err := s.cfg.Audit.Record(ctx, rec); err != nil {
		s.cfg.Log.Error("audit record not written", "err", err, "action", rec.Action, "user", rec.User, "status", rec.Status)
	}
}

// auditTarget names what a request acted on from its path values.
func auditTarget(r *http.Request, route string) string {
	var parts []string
	for _, k := range []string{"name", "snap", "pool", "vol", "id", "user", "action"} {
		if strings.Contains(route, "{"+k+"}") {
			parts = append(parts, k+"="+pathValue(route, r, k))
		}
	}
	return strings.Join(parts, " ")
}

// login checks a user's password and opens a session: an HttpOnly,
// Secure, SameSite=Strict cookie and the CSRF token in the answer. Failed
// logins of one user from one address are locked after a few (429).
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var req v1.LoginRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	if n, ok := r.Context().Value(noteKey{}).(*auditNote); ok {
		n.user = truncate(req.User, 64)
	}
	src, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		src = r.RemoteAddr
	}
	if err := s.cfg.Logins.Check(r.Context(), req.User, src); err != nil {
		var le *access.LockedError
		if errors.As(err, &le) {
			w.Header().Set("Retry-After", strconv.Itoa(int(le.RetryAfter.Seconds())+1))
			writeErr(w, le.APIError())
			return
		}
		writeErr(w, err)
		return
	}
	u, err := s.cfg.Access.CheckLogin(r.Context(), req.User, req.Password)
	if errors.Is(err, access.ErrBadLogin) {
		if ferr := s.cfg.Logins.Fail(r.Context(), req.User, src); ferr != nil {
			writeErr(w, ferr) // a failure that cannot be counted is no answer to give
			return
		}
		authn.WriteUnauthenticated(w, err)
		return
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	if err := s.cfg.Logins.Succeed(r.Context(), req.User, src); err != nil {
		writeErr(w, err)
		return
	}
	cookie, sess, err := s.cfg.Access.NewSession(r.Context(), u.Name)
	if err != nil {
		writeErr(w, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: access.SessionCookie, Value: cookie, Path: "/", Expires: sess.Expires,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	writeJSON(w, http.StatusOK, sess)
}

// logout ends the caller's session (and clears its cookie).
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	id, _ := identity(r.Context())
	if id.SessionID != "" {
		if err := s.cfg.Access.EndSession(r.Context(), id.SessionID); err != nil {
			writeErr(w, err)
			return
		}
	}
	http.SetCookie(w, &http.Cookie{Name: access.SessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	id, _ := identity(r.Context())
	writeJSON(w, http.StatusOK, whoamiOf(id))
}

// whoamiOf says who id is and what it may do.
func whoamiOf(id authn.Identity) v1.Whoami {
	return v1.Whoami{Name: id.Name, Method: id.Method, User: id.User, Admin: access.Can(id, access.PermAdmin, nil),
		Grants: id.Grants, Limit: id.Limit}
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) {
	us, err := s.cfg.Access.Users(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, us)
}

func (s *Server) addUser(w http.ResponseWriter, r *http.Request) {
	var req v1.UserRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	u, err := s.cfg.Access.AddUser(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	s.cfg.Log.Info("user added", "user", u.Name)
	writeJSON(w, http.StatusCreated, u)
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request) {
	u, err := s.cfg.Access.User(r.Context(), r.PathValue("user"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request) {
	if err := s.cfg.Access.DeleteUser(r.Context(), r.PathValue("user")); err != nil {
		writeErr(w, err)
		return
	}
	s.cfg.Log.Info("user deleted", "user", r.PathValue("user"))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setPassword(w http.ResponseWriter, r *http.Request) {
	var req v1.PasswordRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	if err := s.cfg.Access.SetPassword(r.Context(), r.PathValue("user"), req.Password); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) addGrant(w http.ResponseWriter, r *http.Request) {
	var g v1.Grant
	if err := decode(r, &g); err != nil {
		writeErr(w, err)
		return
	}
	u, err := s.cfg.Access.AddGrant(r.Context(), r.PathValue("user"), g)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

// removeGrant takes ?role=&scope= (a DELETE has no body).
func (s *Server) removeGrant(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	g := v1.Grant{Role: q.Get("role"), Scope: q.Get("scope")}
	if g.Scope == "" {
		g.Scope = v1.ScopePool
	}
	u, err := s.cfg.Access.RemoveGrant(r.Context(), r.PathValue("user"), g)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

// listTokens lists the caller's tokens; ?all=true everyone's, for pool
// admins.
func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	id, _ := identity(r.Context())
	all, err := boolParam(r.URL.Query().Get("all"), "all")
	if err != nil {
		writeErr(w, err)
		return
	}
	user := id.User
	switch {
	case all && !access.Can(id, access.PermAdmin, nil):
		writeErr(w, &v1.Error{Code: v1.CodePermissionDenied, Field: "all", Message: "all: everyone's tokens are for pool admins"})
		return
	case all:
		user = ""
	case user == "":
		writeJSON(w, http.StatusOK, []v1.Token{}) // a principal without a user has none
		return
	}
	ts, err := s.cfg.Access.Tokens(r.Context(), user)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ts)
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req v1.TokenRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	id, _ := identity(r.Context())
	t, err := s.cfg.Access.CreateToken(r.Context(), id, req)
	if err != nil {
		writeErr(w, err)
		return
	}
	s.cfg.Log.Info("api token created", "user", t.User, "token", t.Name, "id", t.ID, "expires", t.Expires)
	writeJSON(w, http.StatusCreated, t)
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	id, _ := identity(r.Context())
	if err := s.cfg.Access.RevokeToken(r.Context(), id, r.PathValue("id")); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// consoleTicket issues a single-use ticket for the VM's console, bound to
// the caller.
func (s *Server) consoleTicket(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := vm.ValidateName("name", name); err != nil {
		writeErr(w, err)
		return
	}
	if _, _, err := s.inv.Spec(r.Context(), name); err != nil {
		writeErr(w, err)
		return
	}
	id, _ := identity(r.Context())
	t, err := s.cfg.Access.NewTicket(r.Context(), id, name)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, t)
}

// TicketHeader may carry a console ticket instead of ?ticket=.
const TicketHeader = "Hangar-Console-Ticket"

// checkConsoleTicket: a console opened over TCP needs a ticket of the
// caller for this VM; the unix socket and a request another host of the
// pool forwarded (it checked the ticket) do not.
func (s *Server) checkConsoleTicket(r *http.Request, name string) error {
	id, _ := identity(r.Context())
	if id.Method == authn.MethodLocal || len(r.Header.Values(hostapi.Header)) > 0 {
		return nil
	}
	t := r.URL.Query().Get("ticket")
	if t == "" {
		t = r.Header.Get(TicketHeader)
	}
	return s.cfg.Access.UseTicket(r.Context(), id, name, t)
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := audit.Filter{VM: q.Get("vm"), User: q.Get("user")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > audit.MaxLimit {
			writeErr(w, invalidArg("limit", "%q: want 1-%d", v, audit.MaxLimit))
			return
		}
		f.Limit = n
	}
	recs, err := s.cfg.Audit.List(r.Context(), f)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, recs)
}
