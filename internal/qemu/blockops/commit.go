package blockops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"hangar/internal/qemu/qmp"
)

// Commit merges the active top of one disk into its backing image while the
// VM runs (active block-commit): it starts a commit job from top.Node into
// the node right below it, waits until the job is ready (base caught up,
// guest writes mirrored to both), completes it so that the device switches
// to the base, and waits until the job concluded. progress (may be nil)
// gets 0..1 while the data is copied.
//
// It returns the new top: the base node as QEMU names it (an automatic
// "#block…" name when QEMU opened it from an image header) and its file.
// The old top's nodes are removed, so QEMU no longer holds its file; the
// caller deletes the file.
//
// On failure or when ctx ends before the switch, the job is cancelled and
// the disk keeps top as its active layer (the base may have received part
// of the data, which the top still covers).
func Commit(ctx context.Context, mon *qmp.Client, top Disk, progress func(float64)) (Disk, error) {
	nodes, err := queryNodes(ctx, mon)
	if err != nil {
		return Disk{}, fmt.Errorf("commit %s: %w", top.Name, err)
	}
	n, err := lookup(nodes, top)
	if err != nil {
		return Disk{}, fmt.Errorf("commit %s: %w", top.Name, err)
	}
	base, err := backingNode(nodes, n)
	if err != nil {
		return Disk{}, fmt.Errorf("commit %s: %w", top.Name, err)
	}
	if top.Path == "" {
		top.Path = plainPath(n.Image.Filename)
	}

	w := watchJobs(mon)
	defer w.close()
	id := uniqueID("commit-" + top.Name)
	ids := []string{id}
	// Without base-node QEMU commits down to the bottom of the chain, into
	// the image every VM shares.
	args := map[string]any{"job-id": id, "device": top.Node, "base-node": base.NodeName,
		"auto-dismiss": false}
	if err := mon.Execute(ctx, "block-commit", args, nil); err != nil {
		var qe *qmp.Error
		if !errors.As(err, &qe) {
			reapJobs(ctx, w, ids) // it may have started before the answer was lost
		}
		return Disk{}, fmt.Errorf("commit %s: %w", top.Name, err)
	}
	slog.Debug("commit started", "disk", top.Name, "job", id, "top", top.Node, "base", base.NodeName)

	_, err = w.wait(ctx, ids, progress, func(jobs map[string]qmp.Job) (bool, error) {
		switch j := jobs[id]; j.Status {
		case jobReady:
			return true, nil
		case jobConcluded, jobNull, "aborting":
			if j.Error != "" {
				return false, errors.New(j.Error)
			}
			return false, errors.New("job ended before it was ready")
		}
		return false, nil
	})
	if err == nil {
		err = ctx.Err() // ended just as the job got ready: do not switch
	}
	if err != nil {
		reapJobs(ctx, w, ids)
		return Disk{}, fmt.Errorf("commit %s: %w", top.Name, err)
	}

	// From job-complete on, the switch is under way: finish it even if ctx
	// ends, so that the outcome is known.
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if err := mon.JobComplete(cctx, id); err != nil {
		reapJobs(ctx, w, ids)
		return Disk{}, fmt.Errorf("commit %s: %w", top.Name, err)
	}
	jobs, err := w.wait(cctx, ids, nil, allConcluded)
	if err != nil {
		// Not concluded in time, or the monitor is gone: the state of the
		// device is unknown, so nothing is cleaned up.
		return Disk{}, fmt.Errorf("commit %s: completing: %w", top.Name, err)
	}
	dismissJobs(cctx, mon, ids)
	if err := jobErrors(jobs); err != nil {
		return Disk{}, fmt.Errorf("commit %s: %w", top.Name, err)
	}
	if progress != nil {
		progress(1)
	}

	removeOldTop(cctx, mon, top)
	return Disk{Name: top.Name, Node: base.NodeName, Path: plainPath(base.Image.Filename), Format: base.Drv}, nil
}

// backingNode finds the format node right below top: the one whose image
// is top's backing image. QMP names no edges outside x-debug commands, so
// it matches what query-named-block-nodes says of both: the same file name
// (the backing image's filename is that node's own filename field) and a
// chain one shorter.
func backingNode(nodes map[string]blockNode, top blockNode) (blockNode, error) {
	b := top.Image.BackingImage
	if b == nil {
		return blockNode{}, fmt.Errorf("node %s has no backing image", top.NodeName)
	}
	var found []blockNode
	for _, c := range nodes {
		if c.NodeName == top.NodeName || protocolDrivers[c.Drv] {
			continue
		}
		if c.Image.Filename == b.Filename && c.BackingDepth == top.BackingDepth-1 {
			found = append(found, c)
		}
	}
	switch len(found) {
	case 0:
		return blockNode{}, fmt.Errorf("no node for backing image %s of %s", b.Filename, top.NodeName)
	case 1:
		return found[0], nil
	}
	names := make([]string, len(found))
	for i, c := range found {
		names[i] = c.NodeName
	}
	return blockNode{}, fmt.Errorf("backing image %s of %s is open as several nodes %v", b.Filename, top.NodeName, names)
}

