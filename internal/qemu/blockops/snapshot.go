package blockops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	"hangar/internal/qemu/qmp"
)

// Snapshot puts a new qcow2 overlay on top of every disk in one QMP
// transaction: all disks switch at the same instant, or none does.
//
// For each disk it creates overlayPaths[disk.Name] (absolute, must not
// exist) with qemu-img, backed by the disk's current top by absolute path,
// and blockdev-adds it with "backing": null; then one transaction of
// blockdev-snapshot actions attaches the old tops as backing files and makes
// the overlays active. It returns the new tops, in the order of disks, with
// new unique node names ("drive-disk0-s1", …).
//
// On failure the added nodes are removed and the created files deleted; the
// VM keeps its old tops. If the outcome of the transaction cannot be known
// (the monitor connection was lost), the files are kept and the error says
// so: QEMU may be writing to them.
func Snapshot(ctx context.Context, mon *qmp.Client, disks []Disk, overlayPaths map[string]string) (tops []Disk, err error) {
	if len(disks) == 0 {
		return nil, errors.New("snapshot: no disks")
	}
	nodes, err := queryNodes(ctx, mon)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}

	type plan struct {
		disk     Disk
		size     int64
		overlay  string
		node     string // format node
		fileNode string // its protocol node, a child owned by it
	}
	plans := make([]plan, 0, len(disks))
	taken := map[string]bool{} // node names given out
	seenDisk := map[string]bool{}
	seenNode := map[string]bool{}
	seenPath := map[string]bool{}
	for _, d := range disks {
		if seenDisk[d.Name] || seenNode[d.Node] {
			return nil, fmt.Errorf("snapshot %s: disk given twice", d.Name)
		}
		seenDisk[d.Name], seenNode[d.Node] = true, true
		n, err := lookup(nodes, d)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", d.Name, err)
		}
		if d.Path == "" {
			d.Path = plainPath(n.Image.Filename)
		}
		if d.Format == "" {
			d.Format = n.Drv
		}
		if d.Format != n.Drv {
			return nil, fmt.Errorf("snapshot %s: node %s is %s, not %s", d.Name, d.Node, n.Drv, d.Format)
		}
		overlay := overlayPaths[d.Name]
		switch {
		case overlay == "":
			return nil, fmt.Errorf("snapshot %s: no overlay path", d.Name)
		case !filepath.IsAbs(overlay):
			return nil, fmt.Errorf("snapshot %s: overlay path %q is not absolute", d.Name, overlay)
		case seenPath[overlay]:
			return nil, fmt.Errorf("snapshot %s: overlay path %s given twice", d.Name, overlay)
		}
		seenPath[overlay] = true
		names, err := freeNodeNames(nodes, taken, "s", "drive-"+d.Name, "file-"+d.Name)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", d.Name, err)
		}
		plans = append(plans, plan{disk: d, size: n.Image.VirtualSize, overlay: overlay,
			node: names[0], fileNode: names[1]})
	}

	// created counts the plans whose overlay file exists; the node of each
	// of them may have been added (also when blockdev-add's answer was lost).
	created := 0
	keepFiles := false
	defer func() {
		if err == nil || created == 0 {
			return
		}
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		names := make([]string, created)
		for i := range created {
			names[i] = plans[i].node
		}
		left := dropNodes(cctx, mon, names)
		for _, p := range plans[:created] {
			if keepFiles || left[p.node] {
				slog.Warn("snapshot rollback: keeping overlay file qemu may use", "file", p.overlay, "node", p.node)
				continue
			}
			if rerr := os.Remove(p.overlay); rerr != nil {
				slog.Warn("snapshot rollback: cannot delete overlay", "file", p.overlay, "err", rerr)
			}
		}
	}()

	for _, p := range plans {
		if err := mustNotExist(p.overlay); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", p.disk.Name, err)
		}
		err := createImage(ctx, "-f", "qcow2", "-F", p.disk.Format, "-b", p.disk.Path, "-u",
			p.overlay, strconv.FormatInt(p.size, 10))
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", p.disk.Name, err)
		}
		created++
		if err := ownLike(p.overlay, p.disk.Path); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", p.disk.Name, err)
		}
		// The protocol node is defined inline, so blockdev-del of the format
		// node removes both.
		args := map[string]any{"driver": "qcow2", "node-name": p.node, "discard": "unmap",
			"file": fileNodeOptions(p.fileNode, p.overlay), "backing": nil}
		if err := mon.Execute(ctx, "blockdev-add", args, nil); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", p.disk.Name, err)
		}
	}

	actions := make([]map[string]any, 0, len(plans))
	overlays := make([]string, 0, len(plans))
	for _, p := range plans {
		actions = append(actions, map[string]any{"type": "blockdev-snapshot",
			"data": map[string]string{"node": p.disk.Node, "overlay": p.node}})
		overlays = append(overlays, p.node)
	}
	// The transaction is quick; it is not abandoned half-way when ctx ends,
	// so its outcome is known unless the connection breaks.
	tctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if err := mon.Execute(tctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		var qe *qmp.Error
		if !errors.As(err, &qe) {
			applied, qerr := overlaysAttached(tctx, mon, overlays)
			switch {
			case qerr != nil:
				keepFiles = true
				return nil, fmt.Errorf("snapshot: outcome unknown, overlay files kept: %w", err)
			case applied:
				slog.Warn("snapshot: transaction answer lost but applied", "err", err)
				err = nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
	}

	tops = make([]Disk, len(plans))
	for i, p := range plans {
		tops[i] = Disk{Name: p.disk.Name, Node: p.node, Path: p.overlay, Format: "qcow2"}
	}
	return tops, nil
}

// overlaysAttached tells whether the overlay nodes have their backing
// attached, i.e. whether the snapshot transaction took effect.
func overlaysAttached(ctx context.Context, mon *qmp.Client, overlays []string) (bool, error) {
	nodes, err := queryNodes(ctx, mon)
	if err != nil {
		return false, err
	}
	for _, o := range overlays {
		if n, ok := nodes[o]; !ok || n.Image.BackingImage == nil {
			return false, nil
		}
	}
	return true, nil
}
