package storage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestMemo: a value is remembered for a file version, run again once the
// file changes (a write, a change of metadata), never remembered when the
// run failed or the file changed under it, and not for a non-regular file.
func TestMemo(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	var c memo[int]
	runs := 0
	f := func() (int, error) { runs++; return runs, nil }
	for i := 0; i < 3; i++ {
		if v, err := c.do(path, "raw", f); err != nil || v != 1 {
			t.Fatalf("call %d: %d %v, want the first run's 1", i, v, err)
		}
	}
	if v, _ := c.do(path, "qcow2", f); v != 2 {
		t.Fatalf("another format: %d, want a run of its own", v)
	}
	if err := os.WriteFile(path, []byte("two"), 0o600); err != nil { // same size, new bytes
		t.Fatal(err)
	}
	if v, _ := c.do(path, "raw", f); v != 3 {
		t.Fatalf("after a write: %d, want a new run", v)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.do(path, "raw", f); v != 4 {
		t.Fatalf("after a chmod: %d, want a new run", v)
	}
	boom := errors.New("boom")
	if _, err := c.do(path, "x", func() (int, error) { return 0, boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if v, _ := c.do(path, "x", f); v != 5 {
		t.Fatalf("after a failed run: %d, want a new run (failures are not kept)", v)
	}
	changing := func() (int, error) {
		runs++
		return runs, os.WriteFile(path, []byte("three"), 0o644)
	}
	if v, _ := c.do(path, "y", changing); v != 6 {
		t.Fatal(v)
	}
	if v, _ := c.do(path, "y", f); v != 7 {
		t.Fatalf("after a run the file changed under: %d, want a new run", v)
	}
	if v, _ := c.do(dir, "raw", f); v != 8 {
		t.Fatal(v)
	}
	if v, _ := c.do(dir, "raw", f); v != 9 {
		t.Fatalf("a directory: %d, want no memory of it", v)
	}
}
