package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hostPathsFixture lays out a data dir with the default pool, a run dir, a
// second pool, an import dir and files around them.
type hostPathsFixture struct {
	data, run, imp, other, outside string
	pools                          []*Pool
	h                              *HostPaths
}

func newHostPathsFixture(t *testing.T) hostPathsFixture {
	t.Helper()
	base := t.TempDir()
	f := hostPathsFixture{data: filepath.Join(base, "data"), run: filepath.Join(base, "run"),
		imp: filepath.Join(base, "imports"), other: filepath.Join(base, "pool2"), outside: filepath.Join(base, "outside")}
	for _, d := range []string{f.data, f.run, f.imp, f.other, f.outside, filepath.Join(f.imp, "sub")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	def, err := OpenDirPool("default", filepath.Join(f.data, "pools", "default"))
	if err != nil {
		t.Fatal(err)
	}
	p2, err := OpenDirPool("p2", f.other)
	if err != nil {
		t.Fatal(err)
	}
	f.pools = []*Pool{def, p2}
	write := func(p, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, p string) {
		t.Helper()
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(f.outside, "secret"), "canary")
	write(filepath.Join(f.data, "etcd", "db"), "etcd")
	write(filepath.Join(f.imp, "disk.qcow2"), "image")
	write(filepath.Join(f.imp, "sub", "cd.iso"), "iso")
	write(filepath.Join(def.Path, "images", "base.qcow2"), "image")
	write(filepath.Join(def.Path, "images", "cd.iso"), "iso")
	write(filepath.Join(def.Path, "images", ".hidden.iso"), "iso")
	write(filepath.Join(def.Path, "images", "half.qcow2.part"), "part")
	write(filepath.Join(def.Path, "vms", "web", "cidata.iso"), "seed with passwords")
	write(filepath.Join(f.other, "iso", "x.iso"), "iso")
	link(filepath.Join(f.outside, "secret"), filepath.Join(def.Path, "images", "out.qcow2"))
	link(filepath.Join(f.outside, "secret"), filepath.Join(f.imp, "out.iso"))
	link("../../outside/secret", filepath.Join(f.imp, "sub", "rel.iso"))
	link(filepath.Join(f.data, "etcd", "db"), filepath.Join(f.imp, "etcd.img"))
	link(filepath.Join(f.imp, "disk.qcow2"), filepath.Join(f.outside, "to-import.qcow2"))
	link(filepath.Join(def.Path, "images", "base.qcow2"), filepath.Join(f.outside, "to-pool.qcow2"))
	link(f.imp, filepath.Join(base, "imports-link"))
	// The import dir is configured through a symlink: it counts where it leads.
	f.h, err = NewHostPaths([]string{filepath.Join(base, "imports-link")}, []string{f.data, f.run})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestHostPathsSource(t *testing.T) {
	f := newHostPathsFixture(t)
	def := f.pools[0]
	ok := func(path string) string { return path }
	cases := []struct {
		name string
		path string
		kind SourceKind
		want error  // nil: accepted
		real string // the file accepted
	}{
		{"image in pool", filepath.Join(def.Path, "images/base.qcow2"), SourceImage, nil, ok(filepath.Join(def.Path, "images/base.qcow2"))},
		{"iso in pool", filepath.Join(def.Path, "images/cd.iso"), SourceISO, nil, filepath.Join(def.Path, "images/cd.iso")},
		{"iso in second pool", filepath.Join(f.other, "iso/x.iso"), SourceISO, nil, filepath.Join(f.other, "iso/x.iso")},
		{"image in import dir", filepath.Join(f.imp, "disk.qcow2"), SourceImage, nil, filepath.Join(f.imp, "disk.qcow2")},
		{"iso below import dir", filepath.Join(f.imp, "sub/cd.iso"), SourceISO, nil, filepath.Join(f.imp, "sub/cd.iso")},
		{"import from import dir", filepath.Join(f.imp, "disk.qcow2"), SourceImport, nil, filepath.Join(f.imp, "disk.qcow2")},
		{"symlink into import dir", filepath.Join(f.outside, "to-import.qcow2"), SourceImage, nil, filepath.Join(f.imp, "disk.qcow2")},
		{"symlink into pool", filepath.Join(f.outside, "to-pool.qcow2"), SourceImage, nil, filepath.Join(def.Path, "images/base.qcow2")},

		{"/etc/shadow image", "/etc/shadow", SourceImage, ErrOutsidePool, ""},
		{"/etc/shadow iso", "/etc/shadow", SourceISO, ErrOutsidePool, ""},
		{"/etc/shadow import", "/etc/shadow", SourceImport, ErrOutsidePool, ""},
		{"file outside", filepath.Join(f.outside, "secret"), SourceImage, ErrOutsidePool, ""},
		{"traversal out of import dir", f.imp + "/../outside/secret", SourceImage, ErrInvalid, ""},
		{"traversal to shadow", f.imp + "/../../../../../../etc/shadow", SourceISO, ErrInvalid, ""},
		{"unclean path", f.imp + "//disk.qcow2", SourceImage, ErrInvalid, ""},
		{"pool symlink out", filepath.Join(def.Path, "images/out.qcow2"), SourceImage, ErrOutsidePool, ""},
		{"import dir symlink out", filepath.Join(f.imp, "out.iso"), SourceISO, ErrOutsidePool, ""},
		{"import dir relative symlink out", filepath.Join(f.imp, "sub/rel.iso"), SourceISO, ErrOutsidePool, ""},
		{"import dir symlink to etcd", filepath.Join(f.imp, "etcd.img"), SourceImport, ErrOutsidePool, ""},
		{"etcd db", filepath.Join(f.data, "etcd/db"), SourceImport, ErrOutsidePool, ""},
		{"another vm's seed", filepath.Join(def.Path, "vms/web/cidata.iso"), SourceISO, ErrOutsidePool, ""},
		{"hidden pool file", filepath.Join(def.Path, "images/.hidden.iso"), SourceISO, ErrInvalid, ""},
		{"temporary pool file", filepath.Join(def.Path, "images/half.qcow2.part"), SourceImage, ErrInvalid, ""},
		{"pool directory", filepath.Join(def.Path, "images"), SourceImage, ErrInvalid, ""},
		{"import dir itself", f.imp, SourceImport, ErrInvalid, ""},
		{"OVF directory in an import dir", filepath.Join(f.imp, "sub"), SourceImport, nil, filepath.Join(f.imp, "sub")},
		{"directory as an image", filepath.Join(f.imp, "sub"), SourceImage, ErrInvalid, ""},
		{"missing", filepath.Join(f.imp, "missing.qcow2"), SourceImage, ErrNoImage, ""},
		{"under a file", "/etc/passwd/sub", SourceImage, ErrNoImage, ""},
		{"relative", "disk.qcow2", SourceImage, ErrInvalid, ""},
		{"empty", "", SourceISO, ErrInvalid, ""},
		{"NUL", filepath.Join(f.imp, "disk.qcow2") + "\x00x", SourceImage, ErrInvalid, ""},
		{"json protocol", `json:{"driver":"file","filename":"/etc/shadow"}`, SourceImage, ErrInvalid, ""},
		{"nbd protocol", "nbd://127.0.0.1:10809/x", SourceImport, ErrInvalid, ""},
		{"file protocol", "file:/etc/shadow", SourceISO, ErrInvalid, ""},
		{"300-char element", "/" + strings.Repeat("a", 300), SourceImage, ErrInvalid, ""},
		{"long path", strings.Repeat("/aaaaaaaa", 600), SourceImage, ErrInvalid, ""},
		{"char device", "/dev/null", SourceImport, ErrOutsidePool, ""},
		{"kernel file", "/proc/self/environ", SourceImport, ErrOutsidePool, ""},
		{"unknown kind", filepath.Join(f.imp, "disk.qcow2"), SourceKind("x"), ErrInvalid, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := f.h.Source(c.path, c.kind, f.pools)
			if c.want == nil {
				if err != nil || got.Path != c.real {
					t.Fatalf("Source(%q) = %+v, %v; want %s", c.path, got, err, c.real)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("Source(%q) = %+v, %v; want %v", c.path, got, err, c.want)
			}
		})
	}
}

// TestHostPathsDevices: P2V reads a block device only when it is named by,
// or lies in, an import directory, and only for an import; character
// devices never.
func TestHostPathsDevices(t *testing.T) {
	var dev string
	for _, d := range []string{"/dev/loop0", "/dev/sda", "/dev/vda", "/dev/nvme0n1", "/dev/ram0"} {
		if st, err := os.Stat(d); err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
			dev = d
			break
		}
	}
	if dev == "" {
		t.Skip("no block device node on this machine")
	}
	data, run := t.TempDir(), t.TempDir()
	none, err := NewHostPaths(nil, []string{data, run})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := none.Source(dev, SourceImport, nil); !errors.Is(err, ErrOutsidePool) {
		t.Fatalf("device without import dir: %v", err)
	}
	for _, dirs := range [][]string{{dev}, {"/dev"}} {
		h, err := NewHostPaths(dirs, []string{data, run})
		if err != nil {
			t.Fatal(err)
		}
		if f, err := h.Source(dev, SourceImport, nil); err != nil || !f.Device {
			t.Fatalf("import-dir %v: import %s = %+v, %v", dirs, dev, f, err)
		}
		for _, k := range []SourceKind{SourceImage, SourceISO} {
			if _, err := h.Source(dev, k, nil); !errors.Is(err, ErrInvalid) {
				t.Fatalf("import-dir %v: %s %s = %v, want ErrInvalid", dirs, k, dev, err)
			}
		}
	}
	h, err := NewHostPaths([]string{"/dev"}, []string{data, run})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Source("/dev/null", SourceImport, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("char device from /dev: %v", err)
	}
}

func TestNewHostPathsRefusesImportDirs(t *testing.T) {
	base := t.TempDir()
	data, run := filepath.Join(base, "data"), filepath.Join(base, "run")
	file := filepath.Join(base, "file")
	for _, d := range []string{data, run} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"/", "/etc", "/usr", "/proc", "/sys/kernel", "/tmp", "/var/lib", "relative", "",
		filepath.Join(base, "missing"), file, data, filepath.Join(data, "sub"), base, run, "/dev/null"} {
		if _, err := NewHostPaths([]string{d}, []string{data, run}); err == nil {
			t.Errorf("import dir %q accepted", d)
		}
	}
}

