// Package blockops holds the QMP mechanics of live storage operations on a
// running VM: external snapshots, active commit, point-in-time backups,
// saving and loading RAM state, growing disks and reading backing chains.
//
// It knows QEMU's block graph only through QMP: a disk is addressed by the
// node name of its current top format node (config.NodeName at start,
// other names once overlays are put on top). Functions here do not persist
// anything; the caller records the new tops and deletes files it no longer
// needs.
package blockops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"hangar/internal/qemu/qmp"
)

// Disk is one disk's current top image as QEMU has it open.
type Disk struct {
	Name   string // spec disk name, e.g. "disk0"
	Node   string // format node name QEMU uses now (initially config.NodeName(Name); overlays get new names)
	Path   string // file of that node
	Format string // qcow2 or raw
}

// qemuImg is the image tool used to create overlay and backup files.
const qemuImg = "qemu-img"

// maxNodeName is the longest node name QEMU accepts (BlockDriverState's
// node_name is 32 bytes with the NUL).
const maxNodeName = 31

// cleanupTimeout bounds the undo steps that run after ctx has ended.
const cleanupTimeout = 30 * time.Second

// pollInterval is how often job and migration progress is read.
const pollInterval = 100 * time.Millisecond

// blockNode is one entry of query-named-block-nodes.
type blockNode struct {
	NodeName     string    `json:"node-name"`
	Drv          string    `json:"drv"` // format or protocol driver: qcow2, raw, file, ...
	BackingDepth int       `json:"backing_file_depth"`
	Image        imageInfo `json:"image"`
}

// imageInfo is QEMU's ImageInfo: one image and, nested, its backing chain.
type imageInfo struct {
	Filename     string     `json:"filename"` // may be "json:{...}", see plainPath
	VirtualSize  int64      `json:"virtual-size"`
	BackingImage *imageInfo `json:"backing-image"`
}

// protocolDrivers are the drivers of nodes that sit under a format node.
var protocolDrivers = map[string]bool{"file": true, "host_device": true, "host_cdrom": true}

// queryNodes returns every named block node, with backing chains.
func queryNodes(ctx context.Context, mon *qmp.Client) (map[string]blockNode, error) {
	var list []blockNode
	if err := mon.Execute(ctx, "query-named-block-nodes", nil, &list); err != nil {
		return nil, err
	}
	nodes := make(map[string]blockNode, len(list))
	for _, n := range list {
		nodes[n.NodeName] = n
	}
	return nodes, nil
}

// lookup finds d's node, checking that it is the file d says it is.
func lookup(nodes map[string]blockNode, d Disk) (blockNode, error) {
	n, ok := nodes[d.Node]
	if !ok {
		return n, fmt.Errorf("no block node %q", d.Node)
	}
	if protocolDrivers[n.Drv] {
		return n, fmt.Errorf("block node %q is a %s protocol node, not a format node", d.Node, n.Drv)
	}
	if d.Path != "" && !samePath(plainPath(n.Image.Filename), d.Path) {
		return n, fmt.Errorf("block node %q is %s, not %s", d.Node, n.Image.Filename, d.Path)
	}
	return n, nil
}

