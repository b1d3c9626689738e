package imports

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFormats imports each supported single-file format and checks the plan
// and that the qcow2 holds the same data as the raw original.
func TestFormats(t *testing.T) {
	needQemuImg(t)
	cases := []struct {
		name, file, format, kind string
		opts                     []string
		extents                  int // extra files the format writes
	}{
		{"monolithicSparse", "d.vmdk", "vmdk", "vmdk", []string{"subformat=monolithicSparse"}, 0},
		{"streamOptimized", "d.vmdk", "vmdk", "vmdk", []string{"subformat=streamOptimized"}, 0},
		{"monolithicFlat", "d.vmdk", "vmdk", "vmdk", []string{"subformat=monolithicFlat"}, 1},
		{"twoGbMaxExtentFlat", "d.vmdk", "vmdk", "vmdk", []string{"subformat=twoGbMaxExtentFlat"}, 1},
		{"twoGbMaxExtentSparse", "d.vmdk", "vmdk", "vmdk", []string{"subformat=twoGbMaxExtentSparse"}, 1},
		{"vhdFixed", "d.vhd", "vpc", "vhd", []string{"subformat=fixed"}, 0},
		{"vhdDynamic", "d.vhd", "vpc", "vhd", []string{"subformat=dynamic"}, 0},
		{"vhdx", "d.vhdx", "vhdx", "vhdx", nil, 0},
		{"qcow2", "d.qcow2", "qcow2", "qcow2", nil, 0},
		{"qcow2Compressed", "d.qcow2", "qcow2", "qcow2", []string{"compression_type=zlib"}, 0},
		{"raw", "d.img", "raw", "raw", nil, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			raw := rawFixture(t, dir)
			p := filepath.Join(dir, c.file)
			if c.name == "qcow2Compressed" {
				run(t, qemuImg, "convert", "-c", "-f", "raw", "-O", "qcow2", raw, p)
			} else {
				qemuConvert(t, raw, "raw", p, c.format, c.opts...)
			}
			plan, err := Inspect(context.Background(), p)
			if err != nil {
				t.Fatal(err)
			}
			if plan.Kind != c.kind || plan.Name != "d" || len(plan.Disks) != 1 || plan.CPUs != 0 || plan.MemoryMiB != 0 {
				t.Fatalf("plan %+v", plan)
			}
			src := plan.Disks[0]
			if src.Format != c.format || src.Path != p || src.Name != "disk0" || src.Offset != 0 || src.Size != 0 {
				t.Fatalf("source %+v", src)
			}
			// VHD rounds the size up to a whole CHS geometry.
			if src.VirtualSize < fixtureSize || src.VirtualSize > fixtureSize+64<<10 {
				t.Fatalf("virtual size %d, want about %d", src.VirtualSize, fixtureSize)
			}
			dst := filepath.Join(dir, "out.qcow2")
			convertChecked(t, src, dst)
			sameDisk(t, raw, "raw", dst)
		})
	}
}

// TestStreamOptimizedFooter imports a streamOptimized VMDK laid out as
// VMware writes it: grain directory at the end, found through the footer.
func TestStreamOptimizedFooter(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	raw := rawFixture(t, dir)
	p := qemuConvert(t, raw, "raw", filepath.Join(dir, "so.vmdk"), "vmdk", "subformat=streamOptimized")
	moveGDToFooter(t, p)
	plan, err := Inspect(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "out.qcow2")
	convertChecked(t, plan.Disks[0], dst)
	sameDisk(t, raw, "raw", dst)

	// Without its footer it is truncated.
	b, _ := os.ReadFile(p)
	os.WriteFile(p, b[:len(b)-512], 0o644)
	if _, err := Inspect(context.Background(), p); !errors.Is(err, ErrMalformed) {
		t.Fatalf("VMDK without footer: %v", err)
	}
}

