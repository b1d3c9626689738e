package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/vm"
)

func qemuImgConvert(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", append([]string{"convert", "-f", "qcow2"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %v: %v\n%s", args, err, out)
	}
}

// TestImportFormats: the test guest converted by qemu-img into each foreign
// format (and an OVA assembled with tar, an OVF and a manifest) is imported
// and boots.
func TestImportFormats(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	dir := s.importDir
	files := map[string]string{
		"vmdk-sparse": "vmdk:subformat=monolithicSparse",
		"vmdk-stream": "vmdk:subformat=streamOptimized",
		"vmdk-flat":   "vmdk:subformat=monolithicFlat",
		"vmdk-split":  "vmdk:subformat=twoGbMaxExtentFlat",
		"qcow2":       "qcow2:",
		"vhd-dynamic": "vpc:subformat=dynamic",
		"vhd-fixed":   "vpc:subformat=fixed",
		"vhdx":        "vhdx:",
		"raw":         "raw:",
	}
	ext := map[string]string{"vmdk": ".vmdk", "vpc": ".vhd", "vhdx": ".vhdx", "raw": ".img", "qcow2": ".qcow2"}
	var paths []string
	for name, f := range files {
		fmtName, opts, _ := strings.Cut(f, ":")
		p := filepath.Join(dir, name+ext[fmtName])
		args := []string{"-O", fmtName}
		if opts != "" {
			args = append(args, "-o", opts)
		}
		qemuImgConvert(t, append(args, guestImage, p)...)
		paths = append(paths, p)
	}
	paths = append(paths, buildOVA(t, dir))
	for _, p := range paths {
		name := "imp-" + strings.ReplaceAll(strings.TrimSuffix(filepath.Base(p), filepath.Ext(p)), "_", "-")
		t.Run(filepath.Base(p), func(t *testing.T) {
			args := v1.ImportArgs{Path: p, Name: name, MemoryMiB: 256, Start: true}
			ova := strings.HasSuffix(p, ".ova")
			if ova {
				args.Networks = map[string]string{"Storage": "user"}
			}
			op, err := s.c.Import(ctx, args, 2*time.Minute)
			s.wait(op, err)
			s.waitReady(name, 0)
			v, _ := s.c.VM(ctx, name)
			if v.Spec.CPUModel != "qemu64" || v.Status.Disks[0].Format != "qcow2" {
				t.Fatalf("imported vm: cpu %q, disk %+v", v.Spec.CPUModel, v.Status.Disks[0])
			}
			// The OVA's two NICs in order, the first with its MAC; its
			// unmapped network is warned about. A single disk gets one NIC.
			switch nics := v.Spec.NICs; {
			case ova && (len(nics) != 2 || nics[0].MAC != "00:50:56:aa:bb:01" || nics[0].Mode != v1.NICUser || nics[1].Mode != v1.NICUser ||
				nics[1].MAC == "" || nics[1].MAC == nics[0].MAC):
				t.Fatalf("OVA NICs %+v", nics)
			case ova && (len(op.Warnings) != 1 || !strings.Contains(op.Warnings[0], `"VM Network" is not mapped`)):
				t.Fatalf("OVA import warnings %q", op.Warnings)
			case !ova && (len(nics) != 1 || nics[0].Mode != v1.NICUser || len(op.Warnings) != 0):
				t.Fatalf("NICs %+v, warnings %q", nics, op.Warnings)
			}
			s.wait(s.c.DeleteVM(ctx, name, true, time.Minute))
		})
	}
}

