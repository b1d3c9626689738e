package storage

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const guestImage = "/var/cache/hangar/guest/hangar-guest.qcow2"

// benchVolume makes images/bench.qcow2, 256 MiB virtual, with realistic
// data: the test guest's disk (if built) in the first half, then 32 MiB
// of incompressible and 32 MiB of text-like data, the rest unallocated.
func benchVolume(b *testing.B, p *Pool) string {
	b.Helper()
	raw := filepath.Join(b.TempDir(), "bench.raw")
	if _, err := os.Stat(guestImage); err == nil {
		qemuImgT(b, "convert", "-f", "qcow2", "-O", "raw", guestImage, raw)
	} else {
		b.Logf("%s not built: generated data only", guestImage)
	}
	f, err := os.OpenFile(raw, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewChaCha8([32]byte{1}))
	noise := make([]byte, 32<<20)
	for i := 0; i+8 <= len(noise); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			noise[i+j] = byte(v >> (8 * j))
		}
	}
	var text strings.Builder
	for i := 0; text.Len() < 32<<20; i++ {
		text.WriteString("Nov 23 12:00:00 web1 nginx[812]: 10.0.0.")
		text.WriteString(string(rune('0' + i%10)))
		text.WriteString(` - - "GET /index.html HTTP/1.1" 200 6123 "-" "curl/8.5"` + "\n")
	}
	if _, err := f.WriteAt(noise, 160<<20); err != nil {
		b.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(text.String()[:32<<20]), 192<<20); err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(256 << 20); err != nil {
		b.Fatal(err)
	}
	dst, err := p.Resolve("images/bench.qcow2")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		b.Fatal(err)
	}
	qemuImgT(b, "convert", "-f", "raw", "-O", "qcow2", raw, dst)
	return dst
}

// BenchmarkCopyVsQemuImg compares Pool.Copy (chain check, convert with
// progress parsing, fsync, link into place, dir fsync, describe) with a
// plain qemu-img convert of the same volume (which leaves its output in
// the page cache), and with convert + fsync, rotating the order.
func BenchmarkCopyVsQemuImg(b *testing.B) {
	needQemuImg(b)
	p := newPool(b)
	ctx := context.Background()
	src := benchVolume(b, p)
	v, err := p.Volume(ctx, "images/bench.qcow2")
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("source: %d MiB virtual, %d MiB allocated", v.VirtualSize>>20, v.ActualSize>>20)
	plainDst := filepath.Join(filepath.Dir(src), "plain.qcow2")
	var tCopy, tPlain, tPlainSync time.Duration
	// Each timed run starts with no dirty pages left by the one before.
	timed := func(total *time.Duration, f func()) {
		syscall.Sync()
		start := time.Now()
		f()
		*total += time.Since(start)
	}
	runCopy := func() {
		timed(&tCopy, func() {
			if _, err := p.Copy(ctx, "images/bench.qcow2", "images/copy.qcow2", "", func(float64) {}); err != nil {
				b.Fatal(err)
			}
		})
		if err := p.DeleteVolume(ctx, "images/copy.qcow2"); err != nil {
			b.Fatal(err)
		}
	}
	plain := func(total *time.Duration, sync bool) {
		timed(total, func() {
			if out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", src, plainDst).CombinedOutput(); err != nil {
				b.Fatalf("qemu-img convert: %v: %s", err, out)
			}
			if sync {
				if err := syncFile(plainDst); err != nil {
					b.Fatal(err)
				}
			}
		})
		if err := os.Remove(plainDst); err != nil {
			b.Fatal(err)
		}
	}
	runs := []func(){runCopy, func() { plain(&tPlain, false) }, func() { plain(&tPlainSync, true) }}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range runs { // rotate the order
			runs[(i+j)%len(runs)]()
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(tCopy.Milliseconds())/n, "copy-ms/op")
	b.ReportMetric(float64(tPlain.Milliseconds())/n, "qemu-img-ms/op")
	b.ReportMetric(float64(tPlainSync.Milliseconds())/n, "qemu-img+fsync-ms/op")
	b.ReportMetric(tCopy.Seconds()/tPlain.Seconds(), "copy/qemu-img")
	b.ReportMetric(tCopy.Seconds()/tPlainSync.Seconds(), "copy/qemu-img+fsync")
}