// removeOldTop deletes the nodes of a committed top: they were added by the
// monitor (-blockdev or Snapshot), so QEMU keeps them, and their files open,
// until blockdev-del. A protocol node added on its own (config.Argv's
// "file-<disk>") is deleted after its format node. Failures are logged:
// the commit itself succeeded.
func removeOldTop(ctx context.Context, mon *qmp.Client, top Disk) {
	if err := blockdevDel(ctx, mon, top.Node); err != nil {
		slog.Warn("commit: cannot remove old top node", "disk", top.Name, "node", top.Node, "err", err)
		return
	}
	nodes, err := queryNodes(ctx, mon)
	if err != nil {
		slog.Warn("commit: cannot list nodes", "disk", top.Name, "err", err)
		return
	}
	for _, n := range nodes {
		if protocolDrivers[n.Drv] && samePath(plainPath(n.Image.Filename), top.Path) {
			if err := blockdevDel(ctx, mon, n.NodeName); err != nil {
				slog.Warn("commit: cannot remove old top file node", "disk", top.Name, "node", n.NodeName, "err", err)
			}
		}
	}
}

// CommitBelow merges an overlay inside a running disk's chain (not its
// active top) into the image right below it: a non-active block-commit
// from the node of overlayPath into its backing node. The layer above then
// reads its data from that base (QEMU rewrites its backing file name). The
// overlay's nodes are removed; the caller deletes its file.
func CommitBelow(ctx context.Context, mon *qmp.Client, active Disk, overlayPath string, progress func(float64)) error {
	nodes, err := queryNodes(ctx, mon)
	if err != nil {
		return fmt.Errorf("commit %s below the top: %w", active.Name, err)
	}
	n, err := lookup(nodes, active)
	if err != nil {
		return fmt.Errorf("commit %s below the top: %w", active.Name, err)
	}
	for !samePath(plainPath(n.Image.Filename), overlayPath) {
		if n, err = backingNode(nodes, n); err != nil {
			return fmt.Errorf("commit %s below the top: %s is not in its chain: %w", active.Name, overlayPath, err)
		}
	}
	if n.NodeName == active.Node {
		return fmt.Errorf("commit %s below the top: %s is the active layer (use Commit)", active.Name, overlayPath)
	}
	base, err := backingNode(nodes, n)
	if err != nil {
		return fmt.Errorf("commit %s below the top: %w", active.Name, err)
	}
	w := watchJobs(mon)
	defer w.close()
	id := uniqueID("commit-" + active.Name)
	ids := []string{id}
	args := map[string]any{"job-id": id, "device": active.Node, "top-node": n.NodeName, "base-node": base.NodeName,
		"auto-dismiss": false}
	if err := mon.Execute(ctx, "block-commit", args, nil); err != nil {
		var qe *qmp.Error
		if !errors.As(err, &qe) {
			reapJobs(ctx, w, ids)
		}
		return fmt.Errorf("commit %s below the top: %w", active.Name, err)
	}
	jobs, err := w.wait(ctx, ids, progress, allConcluded)
	if err != nil {
		reapJobs(ctx, w, ids)
		return fmt.Errorf("commit %s below the top: %w", active.Name, err)
	}
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	dismissJobs(cctx, mon, ids)
	if err := jobErrors(jobs); err != nil {
		return fmt.Errorf("commit %s below the top: %w", active.Name, err)
	}
	if progress != nil {
		progress(1)
	}
	// Snapshot added the overlay's node through the monitor: QEMU keeps it
	// (and its file) until it is deleted.
	if _, still := nodesNamed(cctx, mon, n.NodeName); still {
		removeOldTop(cctx, mon, Disk{Name: active.Name, Node: n.NodeName, Path: overlayPath})
	}
	return nil
}

func nodesNamed(ctx context.Context, mon *qmp.Client, name string) (blockNode, bool) {
	nodes, err := queryNodes(ctx, mon)
	if err != nil {
		return blockNode{}, false
	}
	n, ok := nodes[name]
	return n, ok
}
