package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func newPool(t testing.TB) *Pool {
	t.Helper()
	needQemuImg(t)
	p, err := OpenPool("t", TypeDir, filepath.Join(t.TempDir(), "pool"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// qemuImgT runs qemu-img and fails the test on error.
func qemuImgT(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qemuIO runs qemu-io commands on an image.
func qemuIO(t testing.TB, format, path string, cmds ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, path)
	if out, err := exec.Command("qemu-io", args...).CombinedOutput(); err != nil || strings.Contains(string(out), "failed") {
		t.Fatalf("qemu-io %v: %v: %s", args, err, out)
	}
}

// sameContent compares the guest-visible content of two images.
func sameContent(t testing.TB, a, aFormat, b, bFormat string) bool {
	t.Helper()
	err := exec.Command("qemu-img", "compare", "-q", "-f", aFormat, "-F", bFormat, a, b).Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return false
	}
	t.Fatalf("qemu-img compare %s %s: %v", a, b, err)
	return false
}

func fileSHA(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func rawInfo(t testing.TB, path string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(qemuImgT(t, "info", "-U", "-f", "qcow2", "--output=json", path)), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func mustNotExist(t testing.TB, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists (%v), want nothing left", p, err)
		}
	}
}

// leftovers lists the entries of dir (recursively) whose names start with prefix.
func leftovers(t testing.TB, dir, prefix string) []string {
	t.Helper()
	var found []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), prefix) {
			found = append(found, path)
		}
		return nil
	})
	return found
}
