package access

import (
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/authn"
)

func g(role, scope string) v1.Grant { return v1.Grant{Role: role, Scope: scope} }

func TestAllows(t *testing.T) {
	web := &VMRef{Name: "web-1"}
	db := &VMRef{Name: "db1", Tags: []string{"web"}}
	for _, c := range []struct {
		name   string
		grants []v1.Grant
		perm   Perm
		target *VMRef
		want   bool
	}{
		{"admin on pool, pool", []v1.Grant{g("admin", "pool")}, PermAdmin, nil, true},
		{"viewer reads", []v1.Grant{g("viewer", "pool")}, PermRead, web, true},
		{"viewer does not operate", []v1.Grant{g("viewer", "pool")}, PermOperate, web, false},
		{"viewer has no console", []v1.Grant{g("viewer", "pool")}, PermConsole, web, false},
		{"console role, console", []v1.Grant{g("console", "prefix:web-")}, PermConsole, web, true},
		{"console role does not read", []v1.Grant{g("console", "prefix:web-")}, PermRead, web, false},
		{"operator on prefix, inside", []v1.Grant{g("operator", "prefix:web-")}, PermOperate, web, true},
		{"operator on prefix, outside", []v1.Grant{g("operator", "prefix:web-")}, PermOperate, db, false},
		{"operator on prefix, the pool", []v1.Grant{g("operator", "prefix:web-")}, PermRead, nil, false},
		{"operator on tag", []v1.Grant{g("operator", "tag:web")}, PermOperate, db, true},
		{"operator on tag, untagged", []v1.Grant{g("operator", "tag:web")}, PermOperate, web, false},
		{"admin on a prefix is no pool admin", []v1.Grant{g("admin", "prefix:web-")}, PermAdmin, nil, false},
		{"two grants", []v1.Grant{g("viewer", "pool"), g("operator", "tag:web")}, PermOperate, db, true},
		{"none", nil, PermRead, web, false},
	} {
		if got := Allows(c.grants, c.perm, c.target); got != c.want {
			t.Errorf("%s: Allows = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestCanIntersectsTokenAndOwner(t *testing.T) {
	web, db := &VMRef{Name: "web-1"}, &VMRef{Name: "db1"}
	owner := []v1.Grant{g("operator", "prefix:web-")}
	id := authn.Identity{Grants: owner, Limit: []v1.Grant{g("viewer", "pool")}}
	if !Can(id, PermRead, web) || Can(id, PermRead, db) || Can(id, PermOperate, web) {
		t.Error("a viewer token of a web-* operator: reads web-1 only, operates nothing")
	}
	if !CanSomewhere(id, PermRead) || CanSomewhere(id, PermOperate) {
		t.Error("CanSomewhere of the limited token")
	}
	disjoint := authn.Identity{Grants: owner, Limit: []v1.Grant{g("operator", "prefix:db")}}
	if CanSomewhere(disjoint, PermOperate) || Can(disjoint, PermOperate, web) || Can(disjoint, PermOperate, db) {
		t.Error("a token limited to another scope than its owner's can do nothing")
	}
	if !Can(authn.Local, PermAdmin, nil) {
		t.Error("the unix socket is admin")
	}
	if Can(authn.Identity{}, PermRead, nil) {
		t.Error("the zero identity can read")
	}
}

func TestExceeds(t *testing.T) {
	owner := []v1.Grant{g("operator", "prefix:web-"), g("viewer", "pool")}
	for _, c := range []struct {
		want []v1.Grant
		bad  bool
	}{
		{nil, false},
		{[]v1.Grant{g("viewer", "pool")}, false},
		{[]v1.Grant{g("operator", "prefix:web-front")}, false},
		{[]v1.Grant{g("console", "prefix:web-")}, false},
		{[]v1.Grant{g("operator", "prefix:w")}, true},
		{[]v1.Grant{g("operator", "pool")}, true},
		{[]v1.Grant{g("admin", "prefix:web-")}, true},
		{[]v1.Grant{g("operator", "tag:web")}, true},
	} {
		if got := Exceeds(owner, c.want) != nil; got != c.bad {
			t.Errorf("Exceeds(%v) = %v, want %v", c.want, got, c.bad)
		}
	}
}

func TestValidateGrant(t *testing.T) {
	for _, ok := range []v1.Grant{g("admin", "pool"), g("viewer", "prefix:web-"), g("operator", "prefix:w"), g("console", "tag:prod")} {
		if err := ValidateGrant("g", ok); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
	for _, bad := range []v1.Grant{g("root", "pool"), g("admin", ""), g("admin", "prefix:"), g("admin", "prefix:-x"), g("admin", "prefix:Web"),
		g("admin", "tag:"), g("admin", "tag:a b"), g("admin", "vm:web1")} {
		if err := ValidateGrant("g", bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if err := ValidateGrants("grants", []v1.Grant{g("admin", "pool"), g("admin", "pool")}); err == nil {
		t.Error("a grant given twice accepted")
	}
}
