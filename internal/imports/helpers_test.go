package imports

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const fixtureSize = 8 << 20

func needQemuImg(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath(qemuImg); err != nil {
		t.Skip("qemu-img not installed (apt-get install qemu-utils)")
	}
}

// rawFixture writes an 8 MiB raw disk whose every MiB is distinct: half a
// repeated byte (compressible), half pseudo-random data.
func rawFixture(t testing.TB, dir string) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	for i := range fixtureSize >> 20 {
		b.Write(bytes.Repeat([]byte{byte(i + 1)}, 1<<19))
		chunk := make([]byte, 1<<19)
		for j := range chunk {
			chunk[j] = byte(rng.Uint32())
		}
		b.Write(chunk)
	}
	p := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qemuConvert makes a fixture of the given driver and options from src.
func qemuConvert(t testing.TB, src, srcFmt, dst, format string, opts ...string) string {
	t.Helper()
	args := []string{"convert", "-f", srcFmt, "-O", format}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	run(t, qemuImg, append(args, src, dst)...)
	return dst
}

// sameDisk checks with qemu-img compare that got (qcow2) holds want's data.
func sameDisk(t testing.TB, want, wantFmt, got string) {
	t.Helper()
	out, err := exec.Command(qemuImg, "compare", "-f", wantFmt, "-F", "qcow2", want, got).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", want, got, err, out)
	}
	info := run(t, qemuImg, "info", "--output=json", got)
	if !strings.Contains(info, `"format": "qcow2"`) || !strings.Contains(info, `"cluster-size": 65536`) {
		t.Fatalf("%s is not a qcow2 with 64 KiB clusters:\n%s", got, info)
	}
}

// convertChecked runs Convert and checks the progress reports.
func convertChecked(t testing.TB, src Source, dst string) {
	t.Helper()
	var got []float64
	if err := Convert(context.Background(), src, dst, func(v float64) { got = append(got, v) }); err != nil {
		t.Fatalf("Convert: %v", err)
	}
	if len(got) < 2 || got[len(got)-1] != 1 {
		t.Fatalf("progress %v: want several values ending at 1", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] || got[i] < 0 || got[i] > 1 {
			t.Fatalf("progress %v: not increasing within 0..1", got)
		}
	}
	if _, err := os.Stat(dst + ".part"); !os.IsNotExist(err) {
		t.Fatalf("%s.part left behind: %v", dst, err)
	}
}

type tarEntry struct {
	name string
	data []byte
}

func fileEntry(t testing.TB, name, path string) tarEntry {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return tarEntry{name: name, data: b}
}

func writeTar(t testing.TB, path string, entries []tarEntry) {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg, Format: tar.FormatUSTAR}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// manifestFor writes SHA256 lines for the entries.
func manifestFor(entries ...tarEntry) []byte {
	var b bytes.Buffer
	for _, e := range entries {
		sum := sha256.Sum256(e.data)
		fmt.Fprintf(&b, "SHA256(%s)= %s\n", e.name, hex.EncodeToString(sum[:]))
	}
	return b.Bytes()
}

// ovfDiskRef is one disk of a test OVF; file "" is a blank disk.
type ovfDiskRef struct {
	id, file string
	size     int64 // of the file
	capacity string
	units    string
}

// testOVF is a VMware-style descriptor: 2 vCPUs, 1 GiB, two NICs.
func testOVF(name string, disks ...ovfDiskRef) []byte {
	var refs, section, items strings.Builder
	for i, d := range disks {
		ref := ""
		if d.file != "" {
			fmt.Fprintf(&refs, `    <File ovf:href="%s" ovf:id="file%d" ovf:size="%d"/>`+"\n", d.file, i, d.size)
			ref = fmt.Sprintf(` ovf:fileRef="file%d"`, i)
		}
		fmt.Fprintf(&section, `    <Disk ovf:capacity="%s" ovf:capacityAllocationUnits="%s" ovf:diskId="%s"%s ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>`+"\n",
			d.capacity, d.units, d.id, ref)
		fmt.Fprintf(&items, `      <Item>
        <rasd:AddressOnParent>%d</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk %d</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/%s</rasd:HostResource>
        <rasd:InstanceID>%d</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
`, i, i+1, d.id, 10+i)
	}
	return fmt.Appendf(nil, `<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-123" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
%s  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
%s  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="vm-id">
    <Info>A virtual machine</Info>
    <Name>%s</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest"><Info>The kind of installed guest operating system</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>%s</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>1024MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
%s      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>20</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>8</rasd:AddressOnParent>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 2</rasd:ElementName>
        <rasd:InstanceID>21</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`, refs.String(), section.String(), name, name, items.String())
}

// buildOVA writes an OVA holding the OVF, the disk at diskPath and a
// SHA256 manifest; mutate may change the entries before they are written.
func buildOVA(t testing.TB, ova, diskPath string, mutate func([]tarEntry) []tarEntry) {
	t.Helper()
	disk := fileEntry(t, "web01-disk1.vmdk", diskPath)
	desc := tarEntry{name: "web01.ovf", data: testOVF("Web_01", ovfDiskRef{
		id: "vmdisk1", file: disk.name, size: int64(len(disk.data)), capacity: "8", units: "byte * 2^20"})}
	mf := tarEntry{name: "web01.mf", data: manifestFor(desc, disk)}
	entries := []tarEntry{desc, mf, disk}
	if mutate != nil {
		entries = mutate(entries)
	}
	writeTar(t, ova, entries)
}

func TestMain(m *testing.M) {
	// Keep test and benchmark output readable: only warnings and errors.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}
