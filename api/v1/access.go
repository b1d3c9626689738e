package v1

import "time"

// Roles a grant gives (docs/architecture.md "Who can use the API").
const (
	RoleAdmin    = "admin"    // everything, users and the pool included
	RoleOperator = "operator" // read, lifecycle, snapshots, migrate, console
	RoleViewer   = "viewer"   // read only
	RoleConsole  = "console"  // the serial console (a ticket and the stream), nothing else
)

// Scopes of a grant: the whole pool, or the VMs whose name starts with a
// prefix ("prefix:web-") or that carry a tag ("tag:web").
const (
	ScopePool   = "pool"
	ScopePrefix = "prefix:"
	ScopeTag    = "tag:"
)

// Grant is one role on one scope.
type Grant struct {
	Role  string `json:"role"`
	Scope string `json:"scope"`
}

// User is a local user as the API shows it (never its password hash).
type User struct {
	Name    string    `json:"name"`
	Grants  []Grant   `json:"grants"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// UserRequest creates a user (POST /users).
type UserRequest struct {
	Name     string  `json:"name"`
	Password string  `json:"password"`
	Grants   []Grant `json:"grants,omitempty"`
}

// PasswordRequest sets a user's password (PUT /users/{user}/password).
type PasswordRequest struct {
	Password string `json:"password"`
}

// TokenRequest creates an API token for the caller (POST /tokens). Grants,
// when given, restrict the token further: it never has more rights than
// its owner, whatever it asks for.
type TokenRequest struct {
	Name       string  `json:"name"`
	TTLSeconds int64   `json:"ttlSeconds,omitempty"`
	Grants     []Grant `json:"grants,omitempty"`
}

// Token is an API token without its secret.
type Token struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	User    string    `json:"user"`
	Grants  []Grant   `json:"grants,omitempty"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// NewToken is the answer of POST /tokens: the secret is shown this once.
type NewToken struct {
	Token
	Secret string `json:"secret"`
}

// LoginRequest opens a browser session (POST /login).
type LoginRequest struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// Session is the answer of POST /login (the session itself is the
// HttpOnly cookie): every mutating request made with the cookie must send
// CSRFToken in the X-CSRF-Token header.
type Session struct {
	User      string    `json:"user"`
	CSRFToken string    `json:"csrfToken"`
	Expires   time.Time `json:"expires"`
}

// Whoami says who the caller is and what it may do (GET /whoami).
type Whoami struct {
	Name string `json:"name"`
	// Method is how it authenticated: local (the unix socket),
	// certificate, tokens-file, token or session.
	Method string `json:"method"`
	// User is the local user it acts for ("" for a principal with every
	// right: the unix socket, a pool certificate, a tokens-file token).
	User   string  `json:"user,omitempty"`
	Admin  bool    `json:"admin"`
	Grants []Grant `json:"grants,omitempty"`
	// Limit are the token's own grants, when it has any: its rights are
	// those of Grants that Limit allows too.
	Limit []Grant `json:"limit,omitempty"`
}

// ConsoleTicket opens a VM's console once (POST /vms/{name}/console/ticket):
// GET /vms/{name}/console?ticket=… before Expires, by the same caller.
type ConsoleTicket struct {
	Ticket  string    `json:"ticket"`
	VM      string    `json:"vm"`
	Expires time.Time `json:"expires"`
}

// AuditRecord is one mutating request (GET /audit).
type AuditRecord struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	// User is the caller's name ("" when it did not authenticate) and
	// Method how it authenticated.
	User   string `json:"user"`
	Method string `json:"method,omitempty"`
	// Action is the route: "POST /api/v1/vms/{name}/{action}".
	Action string `json:"action"`
	Path   string `json:"path"`
	// VM is the VM the request was about, when it was about one.
	VM     string `json:"vm,omitempty"`
	Target string `json:"target,omitempty"`
	Source string `json:"source"`
	Status int    `json:"status"`
	Op     string `json:"op,omitempty"`
}
