package secrets

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSealOpen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "secrets.key")
	b, err := LoadOrCreate(p)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v %v", st.Mode().Perm(), err)
	}
	const secret = "#cloud-config\npassword: hunter2\n"
	s1, s2 := b.Seal(secret), b.Seal(secret)
	if strings.Contains(s1, "hunter2") || s1 == s2 || !IsSealed(s1) {
		t.Fatalf("sealed values %q %q", s1, s2)
	}
	// The same key file opens it after a restart.
	b2, err := LoadOrCreate(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b2.Open(s1); err != nil || got != secret {
		t.Fatalf("open: %q %v", got, err)
	}
	// Another key, a changed byte, garbage: refused.
	other, _ := LoadOrCreate(filepath.Join(t.TempDir(), "k"))
	tampered := s1[:len(s1)-4] + "AAA="
	for _, bad := range []struct {
		b *Box
		s string
	}{{other, s1}, {b, tampered}, {b, "sealed:v1:!!"}, {b, "plain text"}, {b, "sealed:v1:"}} {
		if _, err := bad.b.Open(bad.s); !errors.Is(err, ErrOpen) {
			t.Errorf("open %q: %v, want ErrOpen", bad.s, err)
		}
	}
	// A key file others can read is refused.
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(p); err == nil {
		t.Errorf("a world-readable key file was accepted")
	}
}
