package agent

import (
	"strings"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/vm"
)

func TestParseHugepages(t *testing.T) {
	free, page, err := parseHugepages([]byte("MemTotal: 100 kB\nHugePages_Total:       0\nHugePages_Free:        3\nHugepagesize:       2048 kB\n"))
	if err != nil || free != 3 || page != 2048 {
		t.Fatalf("parse: %d %d %v", free, page, err)
	}
	if _, _, err := parseHugepages([]byte("HugePages_Free: x\n")); err == nil {
		t.Fatal("a bogus count parsed")
	}
	if free, page, err := parseHugepages([]byte("MemTotal: 100 kB\n")); err != nil || free != 0 || page != 0 {
		t.Fatalf("no huge pages: %d %d %v", free, page, err)
	}
}

// TestHugepagesRefused: a VM asking for huge pages is refused naming the
// field under TCG (its padded RAM) and on a KVM host without enough free.
func TestHugepagesRefused(t *testing.T) {
	s := v1.VMSpec{Name: "big", MemoryMiB: 256, Resources: &v1.Resources{Hugepages: true}}
	for _, c := range []struct {
		accel         string
		free, pageKiB int64
		want          string
	}{
		{"tcg", 1000, 2048, "8 KiB pad"},
		{"kvm", 0, 2048, "0 free huge pages"},
		{"kvm", 127, 2048, "needs 128"},
		{"kvm", 10, 1 << 20, "no whole number"},
		{"kvm", 128, 2048, ""},
	} {
		p := vm.HugepagesProblem(s, "h1", c.accel, c.free, c.pageKiB)
		if (c.want == "") != (p == "") || !strings.Contains(p, c.want) {
			t.Errorf("%s, %d free of %d KiB: %q, want %q", c.accel, c.free, c.pageKiB, p, c.want)
		}
	}
	a := &Agent{}
	a.cfg.Host, a.cfg.Caps.Accel = "h1", "tcg"
	if err := a.checkHugepages(s); err == nil || !strings.Contains(err.Error(), "huge pages need KVM") {
		t.Errorf("start under tcg: %v", err)
	}
}
