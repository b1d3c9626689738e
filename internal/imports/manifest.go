package imports

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"hash"
	"io"
	"regexp"
	"slices"
	"strings"
)

// manifest maps a package file name to its expected digest.
type manifest map[string]digest

type digest struct {
	alg string // SHA1, SHA256, SHA512
	sum []byte
}

var hashes = map[string]func() hash.Hash{"SHA1": sha1.New, "SHA256": sha256.New, "SHA512": sha512.New}

// manifestLine is "SHA256(disk1.vmdk)= 0123…" (VMware) or
// "SHA1 (disk1.vmdk) = 0123…" (VirtualBox).
var manifestLine = regexp.MustCompile(`^([A-Z0-9]+) ?\((.+)\)\s*=\s*([0-9a-fA-F]+)$`)

// parseManifest parses an OVF manifest (.mf).
func parseManifest(name string, b []byte) (manifest, error) {
	m := manifest{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		g := manifestLine.FindStringSubmatch(line)
		if g == nil {
			return nil, malformed("%s: line %d: not a manifest entry", name, n)
		}
		h, ok := hashes[g[1]]
		if !ok {
			return nil, malformed("%s: line %d: digest %s not supported", name, n, g[1])
		}
		sum, err := hex.DecodeString(g[3])
		if err != nil || len(sum) != h().Size() {
			return nil, malformed("%s: line %d: bad %s digest", name, n, g[1])
		}
		if err := checkHref(g[2]); err != nil {
			return nil, malformed("%s: line %d: file %q %v", name, n, g[2], err)
		}
		if _, dup := m[g[2]]; dup {
			return nil, malformed("%s: line %d: %s listed twice", name, n, g[2])
		}
		m[g[2]] = digest{alg: g[1], sum: sum}
	}
	if err := sc.Err(); err != nil {
		return nil, malformed("%s: %v", name, err)
	}
	return m, nil
}

// requireListed refuses a package whose manifest leaves out one of its files.
func (m manifest) requireListed(mfName string, names []string) error {
	for _, n := range names {
		if _, ok := m[n]; !ok {
			return malformed("%s: %s is not in the manifest", mfName, n)
		}
	}
	return nil
}

// verify checks every file the manifest lists; open returns a file's
// content (an error matching ErrMalformed when the package lacks it). Each
// file is read once, streamed through its hash.
func (m manifest) verify(ctx context.Context, mfName string, open func(name string) (io.ReadCloser, error)) error {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	buf := make([]byte, 1<<20)
	for _, n := range names {
		if err := m.verifyFile(ctx, mfName, n, open, buf); err != nil {
			return err
		}
	}
	return nil
}

func (m manifest) verifyFile(ctx context.Context, mfName, name string, open func(string) (io.ReadCloser, error), buf []byte) error {
	r, err := open(name)
	if err != nil {
		return err
	}
	defer r.Close()
	d := m[name]
	h := hashes[d.alg]()
	if _, err := io.CopyBuffer(h, ctxReader{ctx, r}, buf); err != nil {
		return err
	}
	if !bytes.Equal(h.Sum(nil), d.sum) {
		return malformed("%s: %s checksum mismatch for %s", mfName, d.alg, name)
	}
	return nil
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
