package manager

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// unknownFieldPath finds the first key in a JSON document that the Go type
// t has no field for, and returns its path ("disks[0].shape"), or "".
// encoding/json names only the key, not where it was.
func unknownFieldPath(body []byte, t reflect.Type) string {
	var doc any
	if json.Unmarshal(body, &doc) != nil {
		return ""
	}
	return walkUnknown(doc, t, "")
}

func walkUnknown(doc any, t reflect.Type, path string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch d := doc.(type) {
	case map[string]any:
		if t.Kind() != reflect.Struct {
			return ""
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fields[strings.ToLower(name)] = f.Type
		}
		for k, v := range d {
			p := k
			if path != "" {
				p = path + "." + k
			}
			ft, ok := fields[strings.ToLower(k)]
			if !ok {
				return p
			}
			if found := walkUnknown(v, ft, p); found != "" {
				return found
			}
		}
	case []any:
		if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
			return ""
		}
		for i, v := range d {
			if found := walkUnknown(v, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); found != "" {
				return found
			}
		}
	}
	return ""
}
