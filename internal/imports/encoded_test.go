package imports

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// chunked cuts data into OVF chunks href.000000000… of size bytes.
func chunked(href string, data []byte, size int) []tarEntry {
	var out []tarEntry
	for i := 0; len(data) > 0; i++ {
		n := min(size, len(data))
		out = append(out, tarEntry{name: chunkName(href, i), data: data[:n]})
		data = data[n:]
	}
	return out
}

// encodedOVF is an OVF whose one disk (capacity bytes) is file href, with
// the File attributes attrs.
func encodedOVF(href, attrs string, capacity int64) string {
	return envOpen1 + `  <References><File ovf:id="fa" ovf:href="` + href + `" ` + attrs + `/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="da" ovf:fileRef="fa" ovf:capacity="` + fmt.Sprint(capacity) + `"/></DiskSection>
` + vs("web", cpu2, scsi, diskA) + "</Envelope>"
}

// TestEncodedFiles imports gzip-compressed and chunked OVF files (as
// ovftool --compress and --chunkSize write them), in an OVA and in an OVF
// directory, and checks each volume holds the source disk's data; the
// hostile variants are refused by name and leave nothing behind.
func TestEncodedFiles(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	raw := rawFixture(t, dir)
	vmdk := qemuConvert(t, raw, "raw", filepath.Join(dir, "a.vmdk"), "vmdk", "subformat=streamOptimized")
	so, err := os.ReadFile(vmdk)
	if err != nil {
		t.Fatal(err)
	}
	rawData, _ := os.ReadFile(raw)
	gz := gzipped(t, so)
	size := func(b []byte) string { return fmt.Sprintf(`ovf:size="%d"`, len(b)) }

	type pkgCase struct {
		name  string
		href  string
		attrs string
		files []tarEntry
	}
	good := []pkgCase{
		{"gzip", "a.vmdk", size(gz) + ` ovf:compression="gzip"`, []tarEntry{{"a.vmdk", gz}}},
		{"chunks", "a.vmdk", size(so) + ` ovf:chunkSize="1000000"`, chunked("a.vmdk", so, 1000000)},
		{"gzip in chunks", "a.vmdk", size(gz) + ` ovf:chunkSize="1048576" ovf:compression="gzip"`, chunked("a.vmdk", gz, 1<<20)},
		{"raw disk gzip", "a.img", `ovf:compression="gzip"`, []tarEntry{{"a.img", gzipped(t, rawData)}}},
		{"one chunk", "a.vmdk", size(so) + ` ovf:chunkSize="16777216"`, chunked("a.vmdk", so, 16<<20)},
	}
	for _, c := range good {
		for _, layout := range []string{"ova", "dir"} {
			t.Run(c.name+" "+layout, func(t *testing.T) {
				desc := tarEntry{"x.ovf", []byte(encodedOVF(c.href, c.attrs, fixtureSize))}
				entries := append([]tarEntry{desc}, c.files...)
				entries = append(entries, tarEntry{"x.mf", manifestFor(entries...)})
				path := writePackage(t, layout, entries)
				plan, err := Inspect(context.Background(), path)
				if err != nil {
					t.Fatal(err)
				}
				src := plan.Disks[0]
				wantFormat := map[string]string{"a.vmdk": "vmdk", "a.img": "raw"}[c.href]
				if len(plan.Disks) != 1 || src.Format != wantFormat || src.VirtualSize != fixtureSize || len(src.Chunks) != len(c.files)-1 ||
					(src.Compression == "gzip") != strings.Contains(c.attrs, "gzip") {
					t.Fatalf("plan %+v", plan)
				}
				// through the API, as the agent gets it
				src, err = FromAPI(src.Name, src.API(), func(p string) (string, error) { return p, nil })
				if err != nil {
					t.Fatal(err)
				}
				if err := Check(src); err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(t.TempDir(), "da.qcow2")
				convertChecked(t, src, out)
				sameDisk(t, raw, "raw", out)
				if _, err := os.Stat(out + ".part.src"); !os.IsNotExist(err) {
					t.Fatalf("decoded file left behind: %v", err)
				}
			})
		}
	}

	// A delta compressed over a compressed base flattens too.
	t.Run("gzip delta", func(t *testing.T) {
		top := deltaFixture(t, dir)
		c := qemuConvert(t, `json:{"driver":"qcow2","file":{"driver":"file","filename":"`+top+`"},"backing":null}`, "qcow2",
			filepath.Join(t.TempDir(), "c.vmdk"), "vmdk", "subformat=streamOptimized")
		cdata, _ := os.ReadFile(c)
		cgz := gzipped(t, cdata)
		ovf := envOpen1 + strings.NewReplacer(`ovf:size="{A}"`, size(gz)+` ovf:compression="gzip"`, `ovf:size="{C}"`, size(cgz)+` ovf:compression="gzip"`).Replace(refsDelta) +
			vs("web", scsi, diskC) + "</Envelope>"
		ova := writePackage(t, "ova", []tarEntry{{"x.ovf", []byte(ovf)}, {"a.vmdk", gz}, {"c.vmdk", cgz}})
		plan, err := Inspect(context.Background(), ova)
		if err != nil {
			t.Fatal(err)
		}
		if plan.Disks[0].Base == nil || plan.Disks[0].Base.Compression != "gzip" {
			t.Fatalf("plan %+v", plan.Disks[0])
		}
		out := filepath.Join(t.TempDir(), "dc.qcow2")
		convertChecked(t, plan.Disks[0], out)
		sameDisk(t, top, "qcow2", out)
	})

	// Hostile and broken packages are refused at Inspect.
	zeros := gzipped(t, make([]byte, 64<<20)) // a 64 MiB raw disk in 64 KiB
	big := filepath.Join(dir, "big.vmdk")
	run(t, qemuImg, "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", big, "64M")
	bigData, _ := os.ReadFile(big)
	chunks := chunked("a.vmdk", so, 1<<20)
	hintedPath := filepath.Join(dir, "hinted.vmdk")
	run(t, qemuImg, "create", "-q", "-f", "vmdk", "-b", "a.vmdk", "-F", "vmdk", hintedPath)
	hinted, _ := os.ReadFile(hintedPath)
	bad := []struct {
		name, href, attrs string
		files             []tarEntry
		err               string
	}{
		{"chunk missing", "a.vmdk", size(so) + ` ovf:chunkSize="1048576"`, append(append([]tarEntry{}, chunks[:1]...), chunks[2:]...),
			fmt.Sprintf(`OVF file "a.vmdk": chunk 2 of %d (ovf:size %d, ovf:chunkSize 1048576): `, len(chunks), len(so))},
		{"last chunk missing", "a.vmdk", size(so) + ` ovf:chunkSize="1048576"`, chunks[:len(chunks)-1],
			fmt.Sprintf(`OVF file "a.vmdk": chunk %d of %d (ovf:size %d, ovf:chunkSize 1048576): `, len(chunks), len(chunks), len(so))},
		{"chunk too large", "a.vmdk", size(so) + ` ovf:chunkSize="1000000"`, chunks,
			fmt.Sprintf(`OVF file "a.vmdk": chunk a.vmdk.000000000 has 1048576 bytes, want 1000000 (ovf:size %d, ovf:chunkSize 1000000)`, len(so))},
		{"chunk beyond ovf:size", "a.vmdk", size(so) + ` ovf:chunkSize="1048576"`, append(append([]tarEntry{}, chunks...), tarEntry{chunkName("a.vmdk", len(chunks)), []byte("x")}),
			fmt.Sprintf(`OVF file "a.vmdk": chunk %s is beyond ovf:size %d (%d chunks of ovf:chunkSize 1048576)`, chunkName("a.vmdk", len(chunks)), len(so), len(chunks))},
		{"chunked without ovf:size", "a.vmdk", `ovf:chunkSize="1048576"`, chunks,
			`x.ovf: OVF file "a.vmdk": a chunked file needs its ovf:size (got "") to know its chunks are all there`},
		{"bad chunkSize", "a.vmdk", size(so) + ` ovf:chunkSize="-5"`, chunks,
			`x.ovf: OVF file "a.vmdk": ovf:chunkSize "-5" is not a positive number of bytes`},
		{"gzip bomb", "a.img", `ovf:compression="gzip"`, []tarEntry{{"a.img", zeros}},
			"a.img decompresses to more than 9568256 bytes: more than its disk's capacity 8388608 holds (with 1/64 and 1 MiB for its format's metadata)"},
		{"disk larger than its capacity", "a.vmdk", `ovf:compression="gzip"`, []tarEntry{{"a.vmdk", gzipped(t, bigData)}},
			`OVF disk "da": a.vmdk decompresses to a disk of 67108864 bytes, more than its ovf:capacity 8388608`},
		{"not gzip", "a.vmdk", size(so) + ` ovf:compression="gzip"`, []tarEntry{{"a.vmdk", so}},
			"ovf:compression says gzip but the file is not gzip-compressed"},
		{"corrupt gzip", "a.vmdk", `ovf:compression="gzip"`, []tarEntry{{"a.vmdk", append(gz[:len(gz)/2:len(gz)/2], gz[len(gz)/2+1:]...)}},
			"a.vmdk: gzip: "},
		{"compressed disk naming a parent", "a.vmdk", `ovf:compression="gzip"`, []tarEntry{{"a.vmdk", gzipped(t, hinted)}},
			"a.vmdk: VMDK has a parent disk (parentFileNameHint): snapshots and linked clones are not supported"},
		{"bzip2", "a.vmdk", `ovf:compression="bzip2"`, []tarEntry{{"a.vmdk", so}},
			`x.ovf: OVF file "a.vmdk": ovf:compression "bzip2" is not supported (gzip is)`},
		{"compressed descriptor", "d.vmdk", `ovf:compression="gzip"`, []tarEntry{{"d.vmdk", gzipped(t, descEntries(`RW 2048 FLAT "d-flat.vmdk" 0`)[0].data)}},
			"d.vmdk: a VMDK text descriptor cannot be compressed or chunked: its extents are other files"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			ova := writePackage(t, "ova", append([]tarEntry{{"x.ovf", []byte(encodedOVF(c.href, c.attrs, fixtureSize))}}, c.files...))
			_, err := Inspect(context.Background(), ova)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("err %v\nwant one with %s", err, c.err)
			}
		})
	}

	// A source that changed after Inspect (or was written by hand) is
	// checked again when decoded: a larger disk than its capacity, a
	// chunk that lost bytes; nothing is left behind.
	gzPath := filepath.Join(dir, "zeros.img.gz")
	os.WriteFile(gzPath, zeros, 0o644)
	soPath := filepath.Join(dir, "so.vmdk")
	os.WriteFile(soPath, so, 0o644)
	for name, src := range map[string]Source{
		"bomb":          {Name: "d", Path: gzPath, Format: "raw", Size: int64(len(zeros)), Compression: "gzip", Capacity: 8 << 20},
		"short chunk":   {Name: "d", Path: soPath, Format: "vmdk", Size: 1 << 20, Chunks: []Chunk{{Path: soPath, Offset: 1 << 20, Size: int64(len(so))}}},
		"bad capacity":  {Name: "d", Path: gzPath, Format: "raw", Size: int64(len(zeros)), Compression: "gzip", Capacity: 1000},
		"unknown codec": {Name: "d", Path: gzPath, Format: "raw", Size: int64(len(zeros)), Compression: "xz", Capacity: 8 << 20},
	} {
		t.Run("convert "+name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "d.qcow2")
			if err := Convert(context.Background(), src, out, nil); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Convert: %v", err)
			}
			assertNoOutput(t, out)
		})
	}
}

