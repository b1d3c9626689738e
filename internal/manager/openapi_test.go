package manager

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	v1 "hangar/api/v1"
)

// TestOpenAPICoversRoutes: every /api/v1 route the server registers is
// described in openapi.yaml with its method.
func TestOpenAPICoversRoutes(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if err := yaml.Unmarshal(v1.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	s := New(Config{})
	n := 0
	for _, r := range s.routes {
		method, path, ok := strings.Cut(r, " ")
		if !ok || !strings.HasPrefix(path, "/api/v1/") {
			continue
		}
		n++
		p := strings.TrimPrefix(path, "/api/v1")
		ops, found := doc.Paths[p]
		if !found {
			t.Errorf("route %s: no path %s in openapi.yaml", r, p)
			continue
		}
		if _, found := ops[strings.ToLower(method)]; !found {
			t.Errorf("route %s: openapi.yaml has %s without %s", r, p, method)
		}
	}
	if n < 30 {
		t.Fatalf("only %d routes seen", n)
	}
}
