package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "hangar/api/v1"
)

func TestVolumeNames(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	for _, c := range []struct{ name, format string }{
		{"images/x.vmdk", ""}, {"images/x", ""}, {"images/.x.qcow2", ""}, {"images/x.qcow2.part", ""},
		{"images/x.qcow2", "raw"}, {"images/x.raw", "qcow2"}, {"images/x.img", "qcow2"}, {"a//b.qcow2", ""},
		{"a/./b.qcow2", ""}, {"a/../b.qcow2", ""}, {"-o.qcow2", ""}, {"nbd:x.qcow2", ""}, {"images/", ""},
	} {
		if _, err := p.CreateVolume(ctx, c.name, c.format, 1<<20); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateVolume(%q, %q) = %v, want ErrInvalid", c.name, c.format, err)
		}
	}
	if _, err := p.CreateVolume(ctx, "images/x.qcow2", "", 1000); !errors.Is(err, ErrInvalid) {
		t.Errorf("size not a multiple of 512: %v", err)
	}
	if _, err := p.CreateVolume(ctx, "images/x.qcow2", "", 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("size 0: %v", err)
	}
	if leftover := leftovers(t, p.Path, "x"); len(leftover) > 0 {
		t.Errorf("left behind: %v", leftover)
	}
}

func TestCreateListInfo(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	a, err := p.CreateVolume(ctx, "images/a.qcow2", "qcow2", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if a.Pool != "t" || a.Name != "images/a.qcow2" || a.Format != "qcow2" || a.VirtualSize != 64<<20 || a.ChainDepth != 1 || a.Backing != "" {
		t.Fatalf("created %+v", a)
	}
	full, _ := p.Resolve("images/a.qcow2")
	qemuIO(t, "qcow2", full, "write -P 0x11 0 4M")
	if _, err := p.CreateVolume(ctx, "images/b.raw", "", 32<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateVolume(ctx, "images/c.img", "raw", 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateVolume(ctx, "images/a.qcow2", "", 1<<20); !errors.Is(err, ErrExists) {
		t.Fatalf("create existing: %v", err)
	}
	// Things that are not volumes.
	for name, data := range map[string]string{"images/notes.txt": "x", "images/d.qcow2.part": "x", ".hidden/e.qcow2": "x", "images/broken.qcow2": "not an image"} {
		path := filepath.Join(p.Path, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a.qcow2", filepath.Join(p.Path, "images/alias.qcow2")); err != nil {
		t.Fatal(err)
	}
	vols, err := p.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range vols {
		names = append(names, v.Name)
	}
	if want := []string{"images/a.qcow2", "images/b.raw", "images/c.img"}; !slices.Equal(names, want) {
		t.Fatalf("Volumes = %v, want %v", names, want)
	}
	a = vols[0]
	if a.VirtualSize != 64<<20 || a.ActualSize < 4<<20 || a.ActualSize > 8<<20 {
		t.Errorf("a: virtual %d, actual %d; want 64 MiB and a bit over 4 MiB", a.VirtualSize, a.ActualSize)
	}
	if b := vols[1]; b.Format != "raw" || b.VirtualSize != 32<<20 || b.ActualSize > 1<<20 {
		t.Errorf("b (sparse raw): %+v", b)
	}
	got, err := p.Volume(ctx, "images/a.qcow2")
	if err != nil || got != a {
		t.Errorf("Volume = %+v, %v; listed %+v", got, err, a)
	}
	if _, err := p.Volume(ctx, "images/none.qcow2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing volume: %v", err)
	}
}

func TestOverlayRelativeBackingSurvivesMove(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	if _, err := p.CreateVolume(ctx, "images/base.qcow2", "", 16<<20); err != nil {
		t.Fatal(err)
	}
	base, _ := p.Resolve("images/base.qcow2")
	qemuIO(t, "qcow2", base, "write -P 0xaa 0 2M")
	ov, err := p.CreateOverlay(ctx, "templates/t1/disk0.qcow2", "images/base.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if ov.Backing != "images/base.qcow2" || ov.ChainDepth != 2 || ov.VirtualSize != 16<<20 || ov.Format != "qcow2" {
		t.Fatalf("overlay %+v", ov)
	}
	ovPath, _ := p.Resolve("templates/t1/disk0.qcow2")
	qemuIO(t, "qcow2", ovPath, "write -P 0xbb 1M 64k")
	info := rawInfo(t, ovPath)
	if bf, _ := info["backing-filename"].(string); bf != "../../images/base.qcow2" || info["backing-filename-format"] != "qcow2" {
		t.Fatalf("backing-filename %q (format %v), want ../../images/base.qcow2 (qcow2)", bf, info["backing-filename-format"])
	}
	// Reference content, standalone, outside the pool.
	ref := filepath.Join(t.TempDir(), "ref.qcow2")
	qemuImgT(t, "convert", "-f", "qcow2", "-O", "qcow2", ovPath, ref)

	moved := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.Rename(p.Path, moved); err != nil {
		t.Fatal(err)
	}
	q, err := OpenPool("t", TypeDir, moved)
	if err != nil {
		t.Fatal(err)
	}
	got, err := q.Volume(ctx, "templates/t1/disk0.qcow2")
	if err != nil || got.Backing != "images/base.qcow2" || got.ChainDepth != 2 {
		t.Fatalf("after move: %+v, %v", got, err)
	}
	if err := q.CheckChain(ctx, "templates/t1/disk0.qcow2"); err != nil {
		t.Fatal(err)
	}
	movedOv, _ := q.Resolve("templates/t1/disk0.qcow2")
	if !sameContent(t, movedOv, "qcow2", ref, "qcow2") {
		t.Fatal("overlay content changed by the move")
	}
}

func TestTemplateRefcount(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	if _, err := p.CreateVolume(ctx, "images/base.qcow2", "", 8<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateVolume(ctx, "images/other.qcow2", "", 8<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateOverlay(ctx, "templates/t1/disk0.qcow2", "images/base.qcow2"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateOverlay(ctx, "vms/web1/disk0.qcow2", "templates/t1/disk0.qcow2"); err != nil {
		t.Fatal(err)
	}
	deps, err := p.Dependents(ctx, "images/base.qcow2")
	if want := []string{"templates/t1/disk0.qcow2", "vms/web1/disk0.qcow2"}; err != nil || !slices.Equal(deps, want) {
		t.Fatalf("Dependents(base) = %v, %v; want %v", deps, err, want)
	}
	if deps, err := p.Dependents(ctx, "images/other.qcow2"); err != nil || len(deps) != 0 {
		t.Fatalf("Dependents(other) = %v, %v", deps, err)
	}
	for _, n := range []string{"images/base.qcow2", "templates/t1/disk0.qcow2"} {
		err := p.DeleteVolume(ctx, n)
		if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "vms/web1/disk0.qcow2") {
			t.Fatalf("DeleteVolume(%s) = %v, want ErrInUse naming the clone", n, err)
		}
	}
	for _, n := range []string{"vms/web1/disk0.qcow2", "templates/t1/disk0.qcow2", "images/base.qcow2"} {
		if err := p.DeleteVolume(ctx, n); err != nil {
			t.Fatalf("DeleteVolume(%s): %v", n, err)
		}
	}
	if err := p.DeleteVolume(ctx, "images/base.qcow2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete again: %v", err)
	}
	vols, err := p.Volumes(ctx)
	if err != nil || len(vols) != 1 || vols[0].Name != "images/other.qcow2" {
		t.Fatalf("left: %+v, %v", vols, err)
	}
}

func TestChainDepth(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	if _, err := p.CreateVolume(ctx, "chain/d01.qcow2", "", 1<<20); err != nil {
		t.Fatal(err)
	}
	prev := "chain/d01.qcow2"
	for i := 2; i <= MaxChainDepth; i++ {
		name := fmt.Sprintf("chain/d%02d.qcow2", i)
		v, err := p.CreateOverlay(ctx, name, prev)
		if err != nil {
			t.Fatalf("depth %d: %v", i, err)
		}
		if v.ChainDepth != i {
			t.Fatalf("depth %d: ChainDepth %d", i, v.ChainDepth)
		}
		prev = name
	}
	if _, err := p.CreateOverlay(ctx, "chain/d17.qcow2", prev); !errors.Is(err, ErrChainTooDeep) {
		t.Fatalf("depth 17: %v, want ErrChainTooDeep", err)
	}
	mustNotExist(t, filepath.Join(p.Path, "chain/d17.qcow2"), filepath.Join(p.Path, "chain/d17.qcow2.part"))
	// CreateDisk (VM disks on an image path) has the same limit.
	deepest, _ := p.Resolve(prev)
	if _, err := p.CreateDisk(ctx, "vm1", v1.Disk{Name: "disk0", Image: deepest}); !errors.Is(err, ErrChainTooDeep) {
		t.Fatalf("CreateDisk on depth 16: %v, want ErrChainTooDeep", err)
	}
	d15, _ := p.Resolve("chain/d15.qcow2")
	if _, err := p.CreateDisk(ctx, "vm1", v1.Disk{Name: "disk1", Image: d15}); err != nil {
		t.Fatalf("CreateDisk on depth 15: %v", err)
	}
	if v, err := p.Volume(ctx, "vms/vm1/disk1.qcow2"); err != nil || v.ChainDepth != 16 || v.Backing != "chain/d15.qcow2" {
		t.Fatalf("vm disk: %+v, %v", v, err)
	}
	// Flattening the top makes room again.
	if err := p.Flatten(ctx, prev, nil); err != nil {
		t.Fatal(err)
	}
	if v, err := p.CreateOverlay(ctx, "chain/d17.qcow2", prev); err != nil || v.ChainDepth != 2 {
		t.Fatalf("overlay on flattened: %+v, %v", v, err)
	}
}

// chainWithData makes images/base.qcow2 (32 MiB) with data and an overlay
// vms/web1/disk0.qcow2 that overwrites part of it and adds more.
func chainWithData(t *testing.T, p *Pool) (base, overlay string) {
	t.Helper()
	ctx := context.Background()
	if _, err := p.CreateVolume(ctx, "images/base.qcow2", "", 32<<20); err != nil {
		t.Fatal(err)
	}
	base, _ = p.Resolve("images/base.qcow2")
	qemuIO(t, "qcow2", base, "write -P 0xaa 0 4M", "write -P 0x55 20M 1M")
	if _, err := p.CreateOverlay(ctx, "vms/web1/disk0.qcow2", "images/base.qcow2"); err != nil {
		t.Fatal(err)
	}
	overlay, _ = p.Resolve("vms/web1/disk0.qcow2")
	qemuIO(t, "qcow2", overlay, "write -P 0xbb 2M 1M", "write -P 0xcc 10M 512k")
	return base, overlay
}

func TestCopyFlattensChain(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	base, overlay := chainWithData(t, p)
	baseSHA := fileSHA(t, base)
	var seen []float64
	v, err := p.Copy(ctx, "vms/web1/disk0.qcow2", "images/full.qcow2", "", func(f float64) { seen = append(seen, f) })
	if err != nil {
		t.Fatal(err)
	}
	if v.Backing != "" || v.ChainDepth != 1 || v.VirtualSize != 32<<20 || v.Format != "qcow2" {
		t.Fatalf("copy %+v", v)
	}
	if len(seen) == 0 || seen[len(seen)-1] != 1 || !slices.IsSorted(seen) {
		t.Errorf("progress %v: want increasing to 1", seen)
	}
	full, _ := p.Resolve("images/full.qcow2")
	if !sameContent(t, full, "qcow2", overlay, "qcow2") {
		t.Fatal("copy differs from the overlay")
	}
	if info := rawInfo(t, full); info["backing-filename"] != nil {
		t.Fatalf("copy has a backing file: %v", info["backing-filename"])
	}
	// To raw as well.
	if _, err := p.Copy(ctx, "vms/web1/disk0.qcow2", "images/full.raw", "raw", nil); err != nil {
		t.Fatal(err)
	}
	fullRaw, _ := p.Resolve("images/full.raw")
	if !sameContent(t, fullRaw, "raw", overlay, "qcow2") {
		t.Fatal("raw copy differs from the overlay")
	}
	if got := fileSHA(t, base); got != baseSHA {
		t.Fatal("Copy changed the base")
	}
	if _, err := p.Copy(ctx, "vms/web1/disk0.qcow2", "images/full.qcow2", "", nil); !errors.Is(err, ErrExists) {
		t.Fatalf("copy onto existing: %v", err)
	}
	if _, err := p.Copy(ctx, "vms/web1/disk0.qcow2", "images/x.qcow2", "raw", nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("format mismatch: %v", err)
	}
	if _, err := p.Copy(ctx, "images/none.qcow2", "images/y.qcow2", "", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing source: %v", err)
	}
	mustNotExist(t, filepath.Join(p.Path, "images/x.qcow2"), filepath.Join(p.Path, "images/y.qcow2"))
}

func TestCopyCancelLeavesNothing(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	if _, err := p.CreateVolume(context.Background(), "images/big.qcow2", "", 128<<20); err != nil {
		t.Fatal(err)
	}
	big, _ := p.Resolve("images/big.qcow2")
	qemuIO(t, "qcow2", big, "write -P 0x5a 0 128M")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := p.Copy(ctx, "images/big.qcow2", "images/copy.qcow2", "", func(float64) { cancel() })
	if err == nil {
		t.Skip("copy finished before it could be cancelled")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled copy: %v", err)
	}
	mustNotExist(t, filepath.Join(p.Path, "images/copy.qcow2"), filepath.Join(p.Path, "images/copy.qcow2.part"))
}

func TestFlatten(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	_, overlay := chainWithData(t, p)
	// A clone built on the overlay must keep working.
	if _, err := p.CreateOverlay(ctx, "vms/web2/disk0.qcow2", "vms/web1/disk0.qcow2"); err != nil {
		t.Fatal(err)
	}
	clone, _ := p.Resolve("vms/web2/disk0.qcow2")
	ref := filepath.Join(t.TempDir(), "ref.qcow2")
	qemuImgT(t, "convert", "-f", "qcow2", "-O", "qcow2", overlay, ref)

	if err := os.Chmod(overlay, 0o444); err != nil {
		t.Fatal(err)
	}
	var last float64
	if err := p.Flatten(ctx, "vms/web1/disk0.qcow2", func(f float64) { last = f }); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(overlay); err != nil || st.Mode().Perm() != 0o444 {
		t.Errorf("mode after Flatten: %v, %v; want 0444 kept", st.Mode(), err)
	}
	if last != 1 {
		t.Errorf("progress ended at %v", last)
	}
	v, err := p.Volume(ctx, "vms/web1/disk0.qcow2")
	if err != nil || v.Backing != "" || v.ChainDepth != 1 {
		t.Fatalf("flattened: %+v, %v", v, err)
	}
	if !sameContent(t, overlay, "qcow2", ref, "qcow2") || !sameContent(t, clone, "qcow2", ref, "qcow2") {
		t.Fatal("content changed by Flatten")
	}
	mustNotExist(t, overlay+".part")
	// The base has no dependents any more.
	if err := p.DeleteVolume(ctx, "images/base.qcow2"); err != nil {
		t.Fatal(err)
	}
	if !sameContent(t, overlay, "qcow2", ref, "qcow2") {
		t.Fatal("flattened volume needs the deleted base")
	}
	// Already standalone: nothing to do.
	if err := p.Flatten(ctx, "vms/web1/disk0.qcow2", nil); err != nil {
		t.Fatal(err)
	}
	if err := p.Flatten(ctx, "vms/none/disk0.qcow2", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("flatten missing: %v", err)
	}
}

func TestResize(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	for _, name := range []string{"images/q.qcow2", "images/r.raw"} {
		if _, err := p.CreateVolume(ctx, name, "", 64<<20); err != nil {
			t.Fatal(err)
		}
		if err := p.Resize(ctx, name, 128<<20); err != nil {
			t.Fatal(err)
		}
		if v, err := p.Volume(ctx, name); err != nil || v.VirtualSize != 128<<20 {
			t.Fatalf("%s after grow: %+v, %v", name, v, err)
		}
		if err := p.Resize(ctx, name, 128<<20); err != nil {
			t.Fatalf("same size: %v", err)
		}
		err := p.Resize(ctx, name, 32<<20)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "33554432") || !strings.Contains(err.Error(), "134217728") {
			t.Fatalf("shrink: %v, want ErrInvalid naming both sizes", err)
		}
		if v, err := p.Volume(ctx, name); err != nil || v.VirtualSize != 128<<20 {
			t.Fatalf("%s after refused shrink: %+v, %v", name, v, err)
		}
	}
	if err := p.Resize(ctx, "images/q.qcow2", 200<<20+1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unaligned: %v", err)
	}
	if err := p.Resize(ctx, "images/none.qcow2", 200<<20); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
}

// poolFiles lists every file and directory of a pool with its size.
func poolFiles(t *testing.T, p *Pool) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(p.Path, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %d\n", path, info.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestCheckChain(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	outside := filepath.Join(t.TempDir(), "outside.qcow2")
	qemuImgT(t, "create", "-q", "-f", "qcow2", outside, "1M")
	if err := os.MkdirAll(filepath.Join(p.Path, "images"), 0o700); err != nil {
		t.Fatal(err)
	}
	in := func(name string) string { return filepath.Join(p.Path, name) }
	// Absolute backing outside, relative backing climbing out, a symlink
	// in the pool pointing out, and a json: backing.
	qemuImgT(t, "create", "-q", "-f", "qcow2", "-b", outside, "-F", "qcow2", in("images/abs.qcow2"))
	rel, _ := filepath.Rel(in("images"), outside)
	qemuImgT(t, "create", "-q", "-f", "qcow2", "-b", rel, "-F", "qcow2", in("images/rel.qcow2"))
	if err := os.Symlink(outside, in("images/lnk.qcow2")); err != nil {
		t.Fatal(err)
	}
	qemuImgT(t, "create", "-q", "-f", "qcow2", "-b", "lnk.qcow2", "-F", "qcow2", in("images/vialink.qcow2"))
	qemuImgT(t, "create", "-q", "-u", "-f", "qcow2", "-b", `json:{"driver":"file","filename":"`+outside+`"}`, "-F", "qcow2", in("images/json.qcow2"), "1M")
	for _, name := range []string{"images/abs.qcow2", "images/rel.qcow2", "images/vialink.qcow2", "images/json.qcow2"} {
		if err := p.CheckChain(ctx, name); !errors.Is(err, ErrOutsidePool) {
			t.Errorf("CheckChain(%s) = %v, want ErrOutsidePool", name, err)
		}
		if _, err := p.CreateOverlay(ctx, "vms/x/"+filepath.Base(name), name); !errors.Is(err, ErrOutsidePool) {
			t.Errorf("CreateOverlay on %s = %v, want ErrOutsidePool", name, err)
		}
	}
	// Nothing opens, copies, flattens, resizes or reports them: what they
	// point at stays unread, and no file appears in the pool.
	before := poolFiles(t, p)
	for _, name := range []string{"images/abs.qcow2", "images/rel.qcow2", "images/vialink.qcow2", "images/json.qcow2"} {
		if v, err := p.Volume(ctx, name); !errors.Is(err, ErrOutsidePool) {
			t.Errorf("Volume(%s) = %+v, %v; want ErrOutsidePool", name, v, err)
		}
		if _, err := p.Copy(ctx, name, "images/copy.qcow2", "", nil); !errors.Is(err, ErrOutsidePool) {
			t.Errorf("Copy(%s) = %v, want ErrOutsidePool", name, err)
		}
		if err := p.Flatten(ctx, name, nil); !errors.Is(err, ErrOutsidePool) {
			t.Errorf("Flatten(%s) = %v, want ErrOutsidePool", name, err)
		}
		if err := p.Resize(ctx, name, 4<<20); !errors.Is(err, ErrOutsidePool) {
			t.Errorf("Resize(%s) = %v, want ErrOutsidePool", name, err)
		}
		if _, err := p.CreateDisk(ctx, "vmx", v1.Disk{Name: "d", Image: in(name)}); !errors.Is(err, ErrOutsidePool) {
			t.Errorf("CreateDisk on %s = %v, want ErrOutsidePool", name, err)
		}
	}
	if vols, err := p.Volumes(ctx); err != nil || len(vols) != 0 {
		t.Errorf("Volumes lists escaping volumes: %+v, %v", vols, err)
	}
	if after := poolFiles(t, p); after != before {
		t.Errorf("refused requests changed the pool:\n%s\nnow:\n%s", before, after)
	}
	if _, err := p.CreateVolume(ctx, "images/ok.qcow2", "", 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateOverlay(ctx, "images/ok2.qcow2", "images/ok.qcow2"); err != nil {
		t.Fatal(err)
	}
	if err := p.CheckChain(ctx, "images/ok2.qcow2"); err != nil {
		t.Errorf("CheckChain(inside chain) = %v", err)
	}
	// A backing with no recorded format would be probed: refused. (qemu-img
	// no longer writes those; hide the backing-format header extension.)
	qemuImgT(t, "create", "-q", "-f", "qcow2", in("images/nofmt-base.qcow2"), "1M")
	qemuImgT(t, "create", "-q", "-f", "qcow2", "-b", "nofmt-base.qcow2", "-F", "qcow2", in("images/nofmt.qcow2"))
	hdr, err := os.ReadFile(in("images/nofmt.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(hdr[:4096], []byte{0xe2, 0x79, 0x2a, 0xca})
	if i < 0 {
		t.Fatal("no backing format extension in the header")
	}
	copy(hdr[i:], []byte{0x12, 0x34, 0x56, 0x78})
	if err := os.WriteFile(in("images/nofmt.qcow2"), hdr, 0o600); err != nil {
		t.Fatal(err)
	}
	if info := rawInfo(t, in("images/nofmt.qcow2")); info["backing-filename-format"] != nil {
		t.Fatalf("backing format still recorded: %v", info)
	}
	if err := p.CheckChain(ctx, "images/nofmt.qcow2"); !errors.Is(err, ErrInvalid) {
		t.Errorf("CheckChain(no backing format) = %v, want ErrInvalid", err)
	}
}

func TestPathEscapes(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	outside := t.TempDir()
	qemuImgT(t, "create", "-q", "-f", "qcow2", filepath.Join(outside, "x.qcow2"), "1M")
	if err := os.Symlink(outside, filepath.Join(p.Path, "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "x.qcow2"), filepath.Join(p.Path, "evil.qcow2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "new.qcow2"), filepath.Join(p.Path, "dangling.qcow2")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateVolume(ctx, "images/ok.qcow2", "", 1<<20); err != nil {
		t.Fatal(err)
	}
	before := leftovers(t, outside, "")
	ok := "images/ok.qcow2"
	methods := map[string]func(name string) error{
		"Volume":          func(n string) error { _, err := p.Volume(ctx, n); return err },
		"CreateVolume":    func(n string) error { _, err := p.CreateVolume(ctx, n, "", 1<<20); return err },
		"CreateOverlay":   func(n string) error { _, err := p.CreateOverlay(ctx, n, ok); return err },
		"CreateOverlay.b": func(n string) error { _, err := p.CreateOverlay(ctx, "images/ov.qcow2", n); return err },
		"Copy":            func(n string) error { _, err := p.Copy(ctx, n, "images/cp.qcow2", "", nil); return err },
		"Copy.dst":        func(n string) error { _, err := p.Copy(ctx, ok, n, "", nil); return err },
		"Flatten":         func(n string) error { return p.Flatten(ctx, n, nil) },
		"Resize":          func(n string) error { return p.Resize(ctx, n, 2<<20) },
		"DeleteVolume":    func(n string) error { return p.DeleteVolume(ctx, n) },
		"Dependents":      func(n string) error { _, err := p.Dependents(ctx, n); return err },
		"CheckChain":      func(n string) error { return p.CheckChain(ctx, n) },
		"Upload": func(n string) error {
			_, err := p.Upload(ctx, n, "raw", strings.NewReader("data"), 4, "", nil)
			return err
		},
	}
	for method, f := range methods {
		for _, name := range []string{"../x.qcow2", "/etc/x.qcow2", "a/../../x.qcow2", "out/x.qcow2", "out/new/x.qcow2",
			"evil.qcow2", "dangling.qcow2", "", "images/\x00.qcow2"} {
			if err := f(name); !errors.Is(err, ErrOutsidePool) {
				t.Errorf("%s(%q) = %v, want ErrOutsidePool", method, name, err)
			}
		}
	}
	if after := leftovers(t, outside, ""); !slices.Equal(before, after) {
		t.Errorf("files outside the pool changed: %v → %v", before, after)
	}
	mustNotExist(t, filepath.Join(p.Path, "images/ov.qcow2"), filepath.Join(p.Path, "images/cp.qcow2"))
}

func TestConcurrentClonesAndDelete(t *testing.T) {
	t.Parallel()
	p := newPool(t)
	ctx := context.Background()
	if _, err := p.CreateVolume(ctx, "images/base.qcow2", "", 1<<20); err != nil {
		t.Fatal(err)
	}
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	var delErr error
	for i := range n {
		wg.Go(func() {
			_, errs[i] = p.CreateOverlay(ctx, fmt.Sprintf("vms/vm%d/disk0.qcow2", i), "images/base.qcow2")
		})
	}
	wg.Go(func() { delErr = p.DeleteVolume(ctx, "images/base.qcow2") })
	// Racing creates of one name: exactly one wins.
	created := make([]error, n)
	for i := range n {
		wg.Go(func() { _, created[i] = p.CreateVolume(ctx, "images/same.qcow2", "", 1<<20) })
	}
	wg.Wait()
	clones, _ := p.Dependents(ctx, "images/base.qcow2")
	switch {
	case delErr == nil: // deleted before any clone: none may exist
		for i, err := range errs {
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("clone %d after the base was deleted: %v", i, err)
			}
		}
	case errors.Is(delErr, ErrInUse):
		if len(clones) == 0 {
			t.Errorf("delete refused, but no clones")
		}
	default:
		t.Fatalf("delete: %v", delErr)
	}
	wins := 0
	for _, err := range created {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, ErrExists):
			t.Errorf("racing create: %v", err)
		}
	}
	if wins != 1 {
		t.Errorf("%d racing creates succeeded, want 1", wins)
	}
}
