package cloudinit

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	v1 "hangar/api/v1"
)

func TestSeedISO(t *testing.T) {
	if _, err := exec.LookPath("genisoimage"); err != nil {
		t.Skip("genisoimage not installed (apt-get install genisoimage)")
	}
	p := filepath.Join(t.TempDir(), "seed.iso")
	old := syscall.Umask(0o022) // an ordinary umask would leave it 0644
	defer syscall.Umask(old)
	if err := Seed(context.Background(), p, "web1", v1.CloudInit{UserData: "#cloud-config\nhostname: web1\n"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("seed ISO mode %v (%v), want 0600: it holds the user-data", st.Mode().Perm(), err)
	}
	// ISO 9660 primary volume descriptor at 32 KiB: "CD001", label at +40.
	if string(b[0x8001:0x8006]) != "CD001" || !bytes.HasPrefix(b[0x8028:], []byte("cidata")) {
		t.Fatalf("not an ISO labelled cidata: %q %q", b[0x8001:0x8006], b[0x8028:0x8030])
	}
	for _, want := range []string{"#cloud-config", "instance-id: web1"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("seed lacks %q", want)
		}
	}
}
