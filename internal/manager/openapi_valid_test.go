package manager

import (
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	v1 "hangar/api/v1"
)

func TestOpenAPIValidates(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(v1.OpenAPI)
	if err != nil {
		t.Fatalf("load openapi.yaml: %v", err)
	}
	if err := doc.Validate(t.Context()); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	ids := map[string]string{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			where := method + " " + path
			if op.OperationID == "" {
				t.Errorf("%s: no operationId", where)
			} else if other, dup := ids[op.OperationID]; dup {
				t.Errorf("%s: operationId %s is also %s's", where, op.OperationID, other)
			}
			ids[op.OperationID] = where
			for code, resp := range op.Responses.Map() {
				for ct, mt := range resp.Value.Content {
					if ct == "application/json" && isBareObject(mt.Schema) {
						t.Errorf("%s %s: the response is a bare {type: object}, give it a schema", where, code)
					}
				}
			}
		}
	}
	if doc.Components.SecuritySchemes["bearerToken"] == nil || len(doc.Security) == 0 {
		t.Errorf("no security scheme declared")
	}
}

// isBareObject: {type: object} (or an array of them) without properties.
func isBareObject(ref *openapi3.SchemaRef) bool {
	if ref == nil || ref.Value == nil {
		return true
	}
	s := ref.Value
	if s.Type.Is("array") {
		return isBareObject(s.Items)
	}
	return s.Type.Is("object") && len(s.Properties) == 0 && s.AdditionalProperties.Schema == nil
}
