package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestUpload(t *testing.T) {
	t.Parallel()
	needQemuImg(t)
	src := t.TempDir()
	// A qcow2 with data, a raw file, and hostile or mislabelled images.
	good := filepath.Join(src, "good.qcow2")
	qemuImgT(t, "create", "-q", "-f", "qcow2", good, "16M")
	qemuIO(t, "qcow2", good, "write -P 0x42 1M 3M")
	goodData, _ := os.ReadFile(good)
	rawData := make([]byte, 3<<20)
	_, _ = rand.Read(rawData)
	evil := filepath.Join(src, "evil.qcow2")
	qemuImgT(t, "create", "-q", "-u", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", evil, "1M")
	evilData, _ := os.ReadFile(evil)
	evilRel := filepath.Join(src, "evilrel.qcow2")
	qemuImgT(t, "create", "-q", "-u", "-f", "qcow2", "-b", "../../../../etc/shadow", "-F", "raw", evilRel, "1M")
	evilRelData, _ := os.ReadFile(evilRel)
	dataFile := filepath.Join(src, "datafile.qcow2")
	qemuImgT(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(src, "data.raw"), dataFile, "1M")
	dataFileData, _ := os.ReadFile(dataFile)

	// A qcow2 whose first refcount block is zeroed: it opens, but check
	// finds every cluster unreferenced.
	corrupt := bytes.Clone(goodData)
	rt := binary.BigEndian.Uint64(corrupt[48:])
	rb := binary.BigEndian.Uint64(corrupt[rt:])
	clear(corrupt[rb : rb+512])

	ctx := context.Background()
	t.Run("good qcow2", func(t *testing.T) {
		p := newPool(t)
		var last float64
		v, err := p.Upload(ctx, "images/good.qcow2", "qcow2", bytes.NewReader(goodData), int64(len(goodData)), sha(goodData), func(f float64) { last = f })
		if err != nil {
			t.Fatal(err)
		}
		if v.Format != "qcow2" || v.VirtualSize != 16<<20 || v.ChainDepth != 1 || last != 1 {
			t.Fatalf("uploaded %+v, progress %v", v, last)
		}
		path, _ := p.Resolve("images/good.qcow2")
		if !sameContent(t, path, "qcow2", good, "qcow2") || fileSHA(t, path) != sha(goodData) {
			t.Fatal("uploaded content differs")
		}
		if _, err := p.Upload(ctx, "images/good.qcow2", "", bytes.NewReader(goodData), int64(len(goodData)), "", nil); !errors.Is(err, ErrExists) {
			t.Fatalf("upload onto existing: %v", err)
		}
		mustNotExist(t, path+".part")
	})
	t.Run("good raw", func(t *testing.T) {
		p := newPool(t)
		v, err := p.Upload(ctx, "images/r.img", "", bytes.NewReader(rawData), int64(len(rawData)), sha(rawData), nil)
		if err != nil || v.Format != "raw" || v.VirtualSize != 3<<20 {
			t.Fatalf("uploaded %+v, %v", v, err)
		}
		path, _ := p.Resolve("images/r.img")
		if fileSHA(t, path) != sha(rawData) {
			t.Fatal("uploaded content differs")
		}
	})

	for _, c := range []struct {
		name, volume, format string
		data                 []byte
		size                 int64
		sum                  string
		want                 error
		mention              string
	}{
		{"wrong checksum", "images/x.qcow2", "qcow2", goodData, int64(len(goodData)), sha(rawData), ErrChecksum, "sha256"},
		{"short stream", "images/x.qcow2", "qcow2", goodData[:len(goodData)/2], int64(len(goodData)), sha(goodData), ErrInvalid, "declared"},
		{"long stream", "images/x.raw", "raw", append(bytes.Clone(rawData), make([]byte, 5<<20)...), int64(len(rawData)), "", ErrInvalid, "more data"},
		{"backing to /etc/passwd", "images/x.qcow2", "qcow2", evilData, int64(len(evilData)), sha(evilData), ErrInvalid, "backing file"},
		{"relative backing climbing out", "images/x.qcow2", "qcow2", evilRelData, int64(len(evilRelData)), "", ErrInvalid, "backing file"},
		{"external data file", "images/x.qcow2", "qcow2", dataFileData, int64(len(dataFileData)), "", ErrInvalid, "data file"},
		{"raw declared qcow2", "images/x.qcow2", "qcow2", rawData, int64(len(rawData)), sha(rawData), ErrInvalid, "not a qcow2"},
		{"qcow2 declared raw", "images/x.raw", "raw", goodData, int64(len(goodData)), sha(goodData), ErrInvalid, "qcow2 image"},
		{"qcow2 declared raw by .img", "images/x.img", "", goodData, int64(len(goodData)), "", ErrInvalid, "qcow2 image"},
		{"truncated qcow2", "images/x.qcow2", "qcow2", goodData[:100], 100, "", ErrInvalid, "not a valid qcow2"},
		{"corrupt qcow2", "images/x.qcow2", "qcow2", corrupt, int64(len(corrupt)), "", ErrInvalid, "corrupt"},
		{"format mismatch", "images/x.qcow2", "raw", rawData, int64(len(rawData)), "", ErrInvalid, "extension"},
		{"bad checksum syntax", "images/x.raw", "raw", rawData, int64(len(rawData)), "xyz", ErrInvalid, "hex"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newPool(t)
			r := &countingReader{r: bytes.NewReader(c.data)}
			_, err := p.Upload(ctx, c.volume, c.format, r, c.size, c.sum, nil)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.mention) {
				t.Fatalf("Upload = %v, want %v mentioning %q", err, c.want, c.mention)
			}
			t.Log(err)
			if r.n > c.size+1 {
				t.Errorf("read %d bytes of a %d-byte upload", r.n, c.size)
			}
			if left := leftovers(t, p.Path, "x."); len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
	t.Run("reader error", func(t *testing.T) {
		p := newPool(t)
		r := io.MultiReader(bytes.NewReader(rawData[:1<<20]), iotestErrReader{})
		if _, err := p.Upload(ctx, "images/x.raw", "", r, int64(len(rawData)), "", nil); err == nil {
			t.Fatal("upload with a failing reader succeeded")
		}
		if left := leftovers(t, p.Path, "x."); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		p := newPool(t)
		cctx, cancel := context.WithCancel(ctx)
		pr, pw := io.Pipe()
		go func() {
			_, _ = pw.Write(rawData[:1<<20])
			cancel()
			_, _ = pw.Write(rawData[1<<20:])
			pw.Close()
		}()
		if _, err := p.Upload(cctx, "images/x.raw", "", pr, int64(len(rawData)), "", nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled upload: %v", err)
		}
		pr.Close()
		if left := leftovers(t, p.Path, "x."); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }
