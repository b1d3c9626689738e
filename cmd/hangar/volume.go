package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

// volumeRef is how the CLI names a volume everywhere, in what it prints and
// in what it takes: POOL/VOLUME, where VOLUME may hold slashes itself
// (local-h1/images/debian.qcow2 is volume images/debian.qcow2 of pool
// local-h1, host h1's own).
func volumeRef(pool, name string) string { return pool + "/" + name }

// splitRef reads POOL/VOLUME.
func splitRef(ref string) (string, string, error) {
	p, v, ok := strings.Cut(ref, "/")
	if !ok || p == "" || v == "" {
		return "", "", fmt.Errorf("%q: want POOL/VOLUME, like local-h1/images/debian.qcow2 (hangar volume list prints them so)", ref)
	}
	return p, v, nil
}

// backingRef names a volume's backing file: POOL/VOLUME when it is in the
// same pool (the API gives it relative to the pool), else its path.
func backingRef(v v1.Volume) string {
	switch {
	case v.Backing == "":
		return "-"
	case path.IsAbs(v.Backing):
		return v.Backing
	}
	return volumeRef(v.Pool, v.Backing)
}

func newPool(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Manage storage pools and the pool of hosts",
		Long: `List and add storage pools: directories that hold volumes (disk images). A shared pool is
mounted at the same path on every host.

Grow the pool of hosts: join-token makes a token for a new host, credentials a client
certificate for a remote CLI, show prints the pool's CA fingerprint and etcd members.`,
		Example: "  hangar pool ls\n  hangar pool add nfs1 /mnt/nfs1 --type shared\n  hangar pool join-token --ttl 10m\n  hangar pool show"}
	list := &cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "List storage pools", Args: cobra.NoArgs,
		Long: "List storage pools with their type, host and path: every host has its own pool, local-<host> (its path is shown by that host); pools added with pool add are every host's.", Example: "  hangar pool list -o yaml",
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			ps, err := g.client().Pools(cmd.Context())
			if err != nil {
				return err
			}
			var rows [][]string
			for _, p := range ps {
				rows = append(rows, []string{p.Name, p.Type, orDash(p.Host), orDash(p.Path)})
			}
			return g.printList(cmd, ps, []string{"NAME", "TYPE", "HOST", "PATH"}, rows)
		}}
	addOutput(list, g, false)
	var typ string
	add := &cobra.Command{Use: "add NAME PATH", Short: "Add a directory pool (--type shared: mounted by every host)", Args: cobra.ExactArgs(2),
		Long:    "Record a directory as a storage pool. --type shared says every host mounts it at PATH (NFS, a cluster file system), so VMs on it can move between hosts.",
		Example: "  hangar pool add fast /srv/nvme\n  hangar pool add nfs1 /mnt/nfs1 --type shared",
		RunE: func(cmd *cobra.Command, a []string) error {
			return g.client().AddPool(cmd.Context(), v1.StoragePool{Name: a[0], Type: typ, Path: a[1]})
		}}
	add.Flags().StringVar(&typ, "type", "dir", "dir or shared")
	_ = add.RegisterFlagCompletionFunc("type", cobra.FixedCompletions([]string{"dir", "shared"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.AddCommand(list, add)
	cmd.AddCommand(poolMembership(g)...)
	cmd.AddCommand(poolSettings(g)...)
	return cmd
}

func newVolume(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "volume", Short: "Manage volumes (disk images) in storage pools",
		Long: `Manage volumes, the disk images in storage pools. A volume is named POOL/VOLUME
everywhere: hangar volume list prints that form and every verb takes it back.`,
		Example: "  hangar volume ls\n  hangar volume upload disk.qcow2 local-h1/images/disk.qcow2\n  hangar volume copy local-h1/images/disk.qcow2 local-h1/images/copy.raw"}
	var onHost string
	list := &cobra.Command{Use: "list [POOL]", Aliases: []string{"ls"}, Short: "List volumes with real and virtual size", Args: cobra.MaximumNArgs(1),
		Long:              "List the volumes of every pool (or of POOL) as POOL/VOLUME with format, virtual and real size, backing file and users (-o wide adds the chain depth).",
		Example:           "  hangar volume list\n  hangar volume list local-h1 -o wide\n  hangar volume list --no-headers | awk '{print $1}'",
		ValidArgsFunction: complete(g, g.poolNames),
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			c := g.client()
			var pools []v1.StoragePool
			if len(a) == 1 {
				pools = []v1.StoragePool{{Name: a[0]}}
			} else {
				ps, err := c.Pools(cmd.Context())
				if err != nil {
					return err
				}
				pools = ps
			}
			vs := []v1.Volume{}
			for _, p := range pools {
				h := onHost
				if p.Host != "" {
					h = "" // a host's own pool: its name says where
				}
				pv, err := c.VolumesOn(cmd.Context(), p.Name, h)
				if err != nil && len(a) == 0 && p.Host != "" {
					// Every pool listed: another host's pool may be away.
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: pool %s (host %s): %v\n", p.Name, p.Host, err)
					continue
				}
				if err != nil {
					return err
				}
				vs = append(vs, pv...)
			}
			header := []string{"NAME", "FORMAT", "VIRTUAL", "REAL", "BACKING", "USED BY"}
			if g.wide() {
				header = append(header, "CHAIN")
			}
			var rows [][]string
			for _, v := range vs {
				used := strings.Join(v.UsedBy, ",")
				if used == "" {
					used = "-"
				}
				r := []string{volumeRef(v.Pool, v.Name), v.Format, fmt.Sprintf("%d MiB", v.VirtualSize>>20), fmt.Sprintf("%d MiB", v.ActualSize>>20), backingRef(v), used}
				if g.wide() {
					r = append(r, fmt.Sprint(v.ChainDepth))
				}
				rows = append(rows, r)
			}
			return g.printList(cmd, vs, header, rows)
		}}
	addOutput(list, g, true)
	show := &cobra.Command{Use: "show POOL/VOLUME", Short: "Show a volume", Args: cobra.ExactArgs(1),
		Long: "Show one volume: format, sizes, backing file, chain depth and the VMs that use it.", Example: "  hangar volume show local-h1/images/disk.qcow2 -o json",
		ValidArgsFunction: complete(g, g.volumeRefs),
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			p, n, err := splitRef(a[0])
			if err != nil {
				return err
			}
			v, err := g.client().VolumeInfoOn(cmd.Context(), p, n, onHost)
			if err != nil {
				return err
			}
			return g.print(cmd, v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Name:\t%s\nFormat:\t%s\nVirtual size:\t%d MiB\nReal size:\t%d MiB\nBacking:\t%s\nChain depth:\t%d\nUsed by:\t%s\n",
					volumeRef(v.Pool, v.Name), v.Format, v.VirtualSize>>20, v.ActualSize>>20, backingRef(v), v.ChainDepth, orDash(strings.Join(v.UsedBy, ",")))
			})
		}}
	addOutput(show, g, false)
	for _, c := range []*cobra.Command{list, show} {
		c.Flags().StringVar(&onHost, "host", "", "for a dir pool added with pool add: the host whose directory is meant (default: the server's host; a host's own pool local-<host> names its host itself); the server forwards the request there")
	}
	list.Example += "\n  hangar volume list local-h2"
	show.Example += "\n  hangar volume show local-h2/images/disk.qcow2"
	var format string
	var size int64
	create := &cobra.Command{Use: "create POOL/VOLUME", Short: "Create an empty volume", Args: cobra.ExactArgs(1),
		Long:    "Create an empty volume of --size MiB; the format comes from the name's extension (.qcow2, .raw) unless --format.",
		Example: "  hangar volume create local-h1/shared/quorum.raw --size 1024\n  hangar volume create local-h1/data/db.qcow2 --size 20480",
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := atLeast(cmd, "size", size, 1); err != nil {
				return err
			}
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
		Long:              "Grow a volume to SIZE_MIB; a running VM's disk grows live (the guest sees the new size).",
		Example:           "  hangar volume resize local-h1/vms/web2/disk0.qcow2 4096",
		ValidArgsFunction: complete(g, g.volumeRefs),
		RunE: func(cmd *cobra.Command, a []string) error {
			p, v, err := splitRef(a[0])
			if err != nil {
				return err
			}
			var mib int64
			if _, err := fmt.Sscan(a[1], &mib); err != nil || mib < 1 {
				return fmt.Errorf("SIZE_MIB %q: want a whole number of MiB, at least 1", a[1])
			}
			c := g.client()
			op, err := c.ResizeVolume(cmd.Context(), p, v, mib, 0)
			if err != nil || op == nil {
				return err
			}
			_, err = follow(cmd, c, *op, nil, true)
			return err
		}}
	del := &cobra.Command{Use: "delete POOL/VOLUME", Aliases: []string{"rm"}, Short: "Delete a volume no VM or volume uses", Args: cobra.ExactArgs(1),
		Long: "Delete a volume; refused while a VM uses it or another volume is layered on it.", Example: "  hangar volume rm local-h1/images/old.qcow2",
		ValidArgsFunction: complete(g, g.volumeRefs),
		RunE: func(cmd *cobra.Command, a []string) error {
			p, v, err := splitRef(a[0])
			if err != nil {
				return err
			}
			return g.client().DeleteVolume(cmd.Context(), p, v)
		}}
	upload := &cobra.Command{Use: "upload FILE POOL/VOLUME", Short: "Upload a disk image (size and SHA-256 checked)", Args: cobra.ExactArgs(2),
		Long: `Upload a disk image file into a new volume. The CLI hashes the file first; the server
checks the size and SHA-256 of what arrived before the volume appears. Both passes show
their progress (bytes and rate).`,
		Example: "  hangar volume upload debian.qcow2 local-h1/images/debian.qcow2",
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
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			ref := volumeRef(p, v)
			hp := newProgress(cmd.ErrOrStderr(), "checksum "+a[0], fi.Size())
			h := sha256.New()
			n, err := io.Copy(h, &progressReader{r: f, p: hp})
			hp.finish(err == nil)
			if err != nil {
				return err
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			up := newProgress(cmd.ErrOrStderr(), "upload "+ref, n)
			_, err = g.client().UploadVolume(cmd.Context(), p, v, format, &progressReader{r: f, p: up}, n, hex.EncodeToString(h.Sum(nil)))
			up.finish(err == nil)
			if err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "volume %s uploaded (%s)\n", ref, mib(n))
			}
			return err
		}}
	upload.Flags().StringVar(&format, "format", "", "qcow2 or raw (default: from the name's extension)")
	var copyFormat string
	cp := &cobra.Command{Use: "copy POOL/VOLUME [POOL/]NEWNAME", Aliases: []string{"cp"}, Short: "Copy a volume into a new standalone one (full clone; --format converts)", Args: cobra.ExactArgs(2),
		Long: `Copy a volume, with its whole backing chain, into a new standalone volume in the same
pool (a full clone); --format (or the new name's extension) converts between qcow2 and raw.`,
		Example:           "  hangar volume copy local-h1/images/big.raw local-h1/images/big.qcow2\n  hangar volume cp local-h1/vms/web1/disk0.qcow2 backup/web1.qcow2",
		ValidArgsFunction: complete(g, g.volumeRefs),
		RunE: func(cmd *cobra.Command, a []string) error {
			p, v, err := splitRef(a[0])
			if err != nil {
				return err
			}
			dst := a[1]
			if dp, dv, ok := strings.Cut(dst, "/"); ok && dp == p {
				dst = dv // POOL/NEWNAME in the same pool, as list prints it
			}
			c := g.client()
			op, err := c.CopyVolume(cmd.Context(), p, v, dst, copyFormat, 0)
			_, err = follow(cmd, c, op, err, true)
			if err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "volume %s copied to %s\n", a[0], volumeRef(p, dst))
			}
			return err
		}}
	cp.Flags().StringVar(&copyFormat, "format", "", "qcow2 or raw (default: from the new name's extension)")
	flatten := &cobra.Command{Use: "flatten POOL/VOLUME", Short: "Merge a volume's backing chain into it (not a VM's disk)", Args: cobra.ExactArgs(1),
		Long:              "Merge a volume's backing chain into it, so that it stands alone; refused for a VM's disk.",
		Example:           "  hangar volume flatten local-h1/images/overlay.qcow2",
		ValidArgsFunction: complete(g, g.volumeRefs),
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
	cmd.AddCommand(list, show, create, resize, del, upload, cp, flatten)
	return cmd
}
