package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNewQcow2: the images newQcow2 writes are what qemu-img create makes
// by its defaults, as qemu-img itself reads and checks them, and they hold
// data: qemu-io writes a pattern, reads it back, and the image stays clean;
// an overlay reads its backing's data through.
func TestNewQcow2(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIPPED: %s not installed (apt-get install qemu-utils): qcow2 writer NOT TESTED", tool)
		}
	}
	dir := t.TempDir()
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	type info struct {
		VirtualSize int64  `json:"virtual-size"`
		ClusterSize int64  `json:"cluster-size"`
		Backing     string `json:"backing-filename"`
		BackingFmt  string `json:"backing-filename-format"`
		Specific    struct {
			Data struct {
				Compat       string `json:"compat"`
				RefcountBits int    `json:"refcount-bits"`
				Corrupt      bool   `json:"corrupt"`
				LazyRefcount bool   `json:"lazy-refcounts"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	inspect := func(path string) info {
		t.Helper()
		var i info
		if err := json.Unmarshal([]byte(run("qemu-img", "info", "-f", "qcow2", "--output=json", path)), &i); err != nil {
			t.Fatal(err)
		}
		run("qemu-img", "check", "-q", "-f", "qcow2", path)
		return i
	}
	base := filepath.Join(dir, "base.qcow2")
	if err := newQcow2(base, 64<<20, "", ""); err != nil {
		t.Fatal(err)
	}
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 63M 1M", base)
	if i := inspect(base); i.VirtualSize != 64<<20 || i.ClusterSize != 65536 || i.Backing != "" ||
		i.Specific.Data.Compat != "1.1" || i.Specific.Data.RefcountBits != 16 || i.Specific.Data.Corrupt {
		t.Fatalf("base: %+v", i)
	}
	for _, size := range []int64{512, 1 << 20, 600 << 20, 3 << 40} { // one L1 entry, two, a multi-cluster L1
		p := filepath.Join(dir, "empty.qcow2")
		os.Remove(p)
		if err := newQcow2(p, size, "", ""); err != nil {
			t.Fatal(err)
		}
		if i := inspect(p); i.VirtualSize != size {
			t.Fatalf("%d bytes: %+v", size, i)
		}
		n := fmt.Sprint(min(size, 64<<10))
		run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 "+n, "-c", "read -P 0x5a 0 "+n, p)
		inspect(p)
	}
	overlay := filepath.Join(dir, "vm", "disk0.qcow2")
	os.MkdirAll(filepath.Dir(overlay), 0o700)
	if err := newQcow2(overlay, 128<<20, "../base.qcow2", "qcow2"); err != nil {
		t.Fatal(err)
	}
	if i := inspect(overlay); i.VirtualSize != 128<<20 || i.Backing != "../base.qcow2" || i.BackingFmt != "qcow2" {
		t.Fatalf("overlay: %+v", i)
	}
	out := run("qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 1M", "-c", "read -P 0xcd 63M 1M", "-c", "read -P 0 64M 64M",
		"-c", "write -P 0xef 512k 64k", "-c", "read -P 0xef 512k 64k", overlay)
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("overlay reads: %s", out)
	}
	inspect(overlay)
	if err := newQcow2(overlay, 1<<20, "", ""); !errors.Is(err, os.ErrExist) {
		t.Errorf("over an existing file: %v, want it refused", err)
	}
	for _, bad := range []struct {
		size       int64
		back, bfmt string
	}{{0, "", ""}, {1000, "", ""}, {-512, "", ""}, {1 << 60, "", ""}, {1 << 20, "b.qcow2", ""}, {1 << 20, strings.Repeat("a", 1024), "qcow2"}} {
		if err := newQcow2(filepath.Join(dir, "bad.qcow2"), bad.size, bad.back, bad.bfmt); !errors.Is(err, ErrInvalid) {
			t.Errorf("newQcow2(%d, %q, %q): %v, want ErrInvalid", bad.size, bad.back, bad.bfmt, err)
		}
	}
}
