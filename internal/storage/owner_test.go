package storage

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func owner(t *testing.T, p string) (uid, gid int, mode os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid), fi.Mode().Perm()
}

func TestGrant(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing owners needs root")
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "disk0.qcow2")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Grant(f, 200123, 200123, 0o600); err != nil {
		t.Fatal(err)
	}
	if u, g, m := owner(t, f); u != 200123 || g != 200123 || m != 0o600 {
		t.Fatalf("after Grant: %d:%d %v", u, g, m)
	}
	// -1 keeps the owner.
	if err := Grant(f, -1, 200200, 0o640); err != nil {
		t.Fatal(err)
	}
	if u, g, m := owner(t, f); u != 200123 || g != 200200 || m != 0o640 {
		t.Fatalf("after Grant(-1): %d:%d %v", u, g, m)
	}

	// A symlink to a host file is refused, and the host file is untouched.
	host := filepath.Join(dir, "shadow")
	if err := os.WriteFile(host, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "swapped.qcow2")
	if err := os.Symlink(host, link); err != nil {
		t.Fatal(err)
	}
	if err := Grant(link, 200123, 200123, 0o666); err == nil {
		t.Fatal("Grant followed a symlink")
	}
	if u, g, m := owner(t, host); u != 0 || g != 0 || m != 0o600 {
		t.Fatalf("the symlink's target changed: %d:%d %v", u, g, m)
	}
	// A second hard link (a host file linked in) is refused.
	hard := filepath.Join(dir, "hard.qcow2")
	if err := os.Link(host, hard); err != nil {
		t.Fatal(err)
	}
	if err := Grant(hard, 200123, 200123, 0o666); err == nil {
		t.Fatal("Grant changed a file with two hard links")
	}
	if err := Grant(dir, 200123, 200123, 0o600); err == nil {
		t.Fatal("Grant accepted a directory")
	}
	if err := GrantDir(dir, 0, 200123, 0o710); err != nil {
		t.Fatal(err)
	}
	if u, g, m := owner(t, dir); u != 0 || g != 200123 || m != 0o710 {
		t.Fatalf("after GrantDir: %d:%d %v", u, g, m)
	}
	if err := GrantDir(link, 0, 200123, 0o710); err == nil {
		t.Fatal("GrantDir followed a symlink")
	}
}

func TestOpenPath(t *testing.T) {
	root := t.TempDir()
	deep := filepath.Join(root, "a", "b", "c")
	if err := os.MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "a"), 0o750|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	if err := OpenPath(deep); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{
		root:                          0o701,
		filepath.Join(root, "a"):      0o751,
		filepath.Join(root, "a", "b"): 0o701,
		deep:                          0o701,
	} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: %v, want %v (traversable, not listable)", p, fi.Mode().Perm(), want)
		}
	}
	if fi, _ := os.Stat(filepath.Join(root, "a")); fi.Mode()&os.ModeSetgid == 0 {
		t.Error("OpenPath dropped the setgid bit")
	}
}