// buildOVA packs the guest as a streamOptimized VMDK with an OVF and a
// SHA256 manifest into a tar.
func buildOVA(t *testing.T, dir string) string {
	t.Helper()
	vmdk := filepath.Join(dir, "appliance-disk1.vmdk")
	qemuImgConvert(t, "-O", "vmdk", "-o", "subformat=streamOptimized", guestImage, vmdk)
	st, _ := os.Stat(vmdk)
	ovf := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="appliance-disk1.vmdk" ovf:size="%d"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="134217728"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>
  <VirtualSystem ovf:id="appliance"><Info>a vm</Info><Name>appliance</Name>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource></Item>
      <Item><rasd:Address>00:50:56:AA:BB:01</rasd:Address><rasd:Connection>VM Network</rasd:Connection><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:Connection>Storage</rasd:Connection><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection></VirtualSystem></Envelope>`, st.Size())
	sum := func(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }
	disk, err := os.ReadFile(vmdk)
	if err != nil {
		t.Fatal(err)
	}
	mf := fmt.Sprintf("SHA256(appliance.ovf)= %s\nSHA256(appliance-disk1.vmdk)= %s\n", sum([]byte(ovf)), sum(disk))
	p := filepath.Join(dir, "appliance.ova")
	writeOVA(t, p, tarMember{"appliance.ovf", []byte(ovf)}, tarMember{"appliance.mf", []byte(mf)}, tarMember{"appliance-disk1.vmdk", disk})
	return p
}

type tarMember struct {
	name string
	data []byte
}

// writeOVA writes the members as a tar at p.
func writeOVA(t *testing.T, p string, members ...tarMember) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, m := range members {
		if err := tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestImportVAppBoots: a multi-VM vApp (two VirtualSystems, a StartupSection
// starting db first; db's disk is the test guest, web's a delta of it, as a
// vCloud template shares a base) imports as two VMs named after the vApp,
// both boot (each guest reports its own name: the delta was flattened on its
// base by the agent), and the answer and the operations record the start
// order.
func TestImportVAppBoots(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	vmdk := filepath.Join(s.importDir, "guest.vmdk")
	qemuImgConvert(t, "-O", "vmdk", "-o", "subformat=streamOptimized", guestImage, vmdk)
	disk, err := os.ReadFile(vmdk)
	if err != nil {
		t.Fatal(err)
	}
	// the delta: an overlay of the guest that changed nothing, its own
	// (no) blocks as a streamOptimized VMDK
	top := filepath.Join(t.TempDir(), "top.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", guestImage, "-F", "qcow2", top).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	deltaPath := filepath.Join(t.TempDir(), "delta.vmdk")
	qemuImgConvert(t, "-O", "vmdk", "-o", "subformat=streamOptimized", `json:{"driver":"qcow2","file":{"driver":"file","filename":"`+top+`"},"backing":null}`, deltaPath)
	delta, err := os.ReadFile(deltaPath)
	if err != nil {
		t.Fatal(err)
	}
	vs := func(id, diskID string) string {
		return `<VirtualSystem ovf:id="` + id + `"><Info>a vm</Info><Name>` + id + `</Name><VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:HostResource>ovf:/disk/` + diskID + `</rasd:HostResource><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Connection>VM Network</rasd:Connection><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection></VirtualSystem>`
	}
	// both disks are converted from the one file
	ovf := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="f1" ovf:href="guest.vmdk" ovf:size="%d"/><File ovf:id="f2" ovf:href="delta.vmdk" ovf:size="%d"/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="web-disk" ovf:fileRef="f2" ovf:parentRef="db-disk" ovf:capacity="134217728"/><Disk ovf:diskId="db-disk" ovf:fileRef="f1" ovf:capacity="134217728"/></DiskSection>
  <VirtualSystemCollection ovf:id="shop"><Info>a vApp</Info><Name>shop</Name>
    <StartupSection><Info>start order</Info><Item ovf:id="web" ovf:order="1"/><Item ovf:id="db" ovf:order="0"/></StartupSection>
    %s
    %s
  </VirtualSystemCollection></Envelope>`, len(disk), len(delta), vs("web", "web-disk"), vs("db", "db-disk"))
	p := filepath.Join(s.importDir, "shop.ova")
	writeOVA(t, p, tarMember{"shop.ovf", []byte(ovf)}, tarMember{"guest.vmdk", disk}, tarMember{"delta.vmdk", delta})
	os.Remove(vmdk)

	op, err := s.c.Import(ctx, v1.ImportArgs{Path: p, Start: true, Networks: map[string]string{"VM Network": "user"}}, 2*time.Minute)
	s.wait(op, err)
	if op.Target != "shop-db" || len(op.Warnings) == 0 || !strings.Contains(op.Warnings[len(op.Warnings)-1], "shop-db (ovf:order 0), shop-web (ovf:order 1)") {
		t.Fatalf("answer: %s, warnings %q; want shop-db first, with the start order", op.Target, op.Warnings)
	}
	for _, name := range []string{"shop-db", "shop-web"} {
		s.waitReady(name, 0)
		v, err := s.c.VM(ctx, name)
		if err != nil || v.Spec.MemoryMiB != 256 || len(v.Spec.Disks) != 1 || len(v.Spec.NICs) != 1 || v.Spec.NICs[0].Mode != v1.NICUser ||
			v.Spec.Disks[0].Import == nil || (v.Spec.Disks[0].Import.Base != nil) != (name == "shop-web") {
			t.Fatalf("%s: %+v, %v", name, v.Spec, err)
		}
	}
	for _, name := range []string{"shop-db", "shop-web"} {
		s.wait(s.c.DeleteVM(ctx, name, true, time.Minute))
	}
}

