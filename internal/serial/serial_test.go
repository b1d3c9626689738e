package serial

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWaitForFindsMarkerAfterOffset(t *testing.T) {
	p := filepath.Join(t.TempDir(), "serial.log")
	old := "HANGAR-GUEST-READY boot_id=1111 hostname=old\n"
	if err := os.WriteFile(p, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("noise\r\nHANGAR-GUEST-READY boot_id=abcd-ef hostname=web1\r\n")
		f.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, off, err := WaitFor(ctx, p, int64(len(old)), ReadyMarker)
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != "abcd-ef" || m[2] != "web1" {
		t.Fatalf("match %q", m)
	}
	if off != Size(p) {
		t.Fatalf("offset %d, size %d", off, Size(p))
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if _, _, err := WaitFor(ctx2, p, off, ReadyMarker); err == nil {
		t.Fatal("found a marker past the last one")
	}
}
