package blockops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"hangar/internal/qemu/qmp"
)

// Backup copies every disk, as it is at one instant, into new standalone
// qcow2 files while the VM runs: targets[disk.Name] (absolute, must not
// exist) is created with the disk's virtual size and blockdev-added, then
// one transaction starts a full blockdev-backup job per disk with
// completion-mode "grouped" (one job failing cancels the others). Guest
// writes after that instant do not reach the targets. When all jobs have
// concluded the target nodes are removed, so the files are closed and
// complete. The copy is crash-consistent: what a power cut at that instant
// would have left on the disks. progress (may be nil) gets 0..1 over all
// jobs.
//
// On failure or when ctx ends, the jobs are cancelled, the target nodes
// removed and the target files deleted.
func Backup(ctx context.Context, mon *qmp.Client, disks []Disk, targets map[string]string, progress func(float64)) (err error) {
	if len(disks) == 0 {
		return errors.New("backup: no disks")
	}
	nodes, err := queryNodes(ctx, mon)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	type plan struct {
		disk     Disk
		size     int64
		target   string
		node     string // target format node
		fileNode string // its protocol node, a child owned by it
		job      string
	}
	plans := make([]plan, 0, len(disks))
	taken := map[string]bool{} // node names given out
	seenDisk := map[string]bool{}
	seenPath := map[string]bool{}
	for _, d := range disks {
		if seenDisk[d.Name] {
			return fmt.Errorf("backup %s: disk given twice", d.Name)
		}
		seenDisk[d.Name] = true
		n, err := lookup(nodes, d)
		if err != nil {
			return fmt.Errorf("backup %s: %w", d.Name, err)
		}
		target := targets[d.Name]
		switch {
		case target == "":
			return fmt.Errorf("backup %s: no target path", d.Name)
		case !filepath.IsAbs(target):
			return fmt.Errorf("backup %s: target path %q is not absolute", d.Name, target)
		case seenPath[target]:
			return fmt.Errorf("backup %s: target path %s given twice", d.Name, target)
		}
		seenPath[target] = true
		names, err := freeNodeNames(nodes, taken, "b", "backup-"+d.Name, "bfile-"+d.Name)
		if err != nil {
			return fmt.Errorf("backup %s: %w", d.Name, err)
		}
		plans = append(plans, plan{disk: d, size: n.Image.VirtualSize, target: target,
			node: names[0], fileNode: names[1], job: uniqueID("backup-" + d.Name)})
	}
	ids := make([]string, len(plans))
	for i, p := range plans {
		ids[i] = p.job
	}

	w := watchJobs(mon)
	defer w.close()
	// created counts the plans whose target file exists; the node of each
	// of them may have been added (also when blockdev-add's answer was lost).
	created := 0
	started := false
	defer func() {
		if created == 0 {
			return
		}
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if err != nil && started {
			reapJobs(ctx, w, ids)
		}
		// The target nodes go in any case: that closes the files.
		names := make([]string, created)
		for i := range created {
			names[i] = plans[i].node
		}
		left := dropNodes(cctx, mon, names)
		if len(left) > 0 && err == nil {
			err = fmt.Errorf("backup: cannot close targets: nodes %v remain", slices.Sorted(maps.Keys(left)))
		}
		if err == nil {
			return
		}
		for _, p := range plans[:created] {
			if left[p.node] {
				slog.Warn("backup: keeping target file qemu may still use", "file", p.target, "node", p.node)
				continue
			}
			if rerr := os.Remove(p.target); rerr != nil {
				slog.Warn("backup: cannot delete target", "file", p.target, "err", rerr)
			}
		}
	}()

	for _, p := range plans {
		if err := mustNotExist(p.target); err != nil {
			return fmt.Errorf("backup %s: %w", p.disk.Name, err)
		}
		if err := createImage(ctx, "-f", "qcow2", p.target, strconv.FormatInt(p.size, 10)); err != nil {
			return fmt.Errorf("backup %s: %w", p.disk.Name, err)
		}
		created++
		if err := ownLike(p.target, p.disk.Path); err != nil {
			return fmt.Errorf("backup %s: %w", p.disk.Name, err)
		}
		args := map[string]any{"driver": "qcow2", "node-name": p.node, "file": fileNodeOptions(p.fileNode, p.target)}
		if err := mon.Execute(ctx, "blockdev-add", args, nil); err != nil {
			return fmt.Errorf("backup %s: %w", p.disk.Name, err)
		}
	}

	actions := make([]map[string]any, 0, len(plans))
	for _, p := range plans {
		actions = append(actions, map[string]any{"type": "blockdev-backup", "data": map[string]any{
			"job-id": p.job, "device": p.disk.Node, "target": p.node, "sync": "full",
			"auto-dismiss": false}})
	}
	tx := map[string]any{"actions": actions, "properties": map[string]string{"completion-mode": "grouped"}}
	started = true // from here on, jobs may exist: reap them on failure
	if err := mon.Execute(ctx, "transaction", tx, nil); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	jobs, err := w.wait(ctx, ids, progress, allConcluded)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	started = false
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	dismissJobs(cctx, mon, ids)
	if err := jobErrors(jobs); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if progress != nil {
		progress(1)
	}
	return nil
}
