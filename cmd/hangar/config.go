package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	yaml "go.yaml.in/yaml/v3"
)

// defaultConfig is where hangar serve looks for its settings.
const defaultConfig = "/etc/hangar/hangar.yaml"

// loadConfig sets cmd's flags that the command line did not give from a
// YAML mapping of flag names to values. A missing file is an error only
// when it was asked for (explicit). Unknown keys, values of the wrong kind
// and duplicate keys are errors with the file and line.
func loadConfig(cmd *cobra.Command, path string, explicit bool) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	return applyConfig(cmd.Flags(), path, b)
}

func applyConfig(flags *pflag.FlagSet, path string, b []byte) error {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file
		}
		return fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("%s:%d: want a mapping of setting: value", path, root.Line)
	}
	known := map[string]bool{}
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Name != "config" && f.Name != "help" {
			known[f.Name] = true
		}
	})
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		f := flags.Lookup(k.Value)
		if f == nil || !known[k.Value] {
			msg := fmt.Sprintf("%s:%d: unknown setting %q", path, k.Line, k.Value)
			if s := suggest(k.Value, known); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			return errors.New(msg)
		}
		if seen[k.Value] {
			return fmt.Errorf("%s:%d: setting %q given twice", path, k.Line, k.Value)
		}
		seen[k.Value] = true
		if f.Changed {
			continue // the command line wins
		}
		var values []string
		switch v.Kind {
		case yaml.ScalarNode:
			values = []string{v.Value}
		case yaml.SequenceNode:
			if !strings.Contains(f.Value.Type(), "Slice") && !strings.Contains(f.Value.Type(), "Array") {
				return fmt.Errorf("%s:%d: %s: want one value, got a list", path, v.Line, k.Value)
			}
			for _, c := range v.Content {
				if c.Kind != yaml.ScalarNode {
					return fmt.Errorf("%s:%d: %s: want a list of values", path, c.Line, k.Value)
				}
				values = append(values, c.Value)
			}
		default:
			return fmt.Errorf("%s:%d: %s: want a value, got a mapping", path, v.Line, k.Value)
		}
		for _, val := range values {
			if err := flags.Set(k.Value, val); err != nil {
				return fmt.Errorf("%s:%d: %s: %v", path, v.Line, k.Value, err)
			}
		}
	}
	return nil
}