// samePath tells whether two names are the same file.
func samePath(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// plainPath returns the file name of a node's filename. QEMU renders a
// node whose options cannot be told by a file name alone (for example an
// overlay whose backing was attached at run time while its header names
// the backing file differently) as "json:{...}"; the file is then the
// innermost "file"."filename".
func plainPath(name string) string {
	rest, ok := strings.CutPrefix(name, "json:")
	if !ok {
		return name
	}
	var opts map[string]any
	if json.Unmarshal([]byte(rest), &opts) != nil {
		return name
	}
	for {
		if f, ok := opts["filename"].(string); ok {
			return f
		}
		child, ok := opts["file"].(map[string]any)
		if !ok {
			return name
		}
		opts = child
	}
}

// Chain returns the backing chain of a disk as QEMU sees it: the paths of
// its images from the top (d.Node) to the base.
func Chain(ctx context.Context, mon *qmp.Client, d Disk) ([]string, error) {
	nodes, err := queryNodes(ctx, mon)
	if err != nil {
		return nil, fmt.Errorf("chain %s: %w", d.Name, err)
	}
	n, err := lookup(nodes, Disk{Name: d.Name, Node: d.Node})
	if err != nil {
		return nil, fmt.Errorf("chain %s: %w", d.Name, err)
	}
	var paths []string
	for img := &n.Image; img != nil; img = img.BackingImage {
		paths = append(paths, plainPath(img.Filename))
	}
	return paths, nil
}

// BlockResize grows a disk of a running VM to newSize bytes (block_resize
// on its node); the guest is told of the new size. Shrinking is refused:
// it would cut off data the guest may use.
func BlockResize(ctx context.Context, mon *qmp.Client, d Disk, newSize int64) error {
	nodes, err := queryNodes(ctx, mon)
	if err != nil {
		return fmt.Errorf("resize %s: %w", d.Name, err)
	}
	n, err := lookup(nodes, d)
	if err != nil {
		return fmt.Errorf("resize %s: %w", d.Name, err)
	}
	switch cur := n.Image.VirtualSize; {
	case newSize < cur:
		return fmt.Errorf("resize %s: new size %d is smaller than the current %d", d.Name, newSize, cur)
	case newSize == cur:
		return nil
	}
	args := map[string]any{"node-name": d.Node, "size": newSize}
	if err := mon.Execute(ctx, "block_resize", args, nil); err != nil {
		return fmt.Errorf("resize %s: %w", d.Name, err)
	}
	return nil
}

// idSeq makes job ids, fd names and node names unique within this process;
// the time part keeps them apart from what an earlier agent left in QEMU.
var idSeq atomic.Uint64

func uniqueID(prefix string) string {
	return fmt.Sprintf("%s-%s%d", prefix, strconv.FormatInt(time.Now().UnixNano()%(1<<40), 36), idSeq.Add(1))
}

// freeNodeNames returns, for the smallest n ≥ 1 where all are free (not
// a node name yet, nor taken), the names <base>-<tag><n> for each base,
// checking QEMU's length limit.
func freeNodeNames(nodes map[string]blockNode, taken map[string]bool, tag string, bases ...string) ([]string, error) {
	for i := 1; ; i++ {
		names := make([]string, len(bases))
		free := true
		for j, b := range bases {
			names[j] = fmt.Sprintf("%s-%s%d", b, tag, i)
			if len(names[j]) > maxNodeName {
				return nil, fmt.Errorf("node name %q is longer than qemu's %d characters", names[j], maxNodeName)
			}
			if _, ok := nodes[names[j]]; ok || taken[names[j]] {
				free = false
			}
		}
		if free {
			for _, n := range names {
				taken[n] = true
			}
			return names, nil
		}
	}
}

// createImage runs qemu-img create with args.
func createImage(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, qemuImg, append([]string{"create", "-q"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if msg == "" {
			return fmt.Errorf("qemu-img create: %w", err)
		}
		return fmt.Errorf("qemu-img create: %w: %s", err, msg)
	}
	return nil
}

// ownLike gives a new image the owner and group of ref, mode 0600: the
// QEMU that has ref open (as the VM's own uid when it runs unprivileged)
// must open the new file too. Nothing happens when ref is "" or when the
// new file is a symlink (it was just created: someone swapped it).
func ownLike(path, ref string) error {
	if ref == "" {
		return nil
	}
	st, err := os.Stat(ref)
	if err != nil {
		return fmt.Errorf("owner of %s: %w", ref, err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("set owner of %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Chown(int(sys.Uid), int(sys.Gid)); err != nil {
		return fmt.Errorf("set owner of %s: %w", path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("set mode of %s: %w", path, err)
	}
	return nil
}

// mustNotExist refuses to put a new image over an existing file.
func mustNotExist(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s: %w", path, os.ErrExist)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// fileNodeOptions are the protocol-node options config.Argv gives disks,
// so that new nodes behave like the ones QEMU started with.
func fileNodeOptions(node, path string) map[string]any {
	return map[string]any{"driver": "file", "node-name": node, "filename": path, "aio": "threads",
		"cache": map[string]any{"direct": false, "no-flush": false}, "discard": "unmap"}
}

// blockdevDel removes a node added with blockdev-add.
func blockdevDel(ctx context.Context, mon *qmp.Client, node string) error {
	return mon.Execute(ctx, "blockdev-del", map[string]string{"node-name": node}, nil)
}

// dropNodes removes nodes that may have been added with blockdev-add
// (newest first; names never added are fine) and returns those that still
// exist afterwards, whose files QEMU may be using. If that cannot be told,
// all of them count as still there.
func dropNodes(ctx context.Context, mon *qmp.Client, names []string) map[string]bool {
	for i := len(names) - 1; i >= 0; i-- {
		if err := blockdevDel(ctx, mon, names[i]); err != nil {
			slog.Debug("blockdev-del in rollback", "node", names[i], "err", err)
		}
	}
	left := map[string]bool{}
	nodes, err := queryNodes(ctx, mon)
	for _, n := range names {
		if _, ok := nodes[n]; ok || err != nil {
			left[n] = true
		}
	}
	return left
}

// cleanupCtx is for undo steps: they must run even when ctx was cancelled,
// but not forever.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}
