package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryCommandHasHelp: every command of ours has a long description and
// examples, as incus and kubectl have.
func TestEveryCommandHasHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		ours := c.Name() != "help" && c.Name() != "completion" && (c.Parent() == nil || c.Parent().Name() != "completion")
		if ours && !c.Hidden {
			if strings.TrimSpace(c.Long) == "" {
				t.Errorf("%s has no long description", c.CommandPath())
			}
			if strings.TrimSpace(c.Example) == "" {
				t.Errorf("%s has no examples", c.CommandPath())
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRoot())
}

// TestGroupsRefuseUnknownSubcommands: every command with subcommands runs
// (so cobra validates its arguments) and refuses an unknown one.
func TestGroupsRefuseUnknownSubcommands(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() {
			if c.RunE == nil && c.Run == nil {
				t.Errorf("%s has subcommands but no RunE: cobra would print help and exit 0 for an unknown one", c.CommandPath())
			} else if c.Args == nil || c.Args(c, []string{"nope"}) == nil {
				t.Errorf("%s accepts an unknown subcommand", c.CommandPath())
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRoot())
}