// moveGDToFooter rewrites a VMDK header's grain directory offset to
// GD_AT_END and appends footer marker, footer header and end-of-stream.
func moveGDToFooter(t *testing.T, p string) {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%512 != 0 {
		b = append(b, make([]byte, 512-len(b)%512)...)
	}
	footer := make([]byte, 1536)
	binary.LittleEndian.PutUint64(footer[0:], 1)
	binary.LittleEndian.PutUint32(footer[12:], vmdkMarkerFooter)
	copy(footer[512:1024], b[:512])
	const gdOffsetAt = 4 + 4 + 4 + 8*4 + 4 + 8 // magic … rgdOffset
	binary.LittleEndian.PutUint64(b[gdOffsetAt:], vmdkGDAtEnd)
	b = append(b, footer...)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestOVA imports an OVA (OVF + streamOptimized VMDK + SHA256 manifest)
// reading the disk inside the tar.
func TestOVA(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	raw := rawFixture(t, dir)
	vmdk := qemuConvert(t, raw, "raw", filepath.Join(dir, "d.vmdk"), "vmdk", "subformat=streamOptimized")
	ova := filepath.Join(dir, "appliance.ova")
	buildOVA(t, ova, vmdk, nil)
	plan, err := Inspect(context.Background(), ova)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Kind != "ova" || plan.Name != "web-01" || plan.CPUs != 2 || plan.MemoryMiB != 1024 || len(plan.NICs) != 2 || len(plan.Disks) != 1 {
		t.Fatalf("plan %+v", plan)
	}
	src := plan.Disks[0]
	fi, _ := os.Stat(vmdk)
	if src.Name != "vmdisk1" || src.Format != "vmdk" || src.Path != ova || src.Offset%512 != 0 || src.Offset == 0 ||
		src.Size != fi.Size() || src.VirtualSize != fixtureSize {
		t.Fatalf("source %+v", src)
	}
	dst := filepath.Join(dir, "out.qcow2")
	convertChecked(t, src, dst)
	sameDisk(t, raw, "raw", dst)

	// Without a manifest the appliance imports (with a warning).
	buildOVA(t, ova, vmdk, func(e []tarEntry) []tarEntry { return []tarEntry{e[0], e[2]} })
	if _, err := Inspect(context.Background(), ova); err != nil {
		t.Fatalf("OVA without manifest: %v", err)
	}
}

// TestOVFDirectory imports an unpacked OVF with a SHA1 manifest, a disk in
// a subdirectory and a blank disk without a file.
func TestOVFDirectory(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	raw := rawFixture(t, dir)
	pkg := filepath.Join(dir, "pkg")
	os.MkdirAll(filepath.Join(pkg, "disks"), 0o755)
	vmdk := qemuConvert(t, raw, "raw", filepath.Join(pkg, "disks", "a.vmdk"), "vmdk", "subformat=monolithicSparse")
	fi, _ := os.Stat(vmdk)
	desc := testOVF("db", ovfDiskRef{id: "system", file: "disks/a.vmdk", size: fi.Size(), capacity: "8388608", units: "byte"},
		ovfDiskRef{id: "Data Disk", capacity: "1", units: "byte * 2^30"})
	os.WriteFile(filepath.Join(pkg, "db.ovf"), desc, 0o644)
	disk, _ := os.ReadFile(vmdk)
	mf := "SHA1(db.ovf)= " + sha1hex(desc) + "\nSHA1(disks/a.vmdk)= " + sha1hex(disk) + "\n"
	os.WriteFile(filepath.Join(pkg, "db.mf"), []byte(mf), 0o644)

	plan, err := Inspect(context.Background(), filepath.Join(pkg, "db.ovf"))
	if err != nil {
		t.Fatal(err)
	}
	if plan.Kind != "ovf" || plan.Name != "db" || plan.CPUs != 2 || plan.MemoryMiB != 1024 || len(plan.Disks) != 2 {
		t.Fatalf("plan %+v", plan)
	}
	sys, blank := plan.Disks[0], plan.Disks[1]
	if sys.Name != "system" || sys.Format != "vmdk" || sys.Path != vmdk || sys.VirtualSize != fixtureSize {
		t.Fatalf("system disk %+v", sys)
	}
	if blank.Name != "data-disk" || blank.Path != "" || blank.Format != "" || blank.VirtualSize != 1<<30 {
		t.Fatalf("blank disk %+v", blank)
	}
	dst := filepath.Join(dir, "sys.qcow2")
	convertChecked(t, sys, dst)
	sameDisk(t, raw, "raw", dst)
	if err := Convert(context.Background(), blank, filepath.Join(dir, "data.qcow2"), nil); err != nil {
		t.Fatal(err)
	}
	if info := run(t, qemuImg, "info", filepath.Join(dir, "data.qcow2")); !strings.Contains(info, "1 GiB") {
		t.Fatalf("blank disk:\n%s", info)
	}
}

// TestConvertCancel cancels a conversion and checks nothing is left.
func TestConvertCancel(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "big.raw")
	f, _ := os.Create(raw)
	rnd := make([]byte, 1<<20)
	for i := range 256 {
		for j := range rnd {
			rnd[j] = byte(i*7 + j*13)
		}
		f.Write(rnd)
	}
	f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dst := filepath.Join(dir, "out.qcow2")
	src := Source{Name: "disk0", Path: raw, Format: "raw", VirtualSize: 256 << 20}
	start := time.Now()
	err := Convert(ctx, src, dst, func(v float64) {
		if v > 0 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Convert after cancel: %v", err)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatalf("cancel took %v", time.Since(start))
	}
	assertNoOutput(t, dst)
}

func assertNoOutput(t *testing.T, dst string) {
	t.Helper()
	for _, p := range []string{dst, dst + ".part", dst + ".part.src", dst + ".part.src.d", dst + ".part.delta"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s exists after a failed import (%v)", p, err)
		}
	}
}

