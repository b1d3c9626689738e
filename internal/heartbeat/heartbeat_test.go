package heartbeat

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBeatAndRead: each synced beat is what a fresh read sees, the counter
// only grows (also across a reopen), and the file is one fixed block.
func TestBeatAndRead(t *testing.T) {
	root := t.TempDir()
	w, err := Open(root, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Read(root, "h1"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("read before the first beat: %v, want ErrInvalid", err)
	}
	for i := uint64(1); i <= 3; i++ {
		if err := w.Beat(t.Context()); err != nil {
			t.Fatal(err)
		}
		r, err := Read(root, "h1")
		if err != nil || r.Counter != i || r.Host != "h1" || r.Written.IsZero() || w.Counter() != i {
			t.Fatalf("after beat %d: %+v %v (writer %d)", i, r, err, w.Counter())
		}
	}
	w.Close()
	fi, err := os.Stat(filepath.Join(root, DirName, "h1"))
	if err != nil || fi.Size() != recordSize {
		t.Fatalf("heartbeat file: %v %v, want %d bytes", fi, err, recordSize)
	}
	w2, err := Open(root, "h1")
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if err := w2.Beat(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r, _ := Read(root, "h1"); r.Counter != 4 {
		t.Fatalf("after a reopen: counter %d, want 4 (it goes on)", r.Counter)
	}
}

// TestReadRefuses: a record is host's own, well formed, at a host name's
// path; nothing else passes.
func TestReadRefuses(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, DirName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("h2", `{"host":"h3","counter":9,"written":"2026-12-02T00:00:00Z"}`)
	write("h4", `not json`)
	write("h5", `{"host":"h5","counter":-1}`)
	write("h6", `{"host":"h6","counter":1,"extra":true}`)
	if err := os.Symlink(filepath.Join(dir, "h2"), filepath.Join(dir, "h7")); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"h2", "h4", "h5", "h6"} {
		if _, err := Read(root, host); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", host, err)
		}
	}
	if _, err := Read(root, "h7"); err == nil || errors.Is(err, ErrInvalid) {
		t.Errorf("a symlink: %v, want an open error (not followed)", err)
	}
	for _, host := range []string{"../x", "", "H1", strings.Repeat("a", 64)} {
		if _, err := Read(root, host); err == nil {
			t.Errorf("host %q read", host)
		}
		if _, err := Open(root, host); err == nil {
			t.Errorf("host %q opened", host)
		}
	}
}
