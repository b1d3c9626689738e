package manager

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
)

// unknownFieldPath finds the first key in a JSON document that the Go type
// t has no field for — keys must match the json tags exactly, case
// included — and returns its path ("disks[0].shape"), or "". want is the
// field's name when the key differs from it only in case.
// (encoding/json names only the key, not where it was, and matches keys
// without regard to case.)
func unknownFieldPath(body []byte, t reflect.Type) (path, want string) {
	var doc any
	if json.Unmarshal(body, &doc) != nil {
		return "", ""
	}
	return walkUnknown(doc, t, "")
}

func walkUnknown(doc any, t reflect.Type, path string) (string, string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch d := doc.(type) {
	case map[string]any:
		if t.Kind() == reflect.Map {
			for k, v := range d {
				if p, w := walkUnknown(v, t.Elem(), join(path, k)); p != "" {
					return p, w
				}
			}
			return "", ""
		}
		if t.Kind() != reflect.Struct {
			return "", ""
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fields[name] = f.Type
		}
		for _, k := range sortedKeys(d) {
			p := join(path, k)
			ft, ok := fields[k]
			if !ok {
				for name := range fields {
					if strings.EqualFold(name, k) {
						return p, name
					}
				}
				return p, ""
			}
			if found, w := walkUnknown(d[k], ft, p); found != "" {
				return found, w
			}
		}
	case []any:
		if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
			return "", ""
		}
		for i, v := range d {
			if found, w := walkUnknown(v, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); found != "" {
				return found, w
			}
		}
	}
	return "", ""
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// sortedKeys makes the reported key deterministic: the first in order.
func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// maxDepth bounds the nesting of request documents.
const maxDepth = 32

var errTooDeep = fmt.Errorf("nested deeper than %d levels", maxDepth)

// duplicateKey walks a JSON document's token stream and returns the path
// of the first key that appears twice in one object ("disks[0].name").
// Keys are compared without regard to case, as encoding/json matches them
// to fields: {"cpus":1,"CPUs":64} is a duplicate too. A syntax error is
// left to the decoder (""); a document nested too deep is an error.
func duplicateKey(body []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	p, err := dupValue(dec, "", 0)
	if errors.Is(err, errTooDeep) {
		return "", err
	}
	return p, nil
}

func dupValue(dec *json.Decoder, path string, depth int) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return "", nil
		}
		return "", err
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return "", nil
	}
	if depth >= maxDepth {
		return "", errTooDeep
	}
	switch delim {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return "", err
			}
			k, _ := kt.(string)
			p := join(path, k)
			lk := strings.ToLower(k)
			if seen[lk] {
				return p, nil
			}
			seen[lk] = true
			if d, err := dupValue(dec, p, depth+1); d != "" || err != nil {
				return d, err
			}
		}
	case '[':
		for i := 0; dec.More(); i++ {
			if d, err := dupValue(dec, fmt.Sprintf("%s[%d]", path, i), depth+1); d != "" || err != nil {
				return d, err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return "", err
}

// typeErrorPath finds the first value in a JSON document that does not fit
// its Go field's type and returns its path with indices
// ("nics[0].forwards[1].hostPort"), or "". (encoding/json's
// UnmarshalTypeError names the field without indices.)
func typeErrorPath(body []byte, t reflect.Type) string {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc any
	if dec.Decode(&doc) != nil {
		return ""
	}
	return walkType(doc, t, "")
}

func walkType(doc any, t reflect.Type, path string) string {
	b, err := json.Marshal(doc)
	if err != nil {
		return path
	}
	if json.Unmarshal(b, reflect.New(t).Interface()) == nil {
		return ""
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch d := doc.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Struct:
			for _, k := range sortedKeys(d) {
				if f, ok := t.FieldByNameFunc(func(n string) bool { return jsonName(t, n) == k }); ok {
					if p := walkType(d[k], f.Type, join(path, k)); p != "" {
						return p
					}
				}
			}
		case reflect.Map:
			for _, k := range sortedKeys(d) {
				if p := walkType(d[k], t.Elem(), join(path, k)); p != "" {
					return p
				}
			}
		}
	case []any:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for i, v := range d {
				if p := walkType(v, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); p != "" {
					return p
				}
			}
		}
	}
	return path
}

// jsonName is the JSON key of struct t's field named n.
func jsonName(t reflect.Type, n string) string {
	f, _ := t.FieldByName(n)
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" {
		return f.Name
	}
	return name
}