// TestMalformed feeds broken inputs to Inspect and Convert: each must fail
// with ErrMalformed and leave nothing at dst.
func TestMalformed(t *testing.T) {
	needQemuImg(t)
	base := t.TempDir()
	raw := rawFixture(t, base)
	sparse := qemuConvert(t, raw, "raw", filepath.Join(base, "sparse.vmdk"), "vmdk", "subformat=monolithicSparse")
	stream := qemuConvert(t, raw, "raw", filepath.Join(base, "stream.vmdk"), "vmdk", "subformat=streamOptimized")
	flat := filepath.Join(base, "flat.bin")
	os.WriteFile(flat, make([]byte, fixtureSize), 0o644)

	type input struct {
		path string
		src  *Source // also try Convert on it
	}
	whole := func(p, format string) input { return input{p, &Source{Name: "disk0", Path: p, Format: format}} }
	descriptor := func(dir, extent string) string {
		return writeFile(t, filepath.Join(dir, "desc.vmdk"), "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"+
			"createType=\"monolithicFlat\"\n\n# Extent description\nRW 16384 FLAT \""+extent+"\" 0\n")
	}
	cases := map[string]func(dir string) input{
		"truncated monolithicSparse": func(dir string) input {
			return whole(truncated(t, sparse, filepath.Join(dir, "t.vmdk"), 2, 3), "vmdk")
		},
		"truncated streamOptimized": func(dir string) input {
			return whole(truncated(t, stream, filepath.Join(dir, "t.vmdk"), 1, 2), "vmdk")
		},
		"truncated VMDK header": func(dir string) input {
			return whole(truncated(t, sparse, filepath.Join(dir, "t.vmdk"), 40, fixtureSize), "vmdk")
		},
		"extent ../../etc/passwd": func(dir string) input {
			return whole(descriptor(dir, "../../etc/passwd"), "vmdk")
		},
		"extent reaching /etc/passwd": func(dir string) input {
			return whole(descriptor(dir, strings.Repeat("../", 32)+"etc/passwd"), "vmdk")
		},
		"extent absolute": func(dir string) input {
			return whole(descriptor(dir, flat), "vmdk")
		},
		"extent outside the directory": func(dir string) input {
			sub := filepath.Join(dir, "sub")
			os.Mkdir(sub, 0o755)
			copyFile(t, flat, filepath.Join(dir, "outside-flat.vmdk"))
			return whole(descriptor(sub, "../outside-flat.vmdk"), "vmdk")
		},
		"extent through a symlink out": func(dir string) input {
			sub := filepath.Join(dir, "sub")
			os.Mkdir(sub, 0o755)
			os.Symlink(flat, filepath.Join(sub, "d-flat.vmdk"))
			return whole(descriptor(sub, "d-flat.vmdk"), "vmdk")
		},
		"extent directory symlink then ..": func(dir string) input {
			sub, deep := filepath.Join(dir, "sub"), filepath.Join(dir, "x", "y")
			os.MkdirAll(sub, 0o755)
			os.MkdirAll(deep, 0o755)
			copyFile(t, flat, filepath.Join(dir, "x", "d-flat.vmdk"))
			os.Symlink(deep, filepath.Join(sub, "link"))
			return whole(descriptor(sub, "link/../d-flat.vmdk"), "vmdk")
		},
		"missing extent": func(dir string) input {
			return whole(descriptor(dir, "nothere-flat.vmdk"), "vmdk")
		},
		"short extent": func(dir string) input {
			writeFile(t, filepath.Join(dir, "d-flat.vmdk"), strings.Repeat("x", 4096))
			return whole(descriptor(dir, "d-flat.vmdk"), "vmdk")
		},
		"VMDK with a parent": func(dir string) input {
			copyFile(t, flat, filepath.Join(dir, "d-flat.vmdk"))
			return whole(writeFile(t, filepath.Join(dir, "desc.vmdk"), "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=12345678\n"+
				"createType=\"monolithicFlat\"\nparentFileNameHint=\"/etc/base.vmdk\"\nRW 16384 FLAT \"d-flat.vmdk\" 0\n"), "vmdk")
		},
		"qcow2 with a backing file": func(dir string) input {
			p := filepath.Join(dir, "b.qcow2")
			run(t, qemuImg, "create", "-f", "qcow2", "-F", "raw", "-b", flat, p)
			return whole(p, "qcow2")
		},
		"qcow2 with an external data file": func(dir string) input {
			p := filepath.Join(dir, "df.qcow2")
			run(t, qemuImg, "create", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw"), p, "8M")
			return whole(p, "qcow2")
		},
		"truncated qcow2": func(dir string) input {
			q := qemuConvert(t, raw, "raw", filepath.Join(dir, "q.qcow2"), "qcow2")
			return whole(truncated(t, q, q, 2, 3), "qcow2")
		},
		"truncated vhdx": func(dir string) input {
			q := qemuConvert(t, raw, "raw", filepath.Join(dir, "q.vhdx"), "vhdx")
			return whole(truncated(t, q, q, 2, 3), "vhdx")
		},
		"truncated dynamic vhd": func(dir string) input {
			q := qemuConvert(t, raw, "raw", filepath.Join(dir, "q.vhd"), "vpc", "subformat=dynamic")
			return whole(truncated(t, q, q, 2, 3), "vpc")
		},
		"random bytes": func(dir string) input {
			b := make([]byte, 1000)
			for i := range b {
				b[i] = byte(i*131 + i/7)
			}
			p := filepath.Join(dir, "junk.bin")
			os.WriteFile(p, b, 0o644)
			return whole(p, "raw")
		},
		"random bytes named .vmdk": func(dir string) input {
			p := filepath.Join(dir, "junk.vmdk")
			os.WriteFile(p, bytes.Repeat([]byte{0xa5, 0x17}, 4096), 0o644)
			return whole(p, "vmdk")
		},
		"empty file": func(dir string) input {
			return whole(writeFile(t, filepath.Join(dir, "empty.img"), ""), "raw")
		},
		"raw pretending to be qcow2": func(dir string) input {
			b := make([]byte, 1<<20)
			copy(b, magicQcow2+"\x00\x00\x00\x03")
			binary.BigEndian.PutUint64(b[8:], 512) // backing file name at 512
			binary.BigEndian.PutUint32(b[16:], 11)
			copy(b[512:], "/etc/shadow")
			p := filepath.Join(dir, "fake.qcow2")
			os.WriteFile(p, b, 0o644)
			return whole(p, "qcow2")
		},
		"OVA with a wrong checksum": func(dir string) input {
			p := filepath.Join(dir, "a.ova")
			buildOVA(t, p, stream, func(e []tarEntry) []tarEntry {
				e[2].data = bytes.Clone(e[2].data)
				e[2].data[len(e[2].data)-1000] ^= 0xff
				return e
			})
			return input{path: p}
		},
		"OVA truncated": func(dir string) input {
			p := filepath.Join(dir, "a.ova")
			buildOVA(t, p, stream, nil)
			truncated(t, p, p, 2, 3)
			return input{p, &Source{Name: "d", Path: p, Format: "vmdk", Offset: 2048, Size: 4 << 20}}
		},
		"OVA disk missing from the manifest": func(dir string) input {
			p := filepath.Join(dir, "a.ova")
			buildOVA(t, p, stream, func(e []tarEntry) []tarEntry {
				e[1].data = manifestFor(e[0])
				return e
			})
			return input{path: p}
		},
		"OVA with a VMDK descriptor inside": func(dir string) input {
			p := filepath.Join(dir, "a.ova")
			d := filepath.Join(dir, "d.vmdk")
			writeFile(t, d, "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 16384 FLAT \"../etc/passwd\" 0\n")
			buildOVA(t, p, d, nil)
			return input{path: p}
		},
		"OVA manifest listing a missing file": func(dir string) input {
			p := filepath.Join(dir, "a.ova")
			buildOVA(t, p, stream, func(e []tarEntry) []tarEntry {
				e[1].data = append(e[1].data, manifestFor(tarEntry{name: "nvram", data: []byte("x")})...)
				return e
			})
			return input{path: p}
		},
		"OVA without OVF": func(dir string) input {
			p := filepath.Join(dir, "a.ova")
			writeTar(t, p, []tarEntry{fileEntry(t, "d.vmdk", stream)})
			return input{path: p}
		},
		"sparse VMDK with capacity 0 (embedded descriptor)": func(dir string) input {
			b, _ := os.ReadFile(sparse)
			binary.LittleEndian.PutUint64(b[12:], 0)
			desc := "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 16384 FLAT \"../../../../etc/passwd\" 0\n"
			copy(b[512:], desc+"\x00")
			p := filepath.Join(dir, "c0.vmdk")
			os.WriteFile(p, b, 0o644)
			return whole(p, "vmdk")
		},
		"OVF href with ..": func(dir string) input {
			pkg := filepath.Join(dir, "pkg")
			os.Mkdir(pkg, 0o755)
			copyFile(t, sparse, filepath.Join(dir, "secret.vmdk"))
			p := filepath.Join(pkg, "x.ovf")
			os.WriteFile(p, testOVF("x", ovfDiskRef{id: "d", file: "../secret.vmdk", capacity: "8", units: "byte * 2^20"}), 0o644)
			return input{path: p}
		},
		"OVF href URL": func(dir string) input {
			p := filepath.Join(dir, "x.ovf")
			os.WriteFile(p, testOVF("x", ovfDiskRef{id: "d", file: "http://example.invalid/d.vmdk", capacity: "8", units: "byte * 2^20"}), 0o644)
			return input{path: p}
		},
		"OVF that is not XML": func(dir string) input {
			return input{path: writeFile(t, filepath.Join(dir, "x.ovf"), "<Envelope><unclosed>")}
		},
	}
	for name, build := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			in := build(dir)
			plan, err := Inspect(context.Background(), in.path)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Inspect: %v (plan %+v), want ErrMalformed", err, plan)
			}
			t.Logf("Inspect: %v", err)
			if in.src == nil {
				return
			}
			dst := filepath.Join(dir, "out.qcow2")
			if err := Convert(context.Background(), *in.src, dst, nil); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Convert: %v, want ErrMalformed", err)
			}
			assertNoOutput(t, dst)
		})
	}
}

func writeFile(t *testing.T, p, s string) string {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// truncated writes the first num/den of from to to.
func truncated(t *testing.T, from, to string, num, den int64) string {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b[:int64(len(b))*num/den], 0o644); err != nil {
		t.Fatal(err)
	}
	return to
}

// TestBlockDevice imports a block device (P2V) through a loop device; it
// skips where loop devices cannot be set up (not root, no /dev/loop*).
func TestBlockDevice(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	raw := rawFixture(t, dir)
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", raw).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })
	plan, err := Inspect(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	src := plan.Disks[0]
	if plan.Kind != "block" || src.Format != "raw" || src.Path != dev || src.VirtualSize != fixtureSize {
		t.Fatalf("plan %+v", plan)
	}
	dst := filepath.Join(dir, "p2v.qcow2")
	convertChecked(t, src, dst)
	sameDisk(t, raw, "raw", dst)
}
