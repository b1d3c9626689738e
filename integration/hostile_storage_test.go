package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// hc is a hostile case with the code its status stands for.
func hc(name, method, path, body string, status int, field string) hostileCase {
	return hostileCase{name: name, method: method, path: path, body: body, status: status, field: field}
}

// TestHostileStorage: requests that name host files outside the storage
// pools and import directories, pools in system or Hangar directories,
// images whose backing chains or data files leave their pool, protocol
// names, traversal and symlinks are refused with 400 naming the field —
// before any work is accepted — and neither read nor write anything: no
// byte of a canary file outside the pools reaches a pool, no file appears
// in the pools, no pool or VM is recorded.
func TestHostileStorage(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	pool := filepath.Join(s.dataDir, "pools", "default")
	images := filepath.Join(pool, "images")
	if err := os.MkdirAll(images, 0o700); err != nil {
		t.Fatal(err)
	}
	// The canary: a file outside every pool and import dir, standing in
	// for /etc/shadow, whose content must never show up anywhere.
	outside := t.TempDir()
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	canaryText := "CANARY-" + hex.EncodeToString(secret) + "\n"
	canary := filepath.Join(outside, "canary")
	if err := os.WriteFile(canary, bytes.Repeat([]byte(canaryText), 1<<16/len(canaryText)+1)[:1<<16], 0o600); err != nil {
		t.Fatal(err)
	}
	qimg := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	// In-pool images that point out of the pool.
	qimg("create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", filepath.Join(images, "shadow.qcow2"), "1M")
	qimg("create", "-q", "-f", "qcow2", "-u", "-b", canary, "-F", "raw", filepath.Join(images, "canary.qcow2"), "1M")
	rel, _ := filepath.Rel(images, canary)
	qimg("create", "-q", "-f", "qcow2", "-u", "-b", rel, "-F", "raw", filepath.Join(images, "climb.qcow2"), "1M")
	qimg("create", "-q", "-f", "qcow2", "-u", "-b", `json:{"driver":"raw","file":{"driver":"file","filename":"`+canary+`"}}`, "-F", "raw", filepath.Join(images, "json.qcow2"), "1M")
	dataFile := filepath.Join(outside, "data.raw")
	qimg("create", "-q", "-f", "qcow2", "-o", "data_file="+dataFile+",data_file_raw=on", filepath.Join(images, "datafile.qcow2"), "64K")
	if err := os.WriteFile(dataFile, []byte(strings.Repeat(canaryText, 1<<16/len(canaryText)+1)[:1<<16]), 0o600); err != nil {
		t.Fatal(err)
	}
	qimg("create", "-q", "-f", "qcow2", filepath.Join(images, "base.qcow2"), "1M")
	qimg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", filepath.Join(images, "top.qcow2"))
	if err := os.Symlink(canary, filepath.Join(images, "link.raw")); err != nil {
		t.Fatal(err)
	}
	// Import-dir files that point out of it.
	if err := os.Symlink(canary, filepath.Join(s.importDir, "link.iso")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(canary, filepath.Join(s.importDir, "link.qcow2")); err != nil {
		t.Fatal(err)
	}
	for name, extent := range map[string]string{"abs.vmdk": canary, "climb.vmdk": "../" + filepath.Base(outside) + "/canary"} {
		desc := "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 128 FLAT \"" + extent + "\" 0\n"
		if err := os.WriteFile(filepath.Join(s.importDir, name), []byte(desc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	okISO := filepath.Join(s.importDir, "ok.iso")
	if err := os.WriteFile(okISO, make([]byte, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	// A running VM with an empty cdrom (for live media changes and disk
	// resizes) and a pool volume.
	s.createGuest("cdvm", func(sp *v1.VMSpec) { sp.Disks = append(sp.Disks, v1.Disk{Name: "cd0", Media: "cdrom"}) })
	if status, body, err := s.c.Raw(ctx, "POST", "/api/v1/pools/local-testhost/volumes", []byte(`{"name":"images/small.qcow2","sizeMiB":16}`)); err != nil || status != 201 {
		t.Fatalf("create volume: %d %s %v", status, body, err)
	}
	freshPool := t.TempDir()

	vmWith := func(disk string) string { return `{"name":"evil","memoryMiB":128,"disks":[` + disk + `]}` }
	image := func(p string) string { return vmWith(fmt.Sprintf(`{"image":%q}`, p)) }
	iso := func(p string) string { return vmWith(fmt.Sprintf(`{"media":"cdrom","image":%q}`, p)) }
	imp := func(p string) string { return fmt.Sprintf(`{"path":%q,"name":"evil"}`, p) }
	diskImport := func(p, format string) string {
		return vmWith(fmt.Sprintf(`{"import":{"path":%q,"format":%q}}`, p, format))
	}
	media := func(p string) string { return fmt.Sprintf(`{"disk":"cd0","image":%q}`, p) }
	poolAt := func(p string) string { return fmt.Sprintf(`{"name":"evil","type":"dir","path":%q}`, p) }
	vol := func(name, action string) string {
		return "/api/v1/pools/local-testhost/volumes/" + url.PathEscape(name) + action
	}
	long := "/" + strings.Repeat("x", 300)
	traversal := s.importDir + "/../" + filepath.Base(outside) + "/canary"
	cases := []hostileCase{
		// Files outside the pools and import directories.
		hc("image /etc/shadow", "POST", "/api/v1/vms", image("/etc/shadow"), 400, "disks[0].image"),
		hc("image canary", "POST", "/api/v1/vms", image(canary), 400, "disks[0].image"),
		hc("image traversal", "POST", "/api/v1/vms", image(traversal), 400, "disks[0].image"),
		hc("image symlink in import dir", "POST", "/api/v1/vms", image(filepath.Join(s.importDir, "link.qcow2")), 400, "disks[0].image"),
		hc("image symlink in pool", "POST", "/api/v1/vms", image(filepath.Join(images, "link.raw")), 400, "disks[0].image"),
		hc("image in another vm's dir", "POST", "/api/v1/vms", image(filepath.Join(pool, "vms", "cdvm", "disk0.qcow2")), 400, "disks[0].image"),
		hc("image etcd db", "POST", "/api/v1/vms", image(filepath.Join(s.dataDir, "etcd", "member", "snap", "db")), 400, "disks[0].image"),
		hc("image NUL", "POST", "/api/v1/vms", vmWith(`{"image":"`+s.importDir+`/ok.iso\u0000"}`), 400, "disks[0].image"),
		hc("image 300-char element", "POST", "/api/v1/vms", image(long), 400, "disks[0].image"),
		hc("image json:", "POST", "/api/v1/vms", image(`json:{"driver":"file","filename":"/etc/shadow"}`), 400, "disks[0].image"),
		hc("image nbd:", "POST", "/api/v1/vms", image("nbd://127.0.0.1:10809/x"), 400, "disks[0].image"),
		hc("image file:", "POST", "/api/v1/vms", image("file:/etc/shadow"), 400, "disks[0].image"),
		hc("image device", "POST", "/api/v1/vms", image("/dev/zero"), 400, "disks[0].image"),
		hc("iso /etc/shadow", "POST", "/api/v1/vms", iso("/etc/shadow"), 400, "disks[0].image"),
		hc("iso canary", "POST", "/api/v1/vms", iso(canary), 400, "disks[0].image"),
		hc("iso traversal", "POST", "/api/v1/vms", iso(traversal), 400, "disks[0].image"),
		hc("iso symlink in import dir", "POST", "/api/v1/vms", iso(filepath.Join(s.importDir, "link.iso")), 400, "disks[0].image"),
		hc("iso another vm's seed dir", "POST", "/api/v1/vms", iso(filepath.Join(pool, "vms", "cdvm", "disk0.qcow2")), 400, "disks[0].image"),
		hc("media /etc/shadow", "POST", "/api/v1/vms/cdvm/media", media("/etc/shadow"), 400, "image"),
		hc("media canary", "POST", "/api/v1/vms/cdvm/media", media(canary), 400, "image"),
		hc("media traversal", "POST", "/api/v1/vms/cdvm/media", media(traversal), 400, "image"),
		hc("media symlink out", "POST", "/api/v1/vms/cdvm/media", media(filepath.Join(s.importDir, "link.iso")), 400, "image"),
		hc("media json:", "POST", "/api/v1/vms/cdvm/media", media(`json:{"driver":"file","filename":"/etc/shadow"}`), 400, "image"),
		hc("import /etc/shadow", "POST", "/api/v1/imports", imp("/etc/shadow"), 400, "path"),
		hc("import canary", "POST", "/api/v1/imports", imp(canary), 400, "path"),
		hc("import traversal", "POST", "/api/v1/imports", imp(traversal), 400, "path"),
		hc("import symlink out", "POST", "/api/v1/imports", imp(filepath.Join(s.importDir, "link.qcow2")), 400, "path"),
		hc("import vmdk extent absolute", "POST", "/api/v1/imports", imp(filepath.Join(s.importDir, "abs.vmdk")), 400, "path"),
		hc("import vmdk extent climbing", "POST", "/api/v1/imports", imp(filepath.Join(s.importDir, "climb.vmdk")), 400, "path"),
		hc("import nbd:", "POST", "/api/v1/imports", imp("nbd://127.0.0.1:10809/x"), 400, "path"),
		hc("import json:", "POST", "/api/v1/imports", imp(`json:{"driver":"file","filename":"/etc/shadow"}`), 400, "path"),
		hc("import file:", "POST", "/api/v1/imports", imp("file:/etc/shadow"), 400, "path"),
		hc("import char device", "POST", "/api/v1/imports", imp("/dev/zero"), 400, "path"),
		hc("import block device not configured", "POST", "/api/v1/imports", imp("/dev/loop0"), 400, "path"),
		hc("import proc", "POST", "/api/v1/imports", imp("/proc/self/environ"), 400, "path"),
		hc("disk import /etc/shadow", "POST", "/api/v1/vms", diskImport("/etc/shadow", "raw"), 400, "disks[0].import.path"),
		hc("disk import traversal", "POST", "/api/v1/vms", diskImport(traversal, "raw"), 400, "disks[0].import.path"),
		hc("disk import vmdk extent", "POST", "/api/v1/vms", diskImport(filepath.Join(s.importDir, "abs.vmdk"), "vmdk"), 400, "disks[0].import"),
		// Pool volumes whose chains leave the pool.
		hc("info backing /etc/shadow", "GET", vol("images/shadow.qcow2", ""), "", 400, "vol"),
		hc("info backing canary", "GET", vol("images/canary.qcow2", ""), "", 400, "vol"),
		hc("info backing climbing", "GET", vol("images/climb.qcow2", ""), "", 400, "vol"),
		hc("info backing json:", "GET", vol("images/json.qcow2", ""), "", 400, "vol"),
		hc("info data file outside", "GET", vol("images/datafile.qcow2", ""), "", 400, "vol"),
		hc("info symlink out", "GET", vol("images/link.raw", ""), "", 400, "vol"),
		hc("copy backing /etc/shadow", "POST", vol("images/shadow.qcow2", "/copy"), `{"name":"images/c1.qcow2"}`, 400, "vol"),
		hc("copy backing canary", "POST", vol("images/canary.qcow2", "/copy"), `{"name":"images/c2.raw"}`, 400, "vol"),
		hc("copy data file outside", "POST", vol("images/datafile.qcow2", "/copy"), `{"name":"images/c3.qcow2"}`, 400, "vol"),
		hc("copy symlink out", "POST", vol("images/link.raw", "/copy"), `{"name":"images/c4.raw"}`, 400, "vol"),
		hc("flatten backing /etc/shadow", "POST", vol("images/shadow.qcow2", "/flatten"), ``, 400, "vol"),
		hc("flatten backing json:", "POST", vol("images/json.qcow2", "/flatten"), ``, 400, "vol"),
		hc("flatten data file outside", "POST", vol("images/datafile.qcow2", "/flatten"), ``, 400, "vol"),
		hc("resize backing outside", "POST", vol("images/canary.qcow2", "/resize"), `{"sizeMiB":64}`, 400, "vol"),
		hc("image in pool backing /etc/shadow", "POST", "/api/v1/vms", image(filepath.Join(images, "shadow.qcow2")), 400, "disks[0].image"),
		hc("image in pool data file outside", "POST", "/api/v1/vms", image(filepath.Join(images, "datafile.qcow2")), 400, "disks[0].image"),
		hc("clone backing /etc/shadow", "POST", "/api/v1/vms", vmWith(`{"clone":{"volume":"local-testhost/images/shadow.qcow2"}}`), 400, "disks[0].clone.volume"),
		hc("linked clone backing canary", "POST", "/api/v1/vms", vmWith(`{"clone":{"volume":"local-testhost/images/canary.qcow2","linked":true}}`), 400, "disks[0].clone.volume"),
		hc("clone data file outside", "POST", "/api/v1/vms", vmWith(`{"clone":{"volume":"local-testhost/images/datafile.qcow2"}}`), 400, "disks[0].clone.volume"),
		hc("attach backing json:", "POST", "/api/v1/vms", vmWith(`{"volume":"local-testhost/images/json.qcow2"}`), 400, "disks[0].volume"),
		hc("attach symlink out", "POST", "/api/v1/vms", vmWith(`{"volume":"local-testhost/images/link.raw"}`), 400, "disks[0].volume"),
		hc("attach a base others build on", "POST", "/api/v1/vms", vmWith(`{"volume":"local-testhost/images/base.qcow2"}`), 409, "disks[0].volume"),
		// Traversal in volume references.
		hc("info traversal", "GET", vol("../../../../etc/shadow", ""), "", 400, "volume"),
		{name: "upload traversal", method: "PUT", path: vol("../../x.qcow2", "/data"), ctype: "application/octet-stream", body: "QFI", status: 400, field: "volume"},
		hc("clone traversal", "POST", "/api/v1/vms", vmWith(`{"clone":{"volume":"local-testhost/../../../etc/shadow"}}`), 400, "disks[0].clone.volume"),
		hc("attach traversal", "POST", "/api/v1/vms", vmWith(`{"volume":"local-testhost/images/../../../../etc/shadow"}`), 400, "disks[0].volume"),
		hc("attach absolute", "POST", "/api/v1/vms", vmWith(`{"volume":"/etc/shadow"}`), 400, "disks[0].volume"),
		// Volume names and sizes that used to fail inside the operation.
		hc("copy to traversal", "POST", vol("images/small.qcow2", "/copy"), `{"name":"../../x.qcow2"}`, 400, "name"),
		hc("copy to hidden", "POST", vol("images/small.qcow2", "/copy"), `{"name":"images/.x.qcow2"}`, 400, "name"),
		hc("copy to bad extension", "POST", vol("images/small.qcow2", "/copy"), `{"name":"images/x.vmdk"}`, 400, "name"),
		hc("copy to mismatched format", "POST", vol("images/small.qcow2", "/copy"), `{"name":"images/x.qcow2","format":"raw"}`, 400, "format"),
		hc("copy to 300-char element", "POST", vol("images/small.qcow2", "/copy"), `{"name":"images/`+strings.Repeat("x", 300)+`.qcow2"}`, 400, "name"),
		hc("shrink volume", "POST", vol("images/small.qcow2", "/resize"), `{"sizeMiB":8}`, 400, "sizeMiB"),
		hc("shrink vm disk", "POST", "/api/v1/vms/cdvm/resize", `{"disk":"disk0","sizeMiB":16}`, 400, "sizeMiB"),
		hc("disk smaller than image", "POST", "/api/v1/vms", vmWith(fmt.Sprintf(`{"image":%q,"sizeMiB":1}`, guestImage)), 400, "disks[0].sizeMiB"),
		// Pools where none may be.
		hc("pool at /", "POST", "/api/v1/pools", poolAt("/"), 400, "path"),
		hc("pool at /etc", "POST", "/api/v1/pools", poolAt("/etc"), 400, "path"),
		hc("pool at /proc/sys", "POST", "/api/v1/pools", poolAt("/proc/sys"), 400, "path"),
		hc("pool at /dev/shm", "POST", "/api/v1/pools", poolAt("/dev/shm"), 400, "path"),
		hc("pool at /usr/local", "POST", "/api/v1/pools", poolAt("/usr/local"), 400, "path"),
		hc("pool at /var/lib", "POST", "/api/v1/pools", poolAt("/var/lib"), 400, "path"),
		hc("pool at data dir", "POST", "/api/v1/pools", poolAt(s.dataDir), 400, "path"),
		hc("pool inside data dir", "POST", "/api/v1/pools", poolAt(filepath.Join(s.dataDir, "etcd")), 400, "path"),
		hc("pool containing data dir", "POST", "/api/v1/pools", poolAt(filepath.Dir(s.dataDir)), 400, "path"),
		hc("pool at run dir", "POST", "/api/v1/pools", poolAt(s.runDir), 400, "path"),
		hc("pool inside default pool", "POST", "/api/v1/pools", poolAt(images), 400, "path"),
		hc("pool at import dir", "POST", "/api/v1/pools", poolAt(s.importDir), 400, "path"),
		hc("pool missing", "POST", "/api/v1/pools", poolAt(filepath.Join(outside, "missing")), 400, "path"),
		hc("pool shared missing", "POST", "/api/v1/pools", `{"name":"evil","type":"shared","path":"`+filepath.Join(outside, "missing")+`"}`, 400, "path"),
		hc("pool under a file", "POST", "/api/v1/pools", poolAt("/etc/passwd/sub"), 400, "path"),
		hc("pool at a file", "POST", "/api/v1/pools", poolAt(canary), 400, "path"),
		hc("pool traversal", "POST", "/api/v1/pools", poolAt(freshPool+"/../"+filepath.Base(freshPool)), 400, "path"),
		hc("pool NUL", "POST", "/api/v1/pools", `{"name":"evil","type":"dir","path":"`+freshPool+`\u0000"}`, 400, "path"),
		hc("pool 300-char element", "POST", "/api/v1/pools", poolAt(long), 400, "path"),
		hc("pool relative", "POST", "/api/v1/pools", poolAt("pools/evil"), 400, "path"),
	}
	before := treeOf(t, pool)
	tally := runHostile(t, s, cases)
	if tally.serverErrors != 0 || tally.clean4xx != len(cases) {
		t.Errorf("hostile storage suite: %+v", tally)
	}
	// Nothing was read into or written to the pool, nothing recorded.
	if after := treeOf(t, pool); after != before {
		t.Errorf("refused requests changed the pool:\n%s\nnow:\n%s", before, after)
	}
	filepath.WalkDir(s.dataDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && p != canary {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(canaryText)) {
				t.Errorf("the canary's content is in %s", p)
			}
		}
		return nil
	})
	if vms, _ := s.c.VMs(ctx); len(vms) != 1 {
		t.Errorf("vms after refused requests: %d, want 1", len(vms))
	}
	if status, body, _ := s.c.Raw(ctx, "GET", "/api/v1/pools", nil); status != 200 || strings.Contains(string(body), "evil") {
		t.Errorf("pools after refused requests: %d %s", status, body)
	}

	// The policy refuses what it must, not everything: an ISO from the
	// import dir goes in live, and a pool at a fresh directory is accepted
	// (and one inside it then is not).
	op, err := s.c.ChangeMedia(ctx, "cdvm", "cd0", okISO, time.Minute)
	s.wait(op, err)
	if status, body, _ := s.c.Raw(ctx, "POST", "/api/v1/pools", []byte(poolAt(freshPool))); status != 201 {
		t.Fatalf("pool at a fresh dir: %d %s", status, body)
	}
	sub := filepath.Join(freshPool, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	status, body, _ := s.c.Raw(ctx, "POST", "/api/v1/pools", []byte(`{"name":"evil2","type":"dir","path":"`+sub+`"}`))
	var er v1.ErrorResponse
	if status != 400 || json.Unmarshal(body, &er) != nil || er.Error == nil || er.Error.Field != "path" {
		t.Fatalf("pool inside a pool: %d %s", status, body)
	}
}

// TestBroughtInImageReleased: an image from an import directory is copied
// into images/ once for the VMs layered on it and removed with the last of
// them; an uploaded image in images/ stays.
func TestBroughtInImageReleased(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	images := filepath.Join(s.dataDir, "pools", "default", "images")
	for _, n := range []string{"r1", "r2"} {
		s.wait(s.c.CreateVM(ctx, v1.VMSpec{Name: n, MemoryMiB: 128, Disks: []v1.Disk{{Image: guestImage}}}, false, time.Minute))
	}
	copies, _ := filepath.Glob(filepath.Join(images, "hangar-guest-*.qcow2"))
	if len(copies) != 1 {
		t.Fatalf("brought-in copies: %v, want one", copies)
	}
	if status, body, err := s.c.Raw(ctx, "POST", "/api/v1/pools/local-testhost/volumes", []byte(`{"name":"images/mine.qcow2","sizeMiB":16}`)); err != nil || status != 201 {
		t.Fatalf("create volume: %d %s %v", status, body, err)
	}
	s.wait(s.c.DeleteVM(ctx, "r1", true, time.Minute))
	if _, err := os.Stat(copies[0]); err != nil {
		t.Fatalf("copy removed while r2 uses it: %v", err)
	}
	s.wait(s.c.DeleteVM(ctx, "r2", true, time.Minute))
	left := treeOf(t, images)
	if strings.Contains(left, "hangar-guest") || !strings.Contains(left, "mine.qcow2") {
		t.Fatalf("images/ after the last vm went:\n%s", left)
	}
}

// treeOf lists the files under dir with their sizes.
func treeOf(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		size := info.Size()
		if d.IsDir() {
			size = 0
		}
		fmt.Fprintf(&b, "%s %d\n", p, size)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