// TestImportEncodedBoots: two appliances as old and big exports write them
// boot. "legacy" is an OVF 0.9 envelope (VMware's pre-DMTF namespace) whose
// disk is the guest as a streamOptimized VMDK, gzip-compressed and cut in
// 4 MiB chunks; "flat" is an OVF whose disk is a VMDK descriptor of two
// FLAT extents over two members of the OVA (the guest's raw bytes split).
// Each guest reports its name; the decoded file is not left in the pool.
func TestImportEncodedBoots(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	vmdk := filepath.Join(t.TempDir(), "guest.vmdk")
	qemuImgConvert(t, "-O", "vmdk", "-o", "subformat=streamOptimized", guestImage, vmdk)
	so, err := os.ReadFile(vmdk)
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(so)
	zw.Close()
	sum := func(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }
	legacy := []tarMember{{name: "legacy.ovf", data: []byte(fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="0.9" xmlns="http://www.vmware.com/schema/ovf/1/envelope" xmlns:ovf="http://www.vmware.com/schema/ovf/1/envelope"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References><File ovf:href="guest.vmdk" ovf:id="file1" ovf:size="%d" ovf:compression="gzip" ovf:chunkSize="4194304"/></References>
  <Section xsi:type="ovf:DiskSection_Type"><Info>disks</Info>
    <Disk ovf:capacity="134217728" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/specifications/vmdk.html#compressed"/></Section>
  <Content ovf:id="legacy" xsi:type="ovf:VirtualSystem_Type"><Info>a vm</Info>
    <Section xsi:type="ovf:VirtualHardwareSection_Type"><Info>hw</Info>
      <Item><rasd:Caption>1 virtual CPU</rasd:Caption><rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:Caption>256 MB of memory</rasd:Caption><rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:Caption>Harddisk 1</rasd:Caption><rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceId>3</rasd:InstanceId><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Caption>Ethernet adapter</rasd:Caption><rasd:Connection>VM Network</rasd:Connection><rasd:InstanceId>4</rasd:InstanceId><rasd:ResourceType>10</rasd:ResourceType></Item>
    </Section></Content></Envelope>`, gz.Len()))}}
	mf := "SHA256(legacy.ovf)= " + sum(legacy[0].data) + "\n"
	for i, b := 0, gz.Bytes(); len(b) > 0; i++ {
		n := min(4<<20, len(b))
		name := fmt.Sprintf("guest.vmdk.%09d", i)
		legacy = append(legacy, tarMember{name: name, data: b[:n]})
		mf += "SHA256(" + name + ")= " + sum(b[:n]) + "\n"
		b = b[n:]
	}
	if len(legacy) < 3 {
		t.Fatalf("want the compressed guest in several chunks, got %d", len(legacy)-1)
	}
	writeOVA(t, filepath.Join(s.importDir, "legacy.ova"), append(legacy, tarMember{name: "legacy.mf", data: []byte(mf)})...)

	rawPath := filepath.Join(t.TempDir(), "guest.raw")
	qemuImgConvert(t, "-O", "raw", guestImage, rawPath)
	raw, err := os.ReadFile(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	half := len(raw) / 2
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n"+
		"# Extent description\nRW %d FLAT \"flat-s001.vmdk\" 0\nRW %d FLAT \"flat-s002.vmdk\" 0\n", half/512, (len(raw)-half)/512)
	writeOVA(t, filepath.Join(s.importDir, "flat.ova"), tarMember{name: "flat.ovf", data: []byte(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="d" ovf:href="flat.vmdk"/><File ovf:id="e1" ovf:href="flat-s001.vmdk"/><File ovf:id="e2" ovf:href="flat-s002.vmdk"/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="vmdisk1" ovf:fileRef="d" ovf:capacity="134217728"/></DiskSection>
  <VirtualSystem ovf:id="flat"><Info>a vm</Info><Name>flat</Name><VirtualHardwareSection><Info>hw</Info>
    <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
    <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
  </VirtualHardwareSection></VirtualSystem></Envelope>`)},
		tarMember{name: "flat.vmdk", data: []byte(desc)}, tarMember{name: "flat-s001.vmdk", data: raw[:half]}, tarMember{name: "flat-s002.vmdk", data: raw[half:]})

	for _, c := range []struct{ name, format string }{{"legacy", "vmdk"}, {"flat", "raw"}} {
		t.Run(c.name, func(t *testing.T) {
			args := v1.ImportArgs{Path: filepath.Join(s.importDir, c.name+".ova"), Start: true}
			if c.name == "legacy" {
				args.Networks = map[string]string{"VM Network": "user"}
			}
			op, err := s.c.Import(ctx, args, 3*time.Minute)
			s.wait(op, err)
			s.waitReady(c.name, 0)
			v, err := s.c.VM(ctx, c.name)
			if err != nil || len(v.Spec.Disks) != 1 || v.Spec.Disks[0].Import == nil || v.Spec.Disks[0].Import.Format != c.format || v.Spec.MemoryMiB != 256 {
				t.Fatalf("%s: %+v, %v", c.name, v.Spec, err)
			}
			imp := v.Spec.Disks[0].Import
			if c.name == "legacy" && (imp.Compression != "gzip" || imp.Capacity != 134217728 || len(imp.Chunks) != len(legacy)-2) ||
				c.name == "flat" && (imp.Compression != "" || len(imp.Chunks) != 1) {
				t.Fatalf("%s: import source %+v", c.name, imp)
			}
			if left, _ := filepath.Glob(filepath.Join(filepath.Dir(v.Status.Disks[0].Path), "*.src")); len(left) != 0 {
				t.Fatalf("decoded files left in the pool: %v", left)
			}
			s.wait(s.c.DeleteVM(ctx, c.name, true, time.Minute))
		})
	}
}

