package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

// splitRef reads POOL/VOLUME.
func splitRef(ref string) (string, string, error) {
	p, v, ok := strings.Cut(ref, "/")
	if !ok || v == "" {
		return "", "", fmt.Errorf("%q: want POOL/VOLUME, like default/images/debian.qcow2", ref)
	}
	return p, v, nil
}

func newPool(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Manage storage pools"}
	list := &cobra.Command{Use: "list", Short: "List storage pools", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, a []string) error {
			ps, err := g.client().Pools(cmd.Context())
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), g.output, ps, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tTYPE\tPATH")
				for _, p := range ps {
					fmt.Fprintf(w, "%s\t%s\t%s\n", p.Name, p.Type, p.Path)
				}
			})
		}}
	addOutput(list, g)
	var typ string
	add := &cobra.Command{Use: "add NAME PATH", Short: "Add a directory pool (--type shared: mounted by every host)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			return g.client().AddPool(cmd.Context(), v1.StoragePool{Name: a[0], Type: typ, Path: a[1]})
		}}
	add.Flags().StringVar(&typ, "type", "dir", "dir or shared")
	cmd.AddCommand(list, add)
	return cmd
}

func newVolume(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "volume", Short: "Manage volumes (disk images) in storage pools"}
	list := &cobra.Command{Use: "list [POOL]", Short: "List volumes with real and virtual size", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			pool := "default"
			if len(a) == 1 {
				pool = a[0]
			}
			vs, err := g.client().Volumes(cmd.Context(), pool)
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), g.output, vs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tFORMAT\tVIRTUAL\tREAL\tBACKING\tUSED BY")
				for _, v := range vs {
					fmt.Fprintf(w, "%s\t%s\t%d MiB\t%d MiB\t%s\t%s\n", v.Name, v.Format, v.VirtualSize>>20, v.ActualSize>>20, v.Backing, strings.Join(v.UsedBy, ","))
				}
			})
		}}
	addOutput(list, g)
	var format string
	var size int64
	create := &cobra.Command{Use: "create POOL/VOLUME", Short: "Create an empty volume", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			p, v, err := splitRef(a[0])
			if err != nil {
				return err
			}
			_, err = g.client().CreateVolume(cmd.Context(), p, v1.VolumeCreateArgs{Name: v, Format: format, SizeMiB: size})
			return err
		}}
	create.Flags().StringVar(&format, "format", "", "qcow2 or raw (default: from the name's extension)")
	create.Flags().Int64Var(&size, "size", 1024, "size in MiB")
	resize := &cobra.Command{Use: "resize POOL/VOLUME SIZE_MIB", Short: "Grow a volume (live when it is a running VM's disk)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			p, v, err := splitRef(a[0])
			if err != nil {
				return err
			}
			var mib int64
			if _, err := fmt.Sscan(a[1], &mib); err != nil {
				return fmt.Errorf("size %q: %w", a[1], err)
			}
			c := g.client()
			op, err := c.ResizeVolume(cmd.Context(), p, v, mib, 0)
			if err != nil || op == nil {
				return err
			}
			_, err = follow(cmd, c, *op, nil, true)
			return err
		}}
	del := &cobra.Command{Use: "delete POOL/VOLUME", Short: "Delete a volume no VM or volume uses", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			p, v, err := splitRef(a[0])
			if err != nil {
				return err
			}
			return g.client().DeleteVolume(cmd.Context(), p, v)
		}}
	upload := &cobra.Command{Use: "upload FILE POOL/VOLUME", Short: "Upload a disk image (size and SHA-256 checked)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			p, v, err := splitRef(a[1])
			if err != nil {
				return err
			}
			f, err := os.Open(a[0])
			if err != nil {
				return err
			}
			defer f.Close()
			h := sha256.New()
			n, err := io.Copy(h, f)
			if err != nil {
				return err
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			_, err = g.client().UploadVolume(cmd.Context(), p, v, format, f, n, hex.EncodeToString(h.Sum(nil)))
			return err
		}}
	upload.Flags().StringVar(&format, "format", "", "qcow2 or raw (default: from the name's extension)")
	var copyFormat string
	cp := &cobra.Command{Use: "copy POOL/VOLUME NAME", Short: "Copy a volume into a new standalone one (full clone; --format converts)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			p, v, err := splitRef(a[0])
			if err != nil {
				return err
			}
			c := g.client()
			op, err := c.CopyVolume(cmd.Context(), p, v, a[1], copyFormat, 0)
			_, err = follow(cmd, c, op, err, true)
			return err
		}}
	cp.Flags().StringVar(&copyFormat, "format", "", "qcow2 or raw (default: from the new name's extension)")
	flatten := &cobra.Command{Use: "flatten POOL/VOLUME", Short: "Merge a volume's backing chain into it (not a VM's disk)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			p, v, err := splitRef(a[0])
			if err != nil {
				return err
			}
			c := g.client()
			op, err := c.FlattenVolume(cmd.Context(), p, v, 0)
			_, err = follow(cmd, c, op, err, true)
			return err
		}}
	cmd.AddCommand(list, create, resize, del, upload, cp, flatten)
	return cmd
}
