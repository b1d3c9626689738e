package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

func TestIOReason(t *testing.T) {
	st := &v1.VMStatus{IOErrors: []v1.DiskIOError{
		{Disk: "data-1", Operation: "write", Message: "No space left on device", NoSpace: true},
		{Disk: "disk0", Operation: "read", Message: "Input/output error"},
	}}
	r := ioReason(st, []string{"data-1", "disk0"})
	want := "io-error: disk data-1: write: No space left on device (no space); disk disk0: read: Input/output error; resumes when the storage answers"
	if r != want {
		t.Fatalf("reason\n%s\nwant\n%s", r, want)
	}
	if got := ioReasonDisks(r); got != "data-1 disk0" {
		t.Fatalf("disks of the reason: %q", got)
	}
	st.State, st.Reason = v1.StatePaused, r
	now := time.Now().UTC()
	markIOResumed(st, now)
	if st.State != v1.StateRunning || st.Reason != "" || st.IOErrors[0].Resumed == nil || !st.IOErrors[1].Resumed.Equal(now) {
		t.Fatalf("after resume: %+v", st)
	}
	if !strings.HasPrefix(ioReason(&v1.VMStatus{}, nil), v1.ReasonIOError+": ") {
		t.Fatal("a pause without a known disk still names io-error")
	}
	if d := (blockDevice{QDev: "/machine/peripheral/dev-data-1/virtio-backend"}).disk(); d != "data-1" {
		t.Fatalf("disk of a virtio device: %q", d)
	}
	if d := (blockDevice{QDev: "dev-legacy"}).disk(); d != "legacy" {
		t.Fatalf("disk of an ide device: %q", d)
	}
}

func TestProbeStorage(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk0.qcow2")
	if err := os.WriteFile(disk, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := probeStorage(disk); err != nil {
		t.Fatalf("probe of a healthy directory: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("the probe left files: %v", ents)
	}
	if err := probeStorage(filepath.Join(dir, "gone.qcow2")); err == nil {
		t.Fatal("probe of a missing file succeeded")
	}
	link := filepath.Join(dir, "link.qcow2")
	if err := os.Symlink(disk, link); err != nil {
		t.Fatal(err)
	}
	if err := probeStorage(link); err == nil {
		t.Fatal("probe followed a symlink")
	}
}