// writePackage writes entries as an OVA (layout "ova") or as the files of
// an OVF directory ("dir") and returns its path.
func writePackage(t testing.TB, layout string, entries []tarEntry) string {
	t.Helper()
	if layout == "ova" {
		p := filepath.Join(t.TempDir(), "x.ova")
		writeTar(t, p, entries)
		return p
	}
	d := t.TempDir()
	for _, e := range entries {
		if err := os.WriteFile(filepath.Join(d, e.name), e.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// TestMultiExtentVMDK imports VMDK descriptors of several extents: qemu-img's
// twoGbMaxExtentSparse split in three (data in each), a monolithicFlat of
// three FLAT extents over two files beside it, and inside an OVA FLAT
// extents joined; every extent is checked, the second as the first.
func TestMultiExtentVMDK(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	split := filepath.Join(dir, "s.vmdk")
	run(t, qemuImg, "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", split, "4100M")
	run(t, "qemu-io", "-f", "vmdk", "-c", "write -P 0x33 1M 64k", "-c", "write -P 0x44 2047M 2M", "-c", "write -P 0x55 4099M 64k", split)
	if b, _ := os.ReadFile(split); bytes.Count(b, []byte(" SPARSE ")) != 3 {
		t.Fatalf("want three SPARSE extents:\n%s", b)
	}
	// two flat files, three extents: f2, then f1 from sector 8, then f2 again
	f1, f2 := make([]byte, 1<<20), make([]byte, 512<<10)
	for i := range f1 {
		f1[i] = byte(i / 512)
	}
	for i := range f2 {
		f2[i] = byte(255 - i/4096)
	}
	os.WriteFile(filepath.Join(dir, "m-f1.vmdk"), f1, 0o644)
	os.WriteFile(filepath.Join(dir, "m-f2.vmdk"), f2, 0o644)
	extents := "RW 1024 FLAT \"m-f2.vmdk\" 0\nRW 2040 FLAT \"m-f1.vmdk\" 8\nRW 1024 FLAT \"m-f2.vmdk\" 0\n"
	desc := "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\n" + extents
	mono := writeFile(t, filepath.Join(dir, "m.vmdk"), desc)
	joined := slices.Concat(f2, f1[8*512:], f2)
	want := filepath.Join(dir, "m.raw")
	os.WriteFile(want, joined, 0o644)

	for _, c := range []struct{ path, want, format string }{{split, split, "vmdk"}, {mono, want, "raw"}} {
		plan, err := Inspect(context.Background(), c.path)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "out.qcow2")
		convertChecked(t, plan.Disks[0], out)
		sameDisk(t, c.want, c.format, out)
	}

	// Inside an OVA: the FLAT extents joined, as raw.
	ovf := envOpen1 + `  <References><File ovf:id="fd" ovf:href="m.vmdk"/><File ovf:id="f1" ovf:href="m-f1.vmdk"/><File ovf:id="f2" ovf:href="m-f2.vmdk"/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="dd" ovf:fileRef="fd" ovf:capacity="2093056"/></DiskSection>
` + vs("web", scsi, diskD) + "</Envelope>"
	entries := []tarEntry{{"x.ovf", []byte(ovf)}, {"m.vmdk", []byte(desc)}, {"m-f1.vmdk", f1}, {"m-f2.vmdk", f2}}
	entries = append(entries, tarEntry{"x.mf", manifestFor(entries...)})
	ova := writePackage(t, "ova", entries)
	plan, err := Inspect(context.Background(), ova)
	if err != nil {
		t.Fatal(err)
	}
	src := plan.Disks[0]
	if src.Format != "raw" || src.VirtualSize != int64(len(joined)) || len(src.Chunks) != 2 {
		t.Fatalf("source %+v", src)
	}
	if src, err = FromAPI(src.Name, src.API(), func(p string) (string, error) { return p, nil }); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "dd.qcow2")
	convertChecked(t, src, out)
	sameDisk(t, want, "raw", out)

	// Inside an OVA: the three SPARSE extents written out beside the
	// volume under a descriptor of Hangar's own.
	splitDesc, _ := os.ReadFile(split)
	entries = []tarEntry{{"x.ovf", []byte(envOpen1 + `  <References><File ovf:id="fd" ovf:href="s.vmdk"/><File ovf:id="e1" ovf:href="s-s001.vmdk"/><File ovf:id="e2" ovf:href="s-s002.vmdk"/><File ovf:id="e3" ovf:href="s-s003.vmdk"/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="dd" ovf:fileRef="fd" ovf:capacity="4100" ovf:capacityAllocationUnits="byte * 2^20"/></DiskSection>
` + vs("web", scsi, diskD) + "</Envelope>")}, {"s.vmdk", splitDesc}}
	for i := 1; i <= 3; i++ {
		entries = append(entries, fileEntry(t, fmt.Sprintf("s-s%03d.vmdk", i), filepath.Join(dir, fmt.Sprintf("s-s%03d.vmdk", i))))
	}
	ova = writePackage(t, "ova", entries)
	if plan, err = Inspect(context.Background(), ova); err != nil {
		t.Fatal(err)
	}
	if src = plan.Disks[0]; src.Format != "vmdk" || src.VirtualSize != 4100<<20 || len(src.Extents) != 3 {
		t.Fatalf("source %+v", src)
	}
	if src, err = FromAPI(src.Name, src.API(), func(p string) (string, error) { return p, nil }); err != nil {
		t.Fatal(err)
	}
	out = filepath.Join(t.TempDir(), "dd.qcow2")
	convertChecked(t, src, out)
	sameDisk(t, split, "vmdk", out)
	// an extent whose header lies about its size, one cut short, a source
	// whose extents are not the descriptor's: refused, nothing left
	bad := slices.Clone(entries)
	bad[3] = tarEntry{bad[3].name, bad[3].data[:len(bad[3].data)/2]}
	if _, err := Inspect(context.Background(), writePackage(t, "ova", bad)); !errors.Is(err, ErrMalformed) {
		t.Errorf("SPARSE extent cut short: %v", err)
	}
	bad = slices.Clone(entries)
	bad[1] = tarEntry{"s.vmdk", bytes.Replace(splitDesc, []byte("RW 4194304 SPARSE \"s-s001.vmdk\""), []byte("RW 4194240 SPARSE \"s-s001.vmdk\""), 1)}
	if _, err := Inspect(context.Background(), writePackage(t, "ova", bad)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "its descriptor says 4194240") {
		t.Errorf("SPARSE extent of another size: %v", err)
	}
	for name, s := range map[string]Source{
		"extent missing":     {Name: "d", Path: src.Path, Format: "vmdk", Offset: src.Offset, Size: src.Size, Extents: src.Extents[:2]},
		"extents swapped":    {Name: "d", Path: src.Path, Format: "vmdk", Offset: src.Offset, Size: src.Size, Extents: []Chunk{src.Extents[2], src.Extents[1], src.Extents[0]}},
		"extent past a file": {Name: "d", Path: src.Path, Format: "vmdk", Offset: src.Offset, Size: src.Size, Extents: []Chunk{src.Extents[0], src.Extents[1], {Path: src.Path, Offset: src.Extents[2].Offset, Size: 1 << 40}}},
	} {
		out := filepath.Join(t.TempDir(), "d.qcow2")
		if err := Convert(context.Background(), s, out, nil); !errors.Is(err, ErrMalformed) {
			t.Errorf("Convert, %s: %v", name, err)
		}
		assertNoOutput(t, out)
	}

	// Each extent is checked: the second one escaping, a directory, a FIFO.
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	os.WriteFile(filepath.Join(sub, "ok-flat.vmdk"), f1, 0o644)
	os.Mkdir(filepath.Join(sub, "dir-flat.vmdk"), 0o755)
	if err := syscall.Mkfifo(filepath.Join(sub, "fifo-flat.vmdk"), 0o644); err != nil {
		t.Fatal(err)
	}
	for second, msg := range map[string]string{
		"../m-f1.vmdk":   `VMDK extent "../m-f1.vmdk": leaves the import directory`,
		"dir-flat.vmdk":  `VMDK extent "dir-flat.vmdk" is not a regular file`,
		"fifo-flat.vmdk": `VMDK extent "fifo-flat.vmdk" is not a regular file`,
		"/etc/passwd":    `VMDK extent "/etc/passwd": absolute paths are not allowed`,
	} {
		p := writeFile(t, filepath.Join(sub, "bad.vmdk"), strings.Replace(desc, extents, "RW 2048 FLAT \"ok-flat.vmdk\" 0\nRW 8 FLAT \""+second+"\" 0\n", 1))
		if _, err := Inspect(context.Background(), p); !errors.Is(err, ErrMalformed) || !strings.HasSuffix(err.Error(), "bad.vmdk: "+msg) {
			t.Errorf("second extent %s: %v\nwant …%s", second, err, msg)
		}
		out := filepath.Join(t.TempDir(), "out.qcow2")
		if err := Convert(context.Background(), Source{Name: "d", Path: p, Format: "vmdk"}, out, nil); !errors.Is(err, ErrMalformed) {
			t.Errorf("Convert with second extent %s: %v", second, err)
		}
		assertNoOutput(t, out)
	}
}
