// Package access decides who may do what through the API: local users
// (argon2id password hashes in etcd), their API tokens and browser
// sessions, roles granted on the pool or on a set of VMs, single-use
// console tickets, and the access rule of every route.
//
// The decisions are pure functions of an authn.Identity (Can, Allows); the
// records live in etcd (Store) and are checked like API input when read.
package access

import (
	"fmt"
	"slices"
	"strings"

	v1 "hangar/api/v1"
	"hangar/internal/authn"
	"hangar/internal/vm"
)

// Perm is what a route needs.
type Perm string

// Permissions.
const (
	PermRead    Perm = "read"    // look at things
	PermOperate Perm = "operate" // VM lifecycle, snapshots, migrate, create, delete
	PermConsole Perm = "console" // a VM's serial console and its log
	PermAdmin   Perm = "admin"   // users, the pool, hosts, storage
)

// rolePerms: what each role may do.
var rolePerms = map[string][]Perm{
	v1.RoleAdmin:    {PermRead, PermOperate, PermConsole, PermAdmin},
	v1.RoleOperator: {PermRead, PermOperate, PermConsole},
	v1.RoleViewer:   {PermRead},
	v1.RoleConsole:  {PermConsole},
}

// MaxGrants bounds a user's (and a token's) grants.
const MaxGrants = 64

// VMRef is the VM a request is about, as far as scopes look at it.
type VMRef struct {
	Name string
	Tags []string
}

// ValidateGrant checks a grant (its fields named field.role and
// field.scope; role and scope when field is ""): a known role and a scope "pool",
// "prefix:P" (P a non-empty start of a VM name) or "tag:T" (T a tag).
func ValidateGrant(field string, g v1.Grant) error {
	if field != "" {
		field += "."
	}
	if _, ok := rolePerms[g.Role]; !ok {
		return fieldErr(field+"role", "unknown role %q (admin, operator, viewer, console)", g.Role)
	}
	switch {
	case g.Scope == v1.ScopePool:
	case strings.HasPrefix(g.Scope, v1.ScopePrefix):
		p := strings.TrimPrefix(g.Scope, v1.ScopePrefix)
		// A prefix is the start of a valid name: check it completed.
		if p == "" || vm.ValidateName("prefix", strings.TrimRight(p, "-")+"x") != nil || strings.HasPrefix(p, "-") {
			return fieldErr(field+"scope", "prefix %q: want the start of a VM name (lower-case letters, digits, -)", p)
		}
	case strings.HasPrefix(g.Scope, v1.ScopeTag):
		if vm.ValidateName("tag", strings.TrimPrefix(g.Scope, v1.ScopeTag)) != nil {
			return fieldErr(field+"scope", "tag %q: want a tag name (lower-case letters, digits, -)", strings.TrimPrefix(g.Scope, v1.ScopeTag))
		}
	default:
		return fieldErr(field+"scope", "%q: want pool, prefix:NAME-START or tag:TAG", g.Scope)
	}
	return nil
}

// ValidateGrants checks a list of grants (field names them grants[i]).
func ValidateGrants(field string, gs []v1.Grant) error {
	if len(gs) > MaxGrants {
		return fieldErr(field, "at most %d grants", MaxGrants)
	}
	for i, g := range gs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if err := ValidateGrant(f, g); err != nil {
			return err
		}
		if slices.Contains(gs[:i], g) {
			return fieldErr(f, "%s on %s given twice", g.Role, g.Scope)
		}
	}
	return nil
}

// covers reports whether scope takes in target (nil: the pool itself,
// which only the pool scope takes in).
func covers(scope string, target *VMRef) bool {
	if scope == v1.ScopePool {
		return true
	}
	if target == nil {
		return false
	}
	if p, ok := strings.CutPrefix(scope, v1.ScopePrefix); ok {
		return strings.HasPrefix(target.Name, p)
	}
	if t, ok := strings.CutPrefix(scope, v1.ScopeTag); ok {
		return slices.Contains(target.Tags, t)
	}
	return false
}

// Allows reports whether one of grants gives p on target (nil: the pool).
func Allows(grants []v1.Grant, p Perm, target *VMRef) bool {
	for _, g := range grants {
		if slices.Contains(rolePerms[g.Role], p) && covers(g.Scope, target) {
			return true
		}
	}
	return false
}

// AllowsSomewhere reports whether one of grants gives p on any scope.
func AllowsSomewhere(grants []v1.Grant, p Perm) bool {
	for _, g := range grants {
		if slices.Contains(rolePerms[g.Role], p) {
			return true
		}
	}
	return false
}

// Can reports whether id may do p on target (nil: the pool). A token
// with its own grants may do only what its owner's grants and its own
// both allow: it never has more rights than its owner.
func Can(id authn.Identity, p Perm, target *VMRef) bool {
	if id.Full {
		return true
	}
	return Allows(id.Grants, p, target) && (id.Limit == nil || Allows(id.Limit, p, target))
}

// CanSomewhere is Can on some scope: a list answers what it may see.
func CanSomewhere(id authn.Identity, p Perm) bool {
	if id.Full {
		return true
	}
	if !AllowsSomewhere(id.Grants, p) {
		return false
	}
	if id.Limit == nil {
		return true
	}
	// Some scope must be in both: a pool grant on either side meets any
	// scope of the other; else the same scope on both.
	for _, g := range id.Grants {
		if !slices.Contains(rolePerms[g.Role], p) {
			continue
		}
		for _, l := range id.Limit {
			if slices.Contains(rolePerms[l.Role], p) && (g.Scope == l.Scope || g.Scope == v1.ScopePool || l.Scope == v1.ScopePool) {
				return true
			}
		}
	}
	return false
}

// Exceeds returns the first of want that owner's grants do not cover (a
// token asking for more than its owner has), or nil.
func Exceeds(owner []v1.Grant, want []v1.Grant) *v1.Grant {
	for _, w := range want {
		for _, p := range rolePerms[w.Role] {
			if !coveredBy(owner, p, w.Scope) {
				return &w
			}
		}
	}
	return nil
}

// coveredBy: some grant of owner gives p on a scope that takes in all of
// scope (the pool covers all; a prefix covers longer prefixes; a tag only
// itself).
func coveredBy(owner []v1.Grant, p Perm, scope string) bool {
	for _, g := range owner {
		if !slices.Contains(rolePerms[g.Role], p) {
			continue
		}
		switch {
		case g.Scope == v1.ScopePool, g.Scope == scope:
			return true
		case strings.HasPrefix(g.Scope, v1.ScopePrefix) && strings.HasPrefix(scope, g.Scope):
			return true
		}
	}
	return false
}

// fieldErr is an invalid-argument error of one field.
func fieldErr(field, format string, args ...any) error {
	return &v1.Error{Code: v1.CodeInvalidArgument, Field: field, Message: field + ": " + fmt.Sprintf(format, args...)}
}