// TestImportRejectsMalformed: bad files are refused with a 400 naming the
// path, and leave no VM and no volume behind.
func TestImportRejectsMalformed(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	dir := s.importDir
	junk := filepath.Join(dir, "junk.vmdk")
	if err := os.WriteFile(junk, []byte("KDMV this is not really a vmdk"), 0o600); err != nil {
		t.Fatal(err)
	}
	escape := filepath.Join(dir, "escape.vmdk")
	desc := "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"../../../etc/passwd\" 0\n"
	if err := os.WriteFile(escape, []byte(desc), 0o600); err != nil {
		t.Fatal(err)
	}
	ova := buildOVA(t, dir)
	b, _ := os.ReadFile(ova)
	truncated := filepath.Join(dir, "truncated.ova")
	if err := os.WriteFile(truncated, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	// a gzip bomb (64 MiB of zeroes as the disk of an 8 MiB capacity), a
	// chunked file missing a chunk, a descriptor whose second extent leaves
	// the OVA
	var zeros bytes.Buffer
	zw := gzip.NewWriter(&zeros)
	zw.Write(make([]byte, 64<<20))
	zw.Close()
	encoded := func(name, attrs string, members ...tarMember) string {
		p := filepath.Join(dir, name+".ova")
		ovf := `<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="disk.img" ` + attrs + `/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="d1" ovf:fileRef="file1" ovf:capacity="8388608"/></DiskSection>
  <VirtualSystem ovf:id="bad"><Info>a vm</Info><VirtualHardwareSection><Info>hw</Info>
    <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>ovf:/disk/d1</rasd:HostResource></Item>
  </VirtualHardwareSection></VirtualSystem></Envelope>`
		writeOVA(t, p, append([]tarMember{{name: name + ".ovf", data: []byte(ovf)}}, members...)...)
		return p
	}
	bomb := encoded("bomb", `ovf:compression="gzip"`, tarMember{name: "disk.img", data: zeros.Bytes()})
	gap := encoded("gap", `ovf:size="3072" ovf:chunkSize="1024"`, tarMember{name: "disk.img.000000000", data: make([]byte, 1024)}, tarMember{name: "disk.img.000000002", data: make([]byte, 1024)})
	leaving := encoded("leaving", ``, tarMember{name: "disk.img", data: []byte("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n" +
		"RW 8 FLAT \"disk-flat.img\" 0\nRW 8 FLAT \"../disk-flat.img\" 0\n")}, tarMember{name: "disk-flat.img", data: make([]byte, 4096)})
	for _, p := range []string{junk, escape, truncated, filepath.Join(dir, "missing.vhd"), "relative.vmdk", bomb, gap, leaving} {
		_, err := s.c.Import(ctx, v1.ImportArgs{Path: p, Name: "bad"}, time.Minute)
		var e *v1.Error
		if !isCode(err, v1.CodeInvalidArgument) {
			t.Errorf("import %s: %v, want invalid_argument", filepath.Base(p), err)
			continue
		}
		if errors.As(err, &e) && e.Field != "path" {
			t.Errorf("import %s: field %q", filepath.Base(p), e.Field)
		}
		if want := map[string]string{bomb: "decompresses to more than 9568256 bytes", gap: `chunk 2 of 3`, leaving: `VMDK extent "../disk-flat.img" leaves the package`}[p]; e != nil && !strings.Contains(e.Message, want) {
			t.Errorf("import %s: %q, want one saying %q", filepath.Base(p), e.Message, want)
		}
	}
	// An OVF (beside the OVA's disk) with more NICs than a VM may have.
	st, err := os.Stat(filepath.Join(dir, "appliance-disk1.vmdk"))
	if err != nil {
		t.Fatal(err)
	}
	nics := strings.Repeat(`<Item><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>`, vm.MaxNICs+1)
	many := filepath.Join(dir, "many-nics.ovf")
	if err := os.WriteFile(many, fmt.Appendf(nil, `<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="appliance-disk1.vmdk" ovf:size="%d"/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="d1" ovf:fileRef="file1" ovf:capacity="134217728"/></DiskSection>
  <VirtualSystem ovf:id="many"><Info>a vm</Info><VirtualHardwareSection><Info>hw</Info>
    <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>ovf:/disk/d1</rasd:HostResource></Item>%s
  </VirtualHardwareSection></VirtualSystem></Envelope>`, st.Size(), nics), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = s.c.Import(ctx, v1.ImportArgs{Path: many, Name: "bad"}, time.Minute)
	if e := (*v1.Error)(nil); !errors.As(err, &e) || e.Field != "path" || !strings.Contains(e.Message, fmt.Sprintf("the appliance has 1 disks and %d NICs", vm.MaxNICs+1)) {
		t.Errorf("import of %d NICs: %v", vm.MaxNICs+1, err)
	}
	// Choices an appliance does not offer name their field.
	for _, c := range []struct {
		args  v1.ImportArgs
		field string
	}{
		{v1.ImportArgs{Path: ova, Name: "bad", DeploymentOption: "large"}, "deploymentOption"},
		{v1.ImportArgs{Path: ova, Name: "bad", VM: "db"}, "vm"},
		{v1.ImportArgs{Path: ova, Name: "bad", Networks: map[string]string{"DMZ": "br0"}}, "networks"},
		{v1.ImportArgs{Path: junk, Name: "bad", DeploymentOption: "large"}, "deploymentOption"}, // a single disk offers none
	} {
		_, err := s.c.Import(ctx, c.args, time.Minute)
		var e *v1.Error
		if !errors.As(err, &e) || e.Code != v1.CodeInvalidArgument || e.Field != c.field {
			t.Errorf("import %+v: %v, want invalid_argument on %s", c.args, err, c.field)
		}
	}
	if vms, _ := s.c.VMs(ctx); len(vms) != 0 {
		t.Fatalf("vms after bad imports: %d", len(vms))
	}
	if left, _ := filepath.Glob(filepath.Join(s.dataDir, "pools", "default", "vms", "*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// TestP2VBlockDevice: a physical machine's disk (here a loop device over a
// raw image of the test guest) is imported with a generic CPU model and
// boots.
func TestP2VBlockDevice(t *testing.T) {
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup not installed (mount package): no block device to import")
	}
	s := newServer(t)
	ctx := context.Background()
	raw := filepath.Join(t.TempDir(), "physical.img")
	qemuImgConvert(t, "-O", "raw", guestImage, raw)
	out, err := exec.Command("losetup", "-f", "--show", raw).Output()
	if err != nil {
		t.Skipf("no loop device available: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	// A device is read only when the administrator names it (or a
	// directory holding it) as an import directory.
	if _, err := s.c.Import(ctx, v1.ImportArgs{Path: dev, Name: "p2v"}, 0); !isCode(err, v1.CodeInvalidArgument) {
		t.Fatalf("import of %s without --import-dir: %v, want invalid_argument", dev, err)
	}
	s.stop()
	s.importDirs = append(s.importDirs, dev)
	s.start()
	op, err := s.c.Import(ctx, v1.ImportArgs{Path: dev, Name: "p2v", MemoryMiB: 256, Start: true}, 2*time.Minute)
	s.wait(op, err)
	s.waitReady("p2v", 0)
	v, _ := s.c.VM(ctx, "p2v")
	if v.Spec.CPUModel != "qemu64" {
		t.Fatalf("p2v cpu model %q, want a generic one", v.Spec.CPUModel)
	}
}
