package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "hangar/api/v1"
)

// TestCLIConfig: hangar login's file round-trips by server URL, is
// written 0600 and refused once others may read it.
func TestCLIConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cfg", "cli.json")
	t.Setenv("HANGAR_CONFIG", p)
	c, path, err := loadCLIConfig()
	if err != nil || path != p || len(c.Servers) != 0 {
		t.Fatalf("empty config: %v %q %v", c, path, err)
	}
	c.Servers["https://h1:8443"] = cliLogin{User: "olga", Token: "hgt_x", TokenID: "0123456789abcdef"}
	if err := saveCLIConfig(c, p); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config mode %v %v", st, err)
	}
	for _, u := range []string{"https://h1:8443", "https://h1:8443/"} {
		if l, ok, err := storedLogin(u); err != nil || !ok || l.Token != "hgt_x" {
			t.Errorf("storedLogin(%s) = %+v %v %v", u, l, ok, err)
		}
	}
	if _, ok, _ := storedLogin("https://h2:8443"); ok {
		t.Error("a login of another server found")
	}
	if _, _, err := storedLogin("http://h1:8443"); err == nil {
		t.Error("an http server accepted")
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadCLIConfig(); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("readable config: %v", err)
	}
}

func TestParseGrants(t *testing.T) {
	gs, err := parseGrants([]string{"operator", "viewer"}, []string{"prefix:web-"})
	if err != nil || len(gs) != 2 || gs[1] != (v1.Grant{Role: "viewer", Scope: "prefix:web-"}) {
		t.Errorf("one scope for all: %v %v", gs, err)
	}
	if gs, _ := parseGrants([]string{"admin"}, nil); gs[0].Scope != v1.ScopePool {
		t.Errorf("default scope: %v", gs)
	}
	if _, err := parseGrants([]string{"a", "b", "c"}, []string{"pool", "pool"}); err == nil {
		t.Error("3 roles with 2 scopes accepted")
	}
	if _, err := parseGrants(nil, []string{"pool"}); err == nil {
		t.Error("--scope without --role accepted")
	}
}
