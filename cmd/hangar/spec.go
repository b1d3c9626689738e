package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// decodeYAMLStrict decodes a YAML document into out (a pointer to a struct
// with json tags, such as v1.VMSpec) and reports the first problem as
// "file:line: …": unknown fields (with the nearest known name), values of
// the wrong kind, more than one document.
func decodeYAMLStrict(file string, b []byte, out any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("%s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return fmt.Errorf("%s:%d: a second YAML document; give one spec per file", file, extra.Line)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if err := checkNode(root, reflect.TypeOf(out).Elem(), ""); err != nil {
		return fmt.Errorf("%s:%w", file, err)
	}
	// The shape is right: decode through JSON so that the json tags (and
	// only they) decide the names.
	var v any
	if err := root.Decode(&v); err != nil {
		return fmt.Errorf("%s:%d: %s", file, root.Line, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	j, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	jd := json.NewDecoder(bytes.NewReader(j))
	jd.DisallowUnknownFields()
	if err := jd.Decode(out); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}

type nodeError struct {
	line int
	msg  string
}

func (e *nodeError) Error() string { return fmt.Sprintf("%d: %s", e.line, e.msg) }

func nodeErr(n *yaml.Node, format string, a ...any) error {
	return &nodeError{line: n.Line, msg: fmt.Sprintf(format, a...)}
}

// checkNode checks that n fits t, recursively; path names the field.
func checkNode(n *yaml.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	what := path
	if what == "" {
		what = "the spec"
	}
	switch t.Kind() {
	case reflect.Struct:
		if t.PkgPath() == "time" {
			return nil
		}
		if n.Kind != yaml.MappingNode {
			return nodeErr(n, "%s: want a mapping of fields, got %s", what, kindOf(n))
		}
		fields := jsonFields(t)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fields[k.Value]
			if !ok {
				msg := fmt.Sprintf("unknown field %q", join(path, k.Value))
				if s := suggest(k.Value, fields); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				return nodeErr(k, "%s", msg)
			}
			if seen[k.Value] {
				return nodeErr(k, "field %q given twice", join(path, k.Value))
			}
			seen[k.Value] = true
			if err := checkNode(v, f.Type, join(path, k.Value)); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return nodeErr(n, "%s: want a list, got %s", what, kindOf(n))
		}
		for i, c := range n.Content {
			if err := checkNode(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nodeErr(n, "%s: want a mapping, got %s", what, kindOf(n))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := checkNode(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value)); err != nil {
				return err
			}
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			return nodeErr(n, "%s: want a string, got %s", what, kindOf(n))
		}
		if n.Tag != "!!str" {
			return nodeErr(n, "%s: want a string, got %s (quote it)", what, kindOf(n))
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return nodeErr(n, "%s: want true or false, got %s", what, kindOf(n))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return nodeErr(n, "%s: want a whole number, got %s", what, kindOf(n))
		}
	case reflect.Float32, reflect.Float64:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") {
			return nodeErr(n, "%s: want a number, got %s", what, kindOf(n))
		}
	}
	return nil
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func kindOf(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

// jsonFields maps the JSON names of t's exported fields to them (embedded
// structs included).
func jsonFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			for k, v := range jsonFields(ft) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f
	}
	return out
}

// suggest returns the known name closest to s: a case-insensitive match, a
// known name that starts with s, or one within an edit distance of a third
// of its length.
func suggest[V any](s string, known map[string]V) string {
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	sort.Strings(names)
	best, bestD := "", 1<<30
	for _, k := range names {
		ls, lk := strings.ToLower(s), strings.ToLower(k)
		if ls == lk {
			return k
		}
		d := editDistance(ls, lk)
		if strings.HasPrefix(lk, ls) && len(ls) >= 3 {
			d = min(d, 1)
		}
		if d < bestD {
			best, bestD = k, d
		}
	}
	if bestD <= max(2, len(best)/3) {
		return best
	}
	return ""
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
