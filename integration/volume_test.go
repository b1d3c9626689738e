package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// consoleExpect types cmd on the VM's serial console until the guest's
// output matches re, and returns the match.
func (s *server) consoleExpect(name, cmd string, re *regexp.Regexp) []string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := s.c.Console(ctx, name)
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close()
	got := make(chan []string, 1)
	go func() {
		var sb strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			sb.Write(buf[:n])
			if m := re.FindStringSubmatch(sb.String()); m != nil {
				got <- m
				return
			}
			if err != nil {
				got <- nil
				return
			}
		}
	}()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	_, _ = io.WriteString(conn, "\n"+cmd+"\n")
	for {
		select {
		case m := <-got:
			if m == nil {
				s.t.Fatalf("console of %s closed before %q matched", name, re)
			}
			return m
		case <-tick.C:
			_, _ = io.WriteString(conn, "\n"+cmd+"\n")
		case <-ctx.Done():
			s.t.Fatalf("no %q on the console of %s", re, name)
		}
	}
}

// TestVolumesUploadAndResize: an image uploaded with a checksum becomes a
// volume that a linked clone boots from; a wrong checksum or an escaping
// name leaves nothing; a running VM's disk grows and the guest sees it.
func TestVolumesUploadAndResize(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	f, err := os.Open(guestImage)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	upload := func(name, sha string) error {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		_, err := s.c.UploadVolume(ctx, "local-testhost", name, "qcow2", f, st.Size(), sha)
		return err
	}
	if err := upload("images/bad.qcow2", strings.Repeat("0", 64)); !isCode(err, v1.CodeInvalidArgument) {
		t.Fatalf("upload with a wrong checksum: %v", err)
	}
	if err := upload("../escape.qcow2", sum); !isCode(err, v1.CodeInvalidArgument) {
		t.Fatalf("upload outside the pool: %v", err)
	}
	if err := upload("images/guest.qcow2", sum); err != nil {
		t.Fatal(err)
	}
	vols, err := s.c.Volumes(ctx, "local-testhost")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range vols {
		names = append(names, v.Name)
	}
	if strings.Join(names, ",") != "images/guest.qcow2" {
		t.Fatalf("volumes after uploads: %v", names)
	}

	// Copy (an I/O job on the host's worker pool), here converting to raw.
	s.wait(s.c.CopyVolume(ctx, "local-testhost", "images/guest.qcow2", "images/guest-copy.raw", "raw", time.Minute))
	if v, err := s.c.VolumeInfo(ctx, "local-testhost", "images/guest-copy.raw"); err != nil || v.Format != "raw" || v.VirtualSize != 128<<20 {
		t.Fatalf("copied volume %+v %v", v, err)
	}
	if _, err := s.c.CopyVolume(ctx, "local-testhost", "images/guest.qcow2", "images/guest-copy.raw", "raw", 0); !isCode(err, v1.CodeConflict) {
		t.Fatalf("copy onto an existing volume: %v", err)
	}

	port := freePort(t)
	op, err := s.c.CreateVM(ctx, v1.VMSpec{Name: "fromvol", MemoryMiB: 256,
		Disks: []v1.Disk{{Clone: &v1.CloneSource{Volume: "local-testhost/images/guest.qcow2", Linked: true}}},
		NICs:  []v1.NIC{{Forwards: []v1.Forward{{HostPort: port, GuestPort: 80}}}}}, true, time.Minute)
	s.wait(op, err)
	s.waitReady("fromvol", 0)
	mustGuestStatus(t, port)
	if err := s.c.DeleteVolume(ctx, "local-testhost", "images/guest.qcow2"); !isCode(err, v1.CodeConflict) {
		t.Fatalf("delete of a linked clone's base: %v", err)
	}
	if err := s.c.DeleteVolume(ctx, "local-testhost", "vms/fromvol/disk0.qcow2"); !isCode(err, v1.CodeConflict) {
		t.Fatalf("delete of a running vm's disk: %v", err)
	}
	if _, err := s.c.FlattenVolume(ctx, "local-testhost", "vms/fromvol/disk0.qcow2", 0); !isCode(err, v1.CodeConflict) {
		t.Fatalf("flatten of a vm's disk: %v", err)
	}

	// Live resize: the guest's kernel sees the new size (512-byte sectors).
	before := s.consoleExpect("fromvol", "echo SZ:$(cat /sys/block/vda/size):END", regexp.MustCompile(`SZ:(\d+):END`))
	if before[1] != "262144" {
		t.Fatalf("guest disk has %s sectors, want 262144 (128 MiB)", before[1])
	}
	s.wait(s.c.ResizeDisk(ctx, "fromvol", "disk0", 256, time.Minute))
	s.consoleExpect("fromvol", "echo SZ:$(cat /sys/block/vda/size):END", regexp.MustCompile(`SZ:524288:END`))
	// Shrinking is refused before an operation starts.
	_, err = s.c.ResizeDisk(ctx, "fromvol", "disk0", 64, time.Minute)
	var serr *v1.Error
	if !errors.As(err, &serr) || serr.Code != v1.CodeInvalidArgument || serr.Field != "sizeMiB" {
		t.Fatalf("shrink: %v", err)
	}
}