func TestHostPathsPoolDir(t *testing.T) {
	f := newHostPathsFixture(t)
	base := filepath.Dir(f.data)
	fresh := filepath.Join(base, "fresh")
	if err := os.Mkdir(fresh, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(f.data, filepath.Join(base, "data-link")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path string
		ok         bool
	}{
		{"fresh dir", fresh, true},
		{"root", "/", false},
		{"etc", "/etc", false},
		{"proc sys", "/proc/sys", false},
		{"sys", "/sys", false},
		{"dev shm", "/dev/shm", false},
		{"boot", "/boot", false},
		{"usr local", "/usr/local", false},
		{"var lib", "/var/lib", false},
		{"run", "/run", false},
		{"root home", "/root", false},
		{"tmp", "/tmp", false},
		{"data dir", f.data, false},
		{"data dir through a symlink", filepath.Join(base, "data-link"), false},
		{"inside data dir", filepath.Join(f.data, "etcd"), false},
		{"containing data dir", base, false},
		{"run dir", f.run, false},
		{"import dir", f.imp, false},
		{"inside import dir", filepath.Join(f.imp, "sub"), false},
		{"another pool", f.other, false},
		{"inside another pool", filepath.Join(f.other, "iso"), false},
		{"default pool", f.pools[0].Path, false},
		{"missing", filepath.Join(base, "missing"), false},
		{"under a file", "/etc/passwd/sub", false},
		{"a file", filepath.Join(f.outside, "secret"), false},
		{"relative", "pools/x", false},
		{"traversal", fresh + "/../fresh", false},
		{"NUL", fresh + "\x00", false},
		{"300-char element", "/" + strings.Repeat("p", 300), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			real, err := f.h.PoolDir("new", c.path, f.pools)
			if c.ok != (err == nil) {
				t.Fatalf("PoolDir(%q) = %q, %v; want ok=%v", c.path, real, err, c.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("PoolDir(%q) = %v, want ErrInvalid", c.path, err)
			}
		})
	}
	// A recorded pool checked again is not "inside itself".
	if _, err := f.h.PoolDir("p2", f.other, f.pools); err != nil {
		t.Fatalf("recheck of pool p2: %v", err)
	}
}
