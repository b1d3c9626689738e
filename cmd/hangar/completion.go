package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

type completeFunc = func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective)

// complete completes positional arguments from the server: lists[i] names
// the i-th argument's candidates (nil: no completion).
func complete(g *globals, lists ...func(ctx context.Context, args []string) ([]string, error)) completeFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) >= len(lists) || lists[len(args)] == nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		names, err := lists[len(args)](ctx, args)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		var out []cobra.Completion
		for _, n := range names {
			if strings.HasPrefix(n, toComplete) {
				out = append(out, n)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func (g *globals) vmNames(ctx context.Context, _ []string) ([]string, error) {
	vms, err := g.client().VMs(ctx)
	var out []string
	for _, v := range vms {
		out = append(out, v.Spec.Name)
	}
	return out, err
}

func (g *globals) templateNames(ctx context.Context, _ []string) ([]string, error) {
	ts, err := g.client().Templates(ctx)
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out, err
}

func (g *globals) hostNames(ctx context.Context, _ []string) ([]string, error) {
	hs, err := g.client().Hosts(ctx)
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return out, err
}

func (g *globals) poolNames(ctx context.Context, _ []string) ([]string, error) {
	ps, err := g.client().Pools(ctx)
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out, err
}

// volumeRefs lists every volume as POOL/VOLUME, the form the volume verbs take.
func (g *globals) volumeRefs(ctx context.Context, _ []string) ([]string, error) {
	c := g.client()
	ps, err := c.Pools(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range ps {
		vs, err := c.Volumes(ctx, p.Name)
		if err != nil {
			continue
		}
		for _, v := range vs {
			out = append(out, volumeRef(p.Name, v.Name))
		}
	}
	return out, nil
}

// snapshotNames lists the snapshots of the VM named by the first argument.
func (g *globals) snapshotNames(ctx context.Context, args []string) ([]string, error) {
	snaps, err := g.client().Snapshots(ctx, args[0])
	var out []string
	for _, s := range snaps {
		out = append(out, s.Name)
	}
	return out, err
}

func (g *globals) opIDs(ctx context.Context, _ []string) ([]string, error) {
	ops, err := g.client().Operations(ctx)
	var out []string
	for _, o := range ops {
		out = append(out, o.ID)
	}
	return out, err
}
