package access

// Target says what a route's permission is checked on.
type Target int

// Targets of rules.
const (
	// Public routes need no authentication: the login (its password) and
	// the join (its join token).
	Public Target = iota + 1
	// Self routes need only an authenticated caller: they act on the
	// caller's own things (its tokens, its session) or tell nothing.
	Self
	// Pool: Perm on the pool scope.
	Pool
	// VM: Perm on the VM the path's {name} names.
	VM
	// Op: Perm on the operation's target (the path's {id}): its VM, else
	// the pool.
	Op
	// Any: Perm on some scope; the handler shows only what the caller may
	// see (lists) or checks the VM it creates (its name and tags).
	Any
	// User: the path's {user} is the caller's own user, or Perm on the
	// pool.
	User
)

// Rule is the access rule of one route.
type Rule struct {
	Perm   Perm
	Target Target
}

// Rules is the access rule of every route, by the router's pattern. A
// route without a rule fails TestEveryRouteHasARule and serves only full
// identities (root on the socket, certificates): a user gets 500.
var Rules = map[string]Rule{
	// VMs
	"GET /api/v1/vms":                                 {PermRead, Any},
	"POST /api/v1/vms":                                {PermOperate, Any},
	"GET /api/v1/vms/{name}":                          {PermRead, VM},
	"PATCH /api/v1/vms/{name}":                        {PermOperate, VM},
	"DELETE /api/v1/vms/{name}":                       {PermOperate, VM},
	"POST /api/v1/vms/{name}/{action}":                {PermOperate, VM},
	"GET /api/v1/vms/{name}/console":                  {PermConsole, VM},
	"POST /api/v1/vms/{name}/console/ticket":          {PermConsole, VM},
	"GET /api/v1/vms/{name}/console/log":              {PermConsole, VM},
	"POST /api/v1/vms/{name}/template":                {PermOperate, Pool}, // a template is the pool's
	"POST /api/v1/vms/{name}/clone":                   {PermOperate, VM},   // and the clone's name (createAll)
	"POST /api/v1/vms/{name}/suspend":                 {PermOperate, VM},
	"POST /api/v1/vms/{name}/media":                   {PermOperate, VM},
	"POST /api/v1/vms/{name}/migrate":                 {PermOperate, VM},
	"POST /api/v1/vms/{name}/resize":                  {PermOperate, VM},
	"GET /api/v1/vms/{name}/snapshots":                {PermRead, VM},
	"GET /api/v1/vms/{name}/usage":                    {PermRead, VM},
	"GET /api/v1/vms/{name}/history":                  {PermRead, VM},
	"POST /api/v1/vms/{name}/snapshots":               {PermOperate, VM},
	"POST /api/v1/vms/{name}/snapshots/{snap}/revert": {PermOperate, VM},
	"DELETE /api/v1/vms/{name}/snapshots/{snap}":      {PermOperate, VM},
	"POST /api/v1/imports":                            {PermOperate, Any},
	// templates
	"GET /api/v1/templates":                {PermRead, Pool},
	"GET /api/v1/templates/{name}":         {PermRead, Pool},
	"DELETE /api/v1/templates/{name}":      {PermAdmin, Pool},
	"POST /api/v1/templates/{name}/deploy": {PermOperate, Any},
	// operations
	"GET /api/v1/operations":         {PermRead, Any},
	"GET /api/v1/operations/{id}":    {PermRead, Op},
	"DELETE /api/v1/operations/{id}": {PermOperate, Op},
	// hosts and the pool
	"GET /api/v1/hosts":                       {PermRead, Pool},
	"GET /api/v1/hosts/{name}":                {PermRead, Pool},
	"GET /api/v1/capacity":                    {PermRead, Pool},
	"GET /api/v1/hosts/{name}/history":        {PermRead, Pool},
	"GET /api/v1/alerts":                      {PermRead, Pool},
	"GET /api/v1/events":                      {PermRead, Any},
	"POST /api/v1/hosts/{name}/check-sources": {PermAdmin, Pool},
	"POST /api/v1/hosts/{name}/evacuate":      {PermAdmin, Pool},
	"POST /api/v1/hosts/{name}/maintenance":   {PermAdmin, Pool},
	"DELETE /api/v1/hosts/{name}":             {PermAdmin, Pool},
	"POST /api/v1/pool/join-tokens":           {PermAdmin, Pool},
	"POST /api/v1/pool/join":                  {"", Public},
	"POST /api/v1/pool/credentials":           {PermAdmin, Pool},
	"GET /api/v1/pool":                        {PermRead, Pool},
	"GET /api/v1/pool/settings":               {PermRead, Pool},
	"PUT /api/v1/pool/settings":               {PermAdmin, Pool},
	// storage
	"GET /api/v1/pools":                               {PermRead, Pool},
	"POST /api/v1/pools":                              {PermAdmin, Pool},
	"GET /api/v1/pools/{pool}/volumes":                {PermRead, Pool},
	"POST /api/v1/pools/{pool}/volumes":               {PermAdmin, Pool},
	"GET /api/v1/pools/{pool}/volumes/{vol}":          {PermRead, Pool},
	"DELETE /api/v1/pools/{pool}/volumes/{vol}":       {PermAdmin, Pool},
	"POST /api/v1/pools/{pool}/volumes/{vol}/resize":  {PermAdmin, Pool},
	"PUT /api/v1/pools/{pool}/volumes/{vol}/data":     {PermAdmin, Pool},
	"POST /api/v1/pools/{pool}/volumes/{vol}/copy":    {PermAdmin, Pool},
	"POST /api/v1/pools/{pool}/volumes/{vol}/flatten": {PermAdmin, Pool},
	// users, tokens, sessions, audit
	"POST /api/v1/login":                 {"", Public},
	"POST /api/v1/logout":                {"", Self},
	"GET /api/v1/whoami":                 {"", Self},
	"GET /api/v1/users":                  {PermAdmin, Pool},
	"POST /api/v1/users":                 {PermAdmin, Pool},
	"GET /api/v1/users/{user}":           {PermAdmin, User},
	"DELETE /api/v1/users/{user}":        {PermAdmin, Pool},
	"PUT /api/v1/users/{user}/password":  {PermAdmin, User},
	"POST /api/v1/users/{user}/grants":   {PermAdmin, Pool},
	"DELETE /api/v1/users/{user}/grants": {PermAdmin, Pool},
	"GET /api/v1/tokens":                 {"", Self},
	"POST /api/v1/tokens":                {"", Self},
	"DELETE /api/v1/tokens/{id}":         {"", Self},
	"GET /api/v1/audit":                  {PermAdmin, Pool},
	// the rest
	"GET /api/v1/version":      {"", Self},
	"GET /api/v1/openapi.yaml": {"", Self},
	"GET /metrics":             {PermRead, Pool},
	"GET /{$}":                 {"", Public}, // the web UI's page and assets: the login needs them
	"GET /ui/":                 {"", Public},
	"GET /healthz":             {"", Self},
}
