package imports

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The descriptors below are written for these tests from the structure of
// DSP0243 (OVF 1.x/2.x): what ovftool, vCenter and VirtualBox exports use.

const (
	envOpen1 = `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
`
	envOpen2 = `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:epasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData"
  xmlns:sasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData">
`
	// {A} and {B} are replaced by the sizes of a.vmdk (8 MiB) and b.vmdk (4 MiB).
	refsAB = `  <References><File ovf:id="fa" ovf:href="a.vmdk" ovf:size="{A}"/><File ovf:id="fb" ovf:href="b.vmdk" ovf:size="{B}"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="da" ovf:fileRef="fa" ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20"/>
    <Disk ovf:diskId="db" ovf:fileRef="fb" ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^20"/>
  </DiskSection>
  <NetworkSection><Info>networks</Info><Network ovf:name="VM Network"/><Network ovf:name="Storage"/></NetworkSection>
`
	refsA = `  <References><File ovf:id="fa" ovf:href="a.vmdk" ovf:size="{A}"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="da" ovf:fileRef="fa" ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20"/>
  </DiskSection>
`
	cpu2 = `<Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
`
	mem1G = `<Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
`
	scsi = `<Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
`
	diskA = `<Item><rasd:ElementName>Hard disk 1</rasd:ElementName><rasd:HostResource>ovf:/disk/da</rasd:HostResource><rasd:InstanceID>10</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
`
	diskB = `<Item><rasd:ElementName>Hard disk 2</rasd:ElementName><rasd:HostResource>ovf:/disk/db</rasd:HostResource><rasd:InstanceID>11</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
`
)

// descRefs name d.vmdk, a VMDK text descriptor, and d-flat.vmdk, its
// extent; descEntries are those files with the extent lines given.
const descRefs = `  <References><File ovf:id="fd" ovf:href="d.vmdk"/><File ovf:id="fe" ovf:href="d-flat.vmdk"/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="dd" ovf:fileRef="fd" ovf:capacity="1048576"/></DiskSection>
`

const diskD = `<Item><rasd:HostResource>ovf:/disk/dd</rasd:HostResource><rasd:InstanceID>10</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
`

func descEntries(extents string) []tarEntry {
	flat := make([]byte, 1<<20)
	for i := range flat {
		flat[i] = byte(i / 4096)
	}
	return []tarEntry{{name: "d.vmdk", data: []byte("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n" + extents + "\n")},
		{name: "d-flat.vmdk", data: flat}}
}

// refsDelta has c.vmdk as disk dc, a delta of da.
const refsDelta = `  <References><File ovf:id="fa" ovf:href="a.vmdk" ovf:size="{A}"/><File ovf:id="fc" ovf:href="c.vmdk" ovf:size="{C}"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="da" ovf:fileRef="fa" ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20"/>
    <Disk ovf:diskId="dc" ovf:fileRef="fc" ovf:parentRef="da" ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20"/>
  </DiskSection>
`

const diskC = `<Item><rasd:ElementName>Hard disk 3</rasd:ElementName><rasd:HostResource>ovf:/disk/dc</rasd:HostResource><rasd:InstanceID>13</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
`

// deltaFixture writes dir/top.qcow2, an overlay of dir/src.raw (the raw
// fixture) that changed the 64 KiB at 1 MiB.
func deltaFixture(t testing.TB, dir string) string {
	t.Helper()
	top := filepath.Join(dir, "top.qcow2")
	run(t, qemuImg, "create", "-q", "-f", "qcow2", "-b", filepath.Join(dir, "src.raw"), "-F", "raw", top)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", top)
	return top
}

func nicItem(id int, network, mac string) string {
	addr := ""
	if mac != "" {
		addr = "<rasd:Address>" + mac + "</rasd:Address>"
	}
	return fmt.Sprintf(`<Item>%s<rasd:Connection>%s</rasd:Connection><rasd:ElementName>Network adapter %d</rasd:ElementName><rasd:InstanceID>%d</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
`, addr, network, id, 20+id)
}

// vs is a VirtualSystem named name with the hardware items given.
func vs(name string, items ...string) string {
	return `  <VirtualSystem ovf:id="` + name + `"><Info>a vm</Info><Name>` + name + `</Name>
    <VirtualHardwareSection><Info>hw</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType></System>
` + strings.Join(items, "") + `    </VirtualHardwareSection>
  </VirtualSystem>
`
}

type wantNIC struct{ network, mac string }

type wantDisk struct {
	name  string
	size  int64
	blank bool
	bases string // the names of its Base chain, "a>b"
	bus   string
}

func TestOVFPlans(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	a := qemuConvert(t, rawFixture(t, dir), "raw", filepath.Join(dir, "a.vmdk"), "vmdk", "subformat=streamOptimized")
	b := filepath.Join(dir, "b.vmdk")
	run(t, qemuImg, "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", b, "4M")
	// c.vmdk is a delta of a.vmdk: it holds only the 64 KiB at 1 MiB that
	// an overlay of a changed.
	top := deltaFixture(t, dir)
	c := qemuConvert(t, `json:{"driver":"qcow2","file":{"driver":"file","filename":"`+top+`"},"backing":null}`, "qcow2",
		filepath.Join(dir, "c.vmdk"), "vmdk", "subformat=streamOptimized")
	diskEntries := []tarEntry{fileEntry(t, "a.vmdk", a), fileEntry(t, "b.vmdk", b), fileEntry(t, "c.vmdk", c)}
	da := wantDisk{name: "da", size: fixtureSize}
	dbk := wantDisk{name: "db", size: 4 << 20}

	cases := []struct {
		name     string
		ovf      string
		option   string
		vm       string
		cpus     int
		mem      int
		disks    []wantDisk
		nics     []wantNIC
		warnings []string // substrings, in order
		option0  string   // planned deployment option
		vmName   string   // planned name, when the case checks it
		err      string   // exact message after "import PATH: "
		extra    []tarEntry
	}{
		{name: "nics in order with their MACs", ovf: envOpen1 + refsA + vs("web", cpu2, mem1G, scsi, diskA,
			nicItem(1, "VM Network", "00:50:56:AB:CD:01"), nicItem(2, "Storage", ""), nicItem(3, "VM Network", "00-50-56-ab-cd-03")) + "</Envelope>",
			cpus: 2, mem: 1024, disks: []wantDisk{da},
			nics: []wantNIC{{"VM Network", "00:50:56:ab:cd:01"}, {"Storage", ""}, {"VM Network", "00:50:56:ab:cd:03"}}},
		{name: "bad MACs are replaced with a warning", ovf: envOpen1 + refsA + vs("web", diskA,
			nicItem(1, "VM Network", "01:00:5e:00:00:01"), nicItem(2, "VM Network", "zz"), nicItem(3, "VM Network", "00:50:56:00:00:07"), nicItem(4, "VM Network", "00:50:56:00:00:07")) + "</Envelope>",
			disks: []wantDisk{da}, nics: []wantNIC{{"VM Network", ""}, {"VM Network", ""}, {"VM Network", "00:50:56:00:00:07"}, {"VM Network", ""}},
			warnings: []string{`"Network adapter 1": 01:00:5e:00:00:01 is not a unicast address`, `"Network adapter 2": "zz" is not a MAC address`, `"Network adapter 4": MAC 00:50:56:00:00:07 is used by another NIC`}},
		{name: "no NIC in the OVF, no NIC", ovf: envOpen1 + refsA + vs("web", cpu2, mem1G, diskA) + "</Envelope>",
			cpus: 2, mem: 1024, disks: []wantDisk{da}},
		{name: "disks in drive order, unattached disk left out", ovf: envOpen1 + refsAB + vs("web", scsi, diskA) + "</Envelope>",
			disks: []wantDisk{da}, warnings: []string{`OVF disk "db" is attached to no drive: not imported`}},
		{name: "no drive attaches a disk", ovf: envOpen1 + refsA + vs("web", cpu2, scsi) + "</Envelope>",
			err: `x.ovf: OVF attaches no disk (no disk drive Item has HostResource ovf:/disk/ID for its DiskSection disks "da")`},
		{name: "HostResource spellings", ovf: envOpen1 + refsAB + vs("web", scsi, strings.Replace(diskB, "ovf:/disk/db", "ovf://disk/db", 1),
			strings.Replace(diskA, "ovf:/disk/da", "/disk/da", 1)) + "</Envelope>",
			disks: []wantDisk{dbk, da}},
		{name: "drive order, not DiskSection order", ovf: envOpen1 + refsAB + vs("web", scsi, diskB, diskA) + "</Envelope>",
			disks: []wantDisk{dbk, da}},
		{name: "drive without HostResource is a blank disk of its capacity", ovf: envOpen1 + refsA + vs("web", scsi, diskA,
			`<Item><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:ElementName>Hard disk 2</rasd:ElementName><rasd:InstanceID>12</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
`) + "</Envelope>",
			disks: []wantDisk{da, {name: "hard-disk-2", size: 2 << 30, blank: true}}},
		{name: "drive without HostResource or capacity", ovf: envOpen1 + refsA + vs("web", scsi, diskA,
			`<Item><rasd:ElementName>Hard disk 2</rasd:ElementName><rasd:InstanceID>12</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
`) + "</Envelope>",
			err: `x.ovf: OVF disk drive "Hard disk 2" has no HostResource and no usable capacity ("" "")`},
		{name: "two drives on one disk", ovf: envOpen1 + refsA + vs("web", scsi, diskA,
			`<Item><rasd:ElementName>Hard disk 9</rasd:ElementName><rasd:HostResource>ovf:/disk/da</rasd:HostResource><rasd:InstanceID>19</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
`) + "</Envelope>",
			err: `x.ovf: OVF disk "da" is attached by two drives (items "Hard disk 1" and "Hard disk 9"); a disk backs one drive only`},
		{name: "NVDIMM-backed disk refused", ovf: envOpen1 + refsAB + vs("web", scsi, diskA,
			`<Item><rasd:ElementName>NVDIMM controller</rasd:ElementName><rasd:InstanceID>30</rasd:InstanceID><rasd:ResourceSubType>vmware.nvdimm.controller</rasd:ResourceSubType><rasd:ResourceType>1</rasd:ResourceType></Item>
<Item><rasd:ElementName>NVDIMM 1</rasd:ElementName><rasd:HostResource>ovf:/disk/db</rasd:HostResource><rasd:InstanceID>31</rasd:InstanceID><rasd:Parent>30</rasd:Parent><rasd:ResourceSubType>vmware.nvdimm</rasd:ResourceSubType><rasd:ResourceType>1</rasd:ResourceType></Item>
`) + "</Envelope>",
			err: `x.ovf: OVF disk "db" backs an NVDIMM (item "NVDIMM 1"); Hangar imports disks of disk drives only`},
		{name: "delta disk on its base", ovf: envOpen1 + refsDelta + vs("web", scsi, diskC) + "</Envelope>",
			disks: []wantDisk{{name: "dc", size: fixtureSize, bases: "da"}}},
		{name: "delta of a disk the DiskSection lacks", ovf: envOpen1 + strings.Replace(refsDelta, `ovf:parentRef="da"`, `ovf:parentRef="dx"`, 1) +
			vs("web", scsi, diskC) + "</Envelope>",
			err: `x.ovf: OVF disk "dc" is a delta of disk "dx" (ovf:parentRef), which the DiskSection does not hold`},
		{name: "delta chain loops", ovf: envOpen1 + strings.Replace(refsDelta, `ovf:diskId="da" ovf:fileRef="fa"`, `ovf:diskId="da" ovf:fileRef="fa" ovf:parentRef="dc"`, 1) +
			vs("web", scsi, diskC) + "</Envelope>",
			err: `x.ovf: OVF disk "dc": its ovf:parentRef chain loops`},
		{name: "base and delta on two drives", ovf: envOpen1 + refsDelta + vs("web", scsi, diskA, diskC) + "</Envelope>",
			disks: []wantDisk{da, {name: "dc", size: fixtureSize, bases: "da"}}},
		{name: "unknown required section", ovf: envOpen1 + refsA + strings.Replace(vs("web", diskA), "<Info>a vm</Info>",
			`<Info>a vm</Info><vmw:StorageGroupSection ovf:required="false"><Info>optional</Info></vmw:StorageGroupSection><vmw:SecureBootSection ovf:required="true"><Info>must</Info></vmw:SecureBootSection>`, 1) + "</Envelope>",
			err: `x.ovf: OVF section SecureBootSection (namespace "http://www.vmware.com/schema/ovf") is marked ovf:required="true" and Hangar does not support it`},
		{name: "optional unknown sections import", ovf: envOpen1 + refsA + strings.Replace(vs("web", diskA), "<Info>a vm</Info>",
			`<Info>a vm</Info><vmw:StorageGroupSection ovf:required="false"><Info>optional</Info></vmw:StorageGroupSection><ProductSection ovf:required="true"><Info>p</Info></ProductSection>`, 1) + "</Envelope>",
			disks: []wantDisk{da}},
		{name: "VirtualSystemCollection of one VM", vmName: "web", ovf: envOpen1 + refsA + `<VirtualSystemCollection ovf:id="vapp"><Info>vApp</Info><Name>vapp</Name>
` + vs("web", cpu2, diskA) + "</VirtualSystemCollection></Envelope>",
			cpus: 2, disks: []wantDisk{da}},
		{name: "VirtualSystemCollection of none", ovf: envOpen1 + refsA + `<VirtualSystemCollection ovf:id="vapp"><Info>vApp</Info></VirtualSystemCollection></Envelope>`,
			err: `x.ovf: OVF VirtualSystemCollection holds no VirtualSystem`},
		{name: "VirtualSystemCollection of two", ovf: envOpen1 + refsAB + `<VirtualSystemCollection ovf:id="vapp"><Info>vApp</Info>
` + vs("web", diskA) + vs("db", diskB) + "</VirtualSystemCollection></Envelope>",
			err: `x.ovf: OVF with 2 virtual systems (a multi-VM vApp: "web", "db"): one plan is of one of them (--vm NAME); InspectAll plans them all`},
		{name: "one VM of a vApp", vm: "db", vmName: "vapp-db", ovf: envOpen1 + refsAB + `<VirtualSystemCollection ovf:id="vapp"><Info>vApp</Info>
` + vs("web", diskA) + vs("db", cpu2, diskB) + "</VirtualSystemCollection></Envelope>",
			cpus: 2, disks: []wantDisk{dbk}, warnings: []string{`OVF disk "da" is attached to no drive: not imported`}},
		{name: "VM the vApp lacks", vm: "cache", ovf: envOpen1 + refsAB + `<VirtualSystemCollection ovf:id="vapp"><Info>vApp</Info>
` + vs("web", diskA) + vs("db", cpu2, diskB) + "</VirtualSystemCollection></Envelope>",
			err: `no virtual system "cache": x.ovf holds "web", "db"`},
		{name: "Content of xsi:type VirtualSystem_Type", ovf: envOpen1 + refsA + strings.NewReplacer(
			"<VirtualSystem ", `<Content xsi:type="ovf:VirtualSystem_Type" `, "</VirtualSystem>", "</Content>").Replace(vs("web", cpu2, diskA)) + "</Envelope>",
			cpus: 2, disks: []wantDisk{da}},
		{name: "memory bounds are limits", ovf: envOpen1 + refsA + vs("web",
			`<Item ovf:bound="min"><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:InstanceID>5</rasd:InstanceID><rasd:Reservation>512</rasd:Reservation><rasd:ResourceType>4</rasd:ResourceType></Item>
<Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:InstanceID>6</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
<Item ovf:bound="max"><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:InstanceID>7</rasd:InstanceID><rasd:Limit>8192</rasd:Limit><rasd:ResourceType>4</rasd:ResourceType></Item>
`, diskA) + "</Envelope>",
			mem: 2048, disks: []wantDisk{da}},
		{name: "default deployment option", ovf: envOpen1 + refsAB + deployOptions(`ovf:default="true"`) + deployVS + "</Envelope>",
			cpus: 1, mem: 1024, disks: []wantDisk{da}, option0: "small", warnings: []string{
				`OVF deployment option "small" imported, the appliance's default; it also offers large (--deployment-option)`,
				`OVF disk "db" is attached to no drive in deployment option "small": not imported`}},
		{name: "first deployment option without a default", ovf: envOpen1 + refsAB + deployOptions("") + deployVS + "</Envelope>",
			cpus: 1, mem: 1024, disks: []wantDisk{da}, option0: "small", warnings: []string{`"small" imported`, `"db"`}},
		{name: "chosen deployment option", option: "large", ovf: envOpen1 + refsAB + deployOptions(`ovf:default="true"`) + deployVS + "</Envelope>",
			cpus: 4, mem: 14336, disks: []wantDisk{da, dbk}, option0: "large"},
		{name: "unknown deployment option", option: "huge", ovf: envOpen1 + refsAB + deployOptions("") + deployVS + "</Envelope>",
			err: `unknown deployment option "huge": x.ovf offers small, large`},
		{name: "limits of the default option only", ovf: envOpen1 + refsA + limitsOptions + vs("app", scsi, diskA, limitsItems()) + "</Envelope>",
			cpus: 2, mem: 14 << 10, disks: append([]wantDisk{da}, blanks(12)...), option0: "std", warnings: []string{`"std" imported`}},
		{name: "gzip-compressed file that is not", ovf: envOpen1 + strings.Replace(refsA, `ovf:size="{A}"`, `ovf:size="{A}" ovf:compression="gzip"`, 1) + vs("web", diskA) + "</Envelope>",
			err: `a.vmdk: ovf:compression says gzip but the file is not gzip-compressed`},
		{name: "chunked file without its chunks", ovf: envOpen1 + strings.Replace(refsA, `ovf:size="{A}"`, `ovf:size="{A}" ovf:chunkSize="4194304"`, 1) + vs("web", diskA) + "</Envelope>",
			err: `OVF file "a.vmdk": chunk 1 of 2 (ovf:size 4325376, ovf:chunkSize 4194304): x.ova: a.vmdk.000000000 is missing from the archive`},
		{name: "VMDK descriptor and its FLAT extent in the OVA", ovf: envOpen1 + descRefs + vs("web", scsi, diskD) + "</Envelope>",
			extra: descEntries(`RW 2048 FLAT "d-flat.vmdk" 0`), disks: []wantDisk{{name: "dd", size: 1 << 20}}},
		{name: "VMDK descriptor of two extents in the OVA", ovf: envOpen1 + descRefs + vs("web", scsi, diskD) + "</Envelope>",
			extra: descEntries("RW 1024 FLAT \"d-flat.vmdk\" 1024\nRW 1024 FLAT \"d-flat.vmdk\" 0"), disks: []wantDisk{{name: "dd", size: 1 << 20}}},
		{name: "VMDK descriptor of two extents, one too short", ovf: envOpen1 + descRefs + vs("web", scsi, diskD) + "</Envelope>",
			extra: descEntries("RW 1024 FLAT \"d-flat.vmdk\" 1024\nRW 1025 FLAT \"d-flat.vmdk\" 1024"),
			err:   `d.vmdk: VMDK extent "d-flat.vmdk" has 1048576 bytes, the descriptor needs 1049088`},
		{name: "VMDK descriptor extent leaving the package", ovf: envOpen1 + descRefs + vs("web", scsi, diskD) + "</Envelope>",
			extra: descEntries("RW 1024 FLAT \"d-flat.vmdk\" 0\nRW 1024 FLAT \"../d-flat.vmdk\" 0"),
			err:   `d.vmdk: VMDK extent "../d-flat.vmdk" leaves the package or is not clean`},
		{name: "VMDK descriptor extent absolute", ovf: envOpen1 + descRefs + vs("web", scsi, diskD) + "</Envelope>",
			extra: descEntries("RW 1024 FLAT \"d-flat.vmdk\" 0\nRW 1024 FLAT \"/etc/passwd\" 0"),
			err:   `d.vmdk: VMDK extent "/etc/passwd" is absolute`},
		{name: "VMDK extent the References lack", ovf: envOpen1 + strings.Replace(descRefs, `<File ovf:id="fe" ovf:href="d-flat.vmdk"/>`, "", 1) + vs("web", scsi, diskD) + "</Envelope>",
			extra: descEntries(`RW 2048 FLAT "d-flat.vmdk" 0`),
			err:   `OVF disk "dd": d-flat.vmdk, an extent of d.vmdk, is not a File of the OVF's References`},
		{name: "VMDK FLAT extent too short", ovf: envOpen1 + descRefs + vs("web", scsi, diskD) + "</Envelope>",
			extra: descEntries(`RW 4096 FLAT "d-flat.vmdk" 0`),
			err:   `d.vmdk: VMDK extent "d-flat.vmdk" has 1048576 bytes, the descriptor needs 2097152`},
		{name: "OVF 0.9 envelope", ovf: ovf09(ovf09Hardware), vmName: "old-appliance",
			cpus: 2, mem: 512, disks: []wantDisk{{name: "vmdisk1", size: fixtureSize}}, nics: []wantNIC{{"VM Network", "00:50:56:01:02:03"}},
			warnings: []string{virtioWarning + "disks on lsilogic controllers are virtio disks; PCNet32 NICs are virtio-net"}},
		{name: "OVF 0.9 unknown required section", ovf: strings.Replace(ovf09(ovf09Hardware), "<Info>A virtual machine</Info>",
			`<Info>A virtual machine</Info><Section xsi:type="ovf:SecureBootSection_Type" ovf:required="true"><Info>must</Info></Section>`, 1),
			err: `x.ovf: OVF section SecureBootSection (namespace "http://www.vmware.com/schema/ovf/1/envelope") is marked ovf:required="true" and Hangar does not support it`},
		{name: "OVF 0.9 drive of a disk no DiskSection_Type holds", ovf: strings.Replace(ovf09(ovf09Hardware), "/disk/vmdisk1", "/disk/vmdisk9", 1),
			err: `x.ovf: OVF item "Harddisk 1": HostResource names disk "vmdisk9", which the DiskSection does not hold`},
		{name: "Section element in OVF 1.x is an unknown section", ovf: envOpen1 + refsA + strings.Replace(vs("web", diskA), "<Info>a vm</Info>",
			`<Info>a vm</Info><Section xsi:type="ovf:VirtualHardwareSection_Type" ovf:required="true"><Info>hw</Info></Section>`, 1) + "</Envelope>",
			err: `x.ovf: OVF section Section (namespace "http://schemas.dmtf.org/ovf/envelope/1") is marked ovf:required="true" and Hangar does not support it`},
		{name: "IDE and SATA controllers give sata disks", ovf: envOpen1 + refsAB + vs("web", scsi, ideCtl, sataCtl,
			strings.Replace(diskA, "<rasd:Parent>3</rasd:Parent>", "<rasd:Parent>4</rasd:Parent>", 1),
			strings.Replace(diskB, "<rasd:Parent>3</rasd:Parent>", "<rasd:Parent>5</rasd:Parent>", 1),
			`<Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>Hard disk 3</rasd:ElementName><rasd:InstanceID>12</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
`) + "</Envelope>",
			disks:    []wantDisk{{name: "da", size: fixtureSize, bus: "sata"}, {name: "db", size: 4 << 20, bus: "sata"}, {name: "hard-disk-3", size: 1 << 20, blank: true}},
			warnings: []string{virtioWarning + "disks on lsilogic controllers are virtio disks (Hangar's models)"}},
		{name: "VirtualBox export", ovf: vboxOVF("BIOS"), vmName: "debian-vbox", cpus: 1, mem: 1024,
			disks: []wantDisk{{name: "vmdisk1", size: fixtureSize, bus: "sata"}}, nics: []wantNIC{{"NAT", "08:00:27:aa:bb:cc"}},
			warnings: []string{virtioWarning + "E1000 NICs are virtio-net (Hangar's models): a guest without virtio drivers will not find them"}},
		{name: "VirtualBox EFI export", ovf: vboxOVF("EFI"),
			err: `x.ovf: OVF VM "debian-vbox" asks for EFI firmware (vbox:Machine Firmware type="EFI"); Hangar VMs boot with BIOS only`},
		{name: "vCenter EFI firmware", ovf: envOpen1 + refsA + vs("web", diskA, `<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
`) + "</Envelope>",
			err: `x.ovf: OVF VM "web" asks for efi firmware (vmw:Config firmware="efi"); Hangar VMs boot with BIOS only`},
		{name: "vCenter BIOS firmware and other settings", ovf: envOpen1 + refsA + vs("web", diskA, `<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios"/><vmw:Config ovf:required="false" vmw:key="tools.syncTimeWithHost" vmw:value="false"/>
`) + "</Envelope>",
			disks: []wantDisk{da}},
		{name: "required vmw:Config", ovf: envOpen1 + refsA + vs("web", diskA, `<vmw:Config ovf:required="true" vmw:key="nestedHVEnabled" vmw:value="true"/>
`) + "</Envelope>",
			err: `x.ovf: OVF section Config (namespace "http://www.vmware.com/schema/ovf") is marked ovf:required="true" and Hangar does not support it`},
		{name: "ProductSection properties over a transport", ovf: envOpen1 + refsA + strings.NewReplacer("<VirtualHardwareSection>", `<VirtualHardwareSection ovf:transport="com.vmware.guestInfo iso">`,
			"<Info>a vm</Info>", `<Info>a vm</Info><ProductSection><Info>appliance settings</Info><Product>Appliance</Product><Category>Network</Category>
<Property ovf:key="ip0" ovf:type="string" ovf:userConfigurable="true"/><Property ovf:key="dns" ovf:type="string" ovf:userConfigurable="true"/></ProductSection>`).Replace(vs("web", diskA)) + "</Envelope>",
			disks: []wantDisk{da}, warnings: []string{`OVF VM "web" reads 2 ProductSection properties through ovf:transport "com.vmware.guestInfo iso": Hangar does not deliver an OVF environment`}},
		{name: "ProductSection properties without a transport", ovf: envOpen1 + refsA + strings.Replace(vs("web", diskA),
			"<Info>a vm</Info>", `<Info>a vm</Info><ProductSection><Info>p</Info><Property ovf:key="version" ovf:type="string" ovf:value="1.2"/></ProductSection>`, 1) + "</Envelope>",
			disks: []wantDisk{da}},
		{name: "OVF 2 EthernetPortItem and StorageItem", ovf: envOpen2 + refsA + `  <VirtualSystem ovf:id="v2"><Info>a vm</Info>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>3</rasd:VirtualQuantity></Item>
      <EthernetPortItem><epasd:Address>52:54:00:12:34:56</epasd:Address><epasd:Connection>lan</epasd:Connection><epasd:InstanceID>8</epasd:InstanceID><epasd:ResourceType>10</epasd:ResourceType></EthernetPortItem>
      <StorageItem><sasd:HostResource>ovf:/disk/da</sasd:HostResource><sasd:InstanceID>9</sasd:InstanceID><sasd:ResourceType>17</sasd:ResourceType></StorageItem>
    </VirtualHardwareSection></VirtualSystem></Envelope>`,
			cpus: 3, disks: []wantDisk{da}, nics: []wantNIC{{"lan", "52:54:00:12:34:56"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ovf := strings.NewReplacer("{A}", fmt.Sprint(len(diskEntries[0].data)), "{B}", fmt.Sprint(len(diskEntries[1].data)),
				"{C}", fmt.Sprint(len(diskEntries[2].data))).Replace(c.ovf)
			ova := filepath.Join(t.TempDir(), "x.ova")
			writeTar(t, ova, append(append([]tarEntry{{name: "x.ovf", data: []byte(ovf)}}, diskEntries...), c.extra...))
			plan, err := InspectWith(context.Background(), ova, Options{DeploymentOption: c.option, VM: c.vm})
			if c.err != "" {
				if err == nil || err.Error() != "import "+ova+": "+c.err {
					t.Fatalf("err = %v\nwant %s", err, c.err)
				}
				if strings.HasPrefix(c.err, "unknown deployment option") != errors.Is(err, ErrDeploymentOption) ||
					strings.HasPrefix(c.err, "no virtual system") != errors.Is(err, ErrVirtualSystem) ||
					!errors.Is(err, ErrMalformed) && !errors.Is(err, ErrDeploymentOption) && !errors.Is(err, ErrVirtualSystem) {
					t.Fatalf("err %v: wrong kind", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.vmName != "" && plan.Name != c.vmName {
				t.Errorf("name %q, want %q", plan.Name, c.vmName)
			}
			if plan.CPUs != c.cpus || plan.MemoryMiB != c.mem || plan.DeploymentOption != c.option0 {
				t.Errorf("cpus %d memory %d option %q; want %d %d %q", plan.CPUs, plan.MemoryMiB, plan.DeploymentOption, c.cpus, c.mem, c.option0)
			}
			var disks []wantDisk
			for _, d := range plan.Disks {
				var bases []string
				for b := d.Base; b != nil; b = b.Base {
					bases = append(bases, b.Name)
				}
				disks = append(disks, wantDisk{d.Name, d.VirtualSize, d.Path == "", strings.Join(bases, ">"), d.Bus})
			}
			if !slices.Equal(disks, c.disks) {
				t.Errorf("disks %+v, want %+v", disks, c.disks)
			}
			var nics []wantNIC
			for _, n := range plan.NICs {
				nics = append(nics, wantNIC{n.Network, n.MAC})
			}
			if !slices.Equal(nics, c.nics) {
				t.Errorf("nics %+v, want %+v", nics, c.nics)
			}
			warnings := plan.Warnings // the virtio one only where a case asks for it
			if !slices.ContainsFunc(c.warnings, func(w string) bool { return strings.HasPrefix(w, virtioWarning) }) {
				warnings = withoutVirtio(warnings)
			}
			if len(warnings) != len(c.warnings) {
				t.Fatalf("warnings %q, want %q", warnings, c.warnings)
			}
			for i, w := range c.warnings {
				if !strings.Contains(warnings[i], w) {
					t.Errorf("warning %q, want one with %q", warnings[i], w)
				}
			}
		})
	}

	// A delta disk is converted flattened on its base: the overlay's data.
	ova := filepath.Join(t.TempDir(), "delta.ova")
	ovf := strings.NewReplacer("{A}", fmt.Sprint(len(diskEntries[0].data)), "{C}", fmt.Sprint(len(diskEntries[2].data))).
		Replace(envOpen1 + refsDelta + vs("web", scsi, diskC) + "</Envelope>")
	writeTar(t, ova, []tarEntry{{name: "x.ovf", data: []byte(ovf)}, diskEntries[0], diskEntries[2]})
	plan, err := Inspect(context.Background(), ova)
	if err != nil {
		t.Fatal(err)
	}
	// through the API, as the agent gets it
	src, err := FromAPI("dc", plan.Disks[0].API(), func(p string) (string, error) { return p, nil })
	if err != nil || src.Base == nil || src.Base.Offset != plan.Disks[0].Base.Offset || src.Base.Base != nil {
		t.Fatalf("FromAPI: %+v, %v", src, err)
	}
	out := filepath.Join(t.TempDir(), "dc.qcow2")
	convertChecked(t, src, out)
	sameDisk(t, top, "qcow2", out)
	if info := run(t, qemuImg, "info", "--output=json", out); strings.Contains(info, "backing") {
		t.Fatalf("%s has a backing file:\n%s", out, info)
	}
	if _, err := os.Stat(out + ".part.delta"); !os.IsNotExist(err) {
		t.Fatalf("delta overlay left behind: %v", err)
	}

	// A VMware-style delta names its parent (parentFileNameHint, parentCID):
	// never followed, the OVF's parentRef is the base.
	e := filepath.Join(dir, "e.vmdk")
	run(t, qemuImg, "create", "-q", "-f", "vmdk", "-b", "a.vmdk", "-F", "vmdk", e)
	run(t, "qemu-io", "-f", "vmdk", "-c", "write -P 0x6b 2M 64k", e)
	want := qemuConvert(t, e, "vmdk", filepath.Join(dir, "e-want.qcow2"), "qcow2")
	hinted := fileEntry(t, "c.vmdk", e)
	ova = filepath.Join(t.TempDir(), "hinted.ova")
	ovf = strings.NewReplacer("{A}", fmt.Sprint(len(diskEntries[0].data)), "{C}", fmt.Sprint(len(hinted.data))).
		Replace(envOpen1 + refsDelta + vs("web", scsi, diskC) + "</Envelope>")
	writeTar(t, ova, []tarEntry{{name: "x.ovf", data: []byte(ovf)}, diskEntries[0], hinted})
	if plan, err = Inspect(context.Background(), ova); err != nil {
		t.Fatal(err)
	}
	out = filepath.Join(t.TempDir(), "dc.qcow2")
	convertChecked(t, plan.Disks[0], out)
	sameDisk(t, want, "qcow2", out)
	// the same file as a disk of its own is refused: its parent would be opened
	ovf = strings.NewReplacer("{A}", fmt.Sprint(len(hinted.data))).Replace(envOpen1 + refsA + vs("web", scsi, diskA) + "</Envelope>")
	writeTar(t, ova, []tarEntry{{name: "x.ovf", data: []byte(ovf)}, {name: "a.vmdk", data: hinted.data}})
	if _, err = Inspect(context.Background(), ova); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "parentFileNameHint") {
		t.Fatalf("a disk naming a parent: %v", err)
	}

	// A VMDK descriptor's FLAT extent inside an OVA converts to its data.
	ova = filepath.Join(t.TempDir(), "desc.ova")
	desc := descEntries(`RW 2048 FLAT "d-flat.vmdk" 0`)
	writeTar(t, ova, append([]tarEntry{{name: "x.ovf", data: []byte(envOpen1 + descRefs + vs("web", scsi, diskD) + "</Envelope>")}}, desc...))
	if plan, err = Inspect(context.Background(), ova); err != nil {
		t.Fatal(err)
	}
	flat := filepath.Join(dir, "d-flat.raw")
	if err := os.WriteFile(flat, desc[1].data, 0o644); err != nil {
		t.Fatal(err)
	}
	out = filepath.Join(t.TempDir(), "dd.qcow2")
	convertChecked(t, plan.Disks[0], out)
	sameDisk(t, flat, "raw", out)

	// …and its SPARSE extent (twoGbMaxExtentSparse, as VMware Workstation
	// splits disks), which qemu opens only through a descriptor: written
	// out beside the volume.
	split := filepath.Join(dir, "s.vmdk")
	run(t, qemuImg, "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", split, "8M")
	run(t, "qemu-io", "-f", "vmdk", "-c", "write -P 0x77 3M 64k", split)
	refs := `  <References><File ovf:id="fd" ovf:href="s.vmdk"/><File ovf:id="fe" ovf:href="s-s001.vmdk"/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="dd" ovf:fileRef="fd" ovf:capacity="8388608"/></DiskSection>
`
	writeTar(t, ova, []tarEntry{{name: "x.ovf", data: []byte(envOpen1 + refs + vs("web", scsi, diskD) + "</Envelope>")},
		fileEntry(t, "s.vmdk", split), fileEntry(t, "s-s001.vmdk", filepath.Join(dir, "s-s001.vmdk"))})
	if plan, err = Inspect(context.Background(), ova); err != nil {
		t.Fatalf("descriptor of a SPARSE extent: %v", err)
	}
	out = filepath.Join(t.TempDir(), "dd.qcow2")
	convertChecked(t, plan.Disks[0], out)
	sameDisk(t, split, "vmdk", out)
	if _, err := os.Stat(out + ".part.src.d"); !os.IsNotExist(err) {
		t.Fatalf("extents left behind: %v", err)
	}

	// A plain OVF directory: its one descriptor and the files beside it.
	ovfDir := t.TempDir()
	ovf = strings.NewReplacer("{A}", fmt.Sprint(len(diskEntries[0].data))).Replace(envOpen1 + refsA + vs("web", cpu2, diskA, nicItem(1, "VM Network", "")) + "</Envelope>")
	for name, data := range map[string][]byte{"web.ovf": []byte(ovf), "a.vmdk": diskEntries[0].data} {
		if err := os.WriteFile(filepath.Join(ovfDir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	plan, err = Inspect(context.Background(), ovfDir)
	if err != nil || plan.Kind != "ovf" || plan.CPUs != 2 || len(plan.Disks) != 1 || plan.Disks[0].Path != filepath.Join(ovfDir, "a.vmdk") || len(plan.NICs) != 1 {
		t.Fatalf("OVF directory: %+v, %v", plan, err)
	}
	if err := os.WriteFile(filepath.Join(ovfDir, "other.OVF"), []byte(ovf), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err = Inspect(context.Background(), ovfDir); !errors.Is(err, ErrMalformed) || !strings.HasSuffix(err.Error(), ": 2 .ovf files at its top, want one (an OVF directory holds one descriptor and its files)") {
		t.Fatalf("OVF directory with two descriptors: %v", err)
	}

	// A deployment option asked of a single disk is refused as such.
	_, err = InspectWith(context.Background(), a, Options{DeploymentOption: "small"})
	if !errors.Is(err, ErrDeploymentOption) || errors.Is(err, ErrMalformed) {
		t.Fatalf("deployment option of a vmdk: %v", err)
	}
	if _, err = InspectWith(context.Background(), a, Options{VM: "web"}); !errors.Is(err, ErrVirtualSystem) || errors.Is(err, ErrMalformed) {
		t.Fatalf("vm of a vmdk: %v", err)
	}
	os.Remove(a)
}

// limitsOptions and limitsItems: the default option "std" has 13 disks and
// 14 GiB, "big" (its items last) 17 disks and 58 GiB.
const limitsOptions = `  <DeploymentOptionSection><Info>sizes</Info>
    <Configuration ovf:id="std" ovf:default="true"><Label>Standard</Label></Configuration>
    <Configuration ovf:id="big"><Label>Big</Label></Configuration>
  </DeploymentOptionSection>
`

func limitsItems() string {
	var b strings.Builder
	b.WriteString(`<Item ovf:configuration="std"><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
<Item ovf:configuration="std"><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>14</rasd:VirtualQuantity></Item>
<Item ovf:configuration="big"><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>8</rasd:VirtualQuantity></Item>
<Item ovf:configuration="big"><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>58</rasd:VirtualQuantity></Item>
`)
	for i := range 16 {
		conf := ""
		if i >= 12 {
			conf = ` ovf:configuration="big"`
		}
		fmt.Fprintf(&b, `<Item%s><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>data %d</rasd:ElementName><rasd:InstanceID>%d</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
`, conf, i+1, 100+i)
	}
	return b.String()
}

// blanks are the first n blank 1 MiB disks of limitsItems.
func blanks(n int) []wantDisk {
	var d []wantDisk
	for i := range n {
		d = append(d, wantDisk{name: fmt.Sprintf("data-%d", i+1), size: 1 << 20, blank: true})
	}
	return d
}

func deployOptions(def string) string {
	return `  <DeploymentOptionSection><Info>sizes</Info>
    <Configuration ovf:id="small" ` + def + `><Label>Small</Label><Description>1 vCPU</Description></Configuration>
    <Configuration ovf:id="large"><Label>Large</Label><Description>4 vCPUs, 14 GiB, a data disk</Description></Configuration>
  </DeploymentOptionSection>
`
}

// deployVS sizes by deployment option; the items of the last option come
// last, so "the last item wins" plans the large one.
var deployVS = vs("app", scsi, diskA,
	`<Item ovf:configuration="small"><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
<Item ovf:configuration="small"><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
<Item ovf:configuration="large"><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
<Item ovf:configuration="large"><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>14</rasd:VirtualQuantity></Item>
<Item ovf:configuration="large"><rasd:ElementName>Hard disk 2</rasd:ElementName><rasd:HostResource>ovf:/disk/db</rasd:HostResource><rasd:InstanceID>11</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
`)

// withoutVirtio is warnings without the one saying which devices become
// virtio.
func withoutVirtio(warnings []string) []string {
	return slices.DeleteFunc(slices.Clone(warnings), func(w string) bool { return strings.HasPrefix(w, virtioWarning) })
}

// ideCtl and sataCtl are the controllers VMware and VirtualBox write for
// IDE (InstanceID 4) and SATA (5) disks.
const (
	ideCtl = `<Item><rasd:Address>0</rasd:Address><rasd:ElementName>IDE 0</rasd:ElementName><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceType>5</rasd:ResourceType></Item>
`
	sataCtl = `<Item><rasd:Address>0</rasd:Address><rasd:ElementName>SATA Controller 0</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
`
)

// vboxOVF is an OVF 1.0 as VirtualBox exports it: Caption and ElementName,
// an AHCI controller holding the disk, a NAT NIC with its MAC, and the
// machine's own settings in vbox:Machine (firmware given).
func vboxOVF(firmware string) string {
	return `<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References><File ovf:id="file1" ovf:href="a.vmdk"/></References>
  <DiskSection><Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="8388608" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="2d3c0a4e-0000-4000-8000-000000000001"/>
  </DiskSection>
  <NetworkSection><Info>Logical networks used in the package</Info><Network ovf:name="NAT"><Description>Logical network used by this appliance.</Description></Network></NetworkSection>
  <VirtualSystem ovf:id="debian-vbox">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="96"><Info>The kind of installed guest operating system</Info><Description>Debian_64</Description><vbox:OSType ovf:required="false">Debian_64</vbox:OSType></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemIdentifier>debian-vbox</vssd:VirtualSystemIdentifier><vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType></System>
      <Item><rasd:Caption>1 virtual CPU</rasd:Caption><rasd:Description>Number of virtual CPUs</rasd:Description><rasd:ElementName>1 virtual CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:Caption>1024 MB of memory</rasd:Caption><rasd:ElementName>1024 MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:Caption>ideController0</rasd:Caption><rasd:ElementName>ideController0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>PIIX4</rasd:ResourceSubType><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:Caption>sataController0</rasd:Caption><rasd:ElementName>sataController0</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>AHCI</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption><rasd:Connection>NAT</rasd:Connection><rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName><rasd:InstanceID>6</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType><rasd:Address>080027AABBCC</rasd:Address></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:Caption>disk1</rasd:Caption><rasd:Description>Disk Image</rasd:Description><rasd:ElementName>disk1</rasd:ElementName><rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>7</rasd:InstanceID><rasd:Parent>5</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{2d3c0a4e-0000-4000-8000-000000000002}" name="debian-vbox">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware><CPU count="1"/><Memory RAMSize="1024"/><Firmware type="` + firmware + `"/></Hardware>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>`
}

// ovf09 is an OVF 0.9 envelope (VMware's pre-DMTF namespace, as ESX 3.5
// and VirtualBox's "legacy" export write it): sections are Section
// elements named by xsi:type, the VM is a Content, items say InstanceId
// and Caption, capacities are bytes. Its disk is a.vmdk.
func ovf09(hardware string) string {
	return `<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="0.9" xml:lang="en-US" xmlns="http://www.vmware.com/schema/ovf/1/envelope" xmlns:ovf="http://www.vmware.com/schema/ovf/1/envelope"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References><File ovf:href="a.vmdk" ovf:id="file1" ovf:size="{A}"/></References>
  <Section xsi:type="ovf:NetworkSection_Type"><Info>The list of logical networks</Info><Network ovf:name="VM Network"><Description>The VM Network network</Description></Network></Section>
  <Section xsi:type="ovf:DiskSection_Type"><Info>Meta-information about the virtual disks</Info>
    <Disk ovf:capacity="8388608" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/specifications/vmdk.html#compressed"/>
  </Section>
  <Content ovf:id="old-appliance" xsi:type="ovf:VirtualSystem_Type">
    <Info>A virtual machine</Info>
    <Section ovf:id="36" xsi:type="ovf:OperatingSystemSection_Type"><Info>The kind of installed guest operating system</Info></Section>
    <Section xsi:type="ovf:VirtualHardwareSection_Type"><Info>Virtual hardware requirements</Info>
      <System><vssd:InstanceId>0</vssd:InstanceId><vssd:VirtualSystemIdentifier>old-appliance</vssd:VirtualSystemIdentifier><vssd:VirtualSystemType>vmx-04</vssd:VirtualSystemType></System>
` + hardware + `    </Section>
  </Content>
</Envelope>`
}

const ovf09Hardware = `      <Item><rasd:Caption>2 virtual CPU(s)</rasd:Caption><rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity><rasd:AllocationUnits>MegaHertz</rasd:AllocationUnits></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:Caption>512 MB of memory</rasd:Caption><rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>512</rasd:VirtualQuantity></Item>
      <Item><rasd:BusNumber>0</rasd:BusNumber><rasd:Caption>SCSI Controller 0 - LSI Logic</rasd:Caption><rasd:InstanceId>3</rasd:InstanceId><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:Caption>Harddisk 1</rasd:Caption><rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceId>4</rasd:InstanceId><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Address>00:50:56:01:02:03</rasd:Address><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Caption>Ethernet adapter on &quot;VM Network&quot;</rasd:Caption><rasd:Connection>VM Network</rasd:Connection><rasd:InstanceId>5</rasd:InstanceId><rasd:ResourceSubType>PCNet32</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
`

// TestOVFVApp plans every VM of a multi-VM vApp: its startup order, each
// VM's own disks and NICs, names after the vApp; a shared disk and a bad
// order are refused.
func TestOVFVApp(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	a := filepath.Join(dir, "a.vmdk")
	b := filepath.Join(dir, "b.vmdk")
	run(t, qemuImg, "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", a, "8M")
	run(t, qemuImg, "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", b, "4M")
	disks := []tarEntry{fileEntry(t, "a.vmdk", a), fileEntry(t, "b.vmdk", b)}
	startup := `<StartupSection><Info>start order</Info><Item ovf:id="web" ovf:order="1" ovf:startAction="powerOn"/><Item ovf:id="db" ovf:order="0" ovf:startAction="powerOn"/></StartupSection>
`
	vapp := func(startup string, web, db []string) string {
		return strings.NewReplacer("{A}", fmt.Sprint(len(disks[0].data)), "{B}", fmt.Sprint(len(disks[1].data))).Replace(
			envOpen1 + refsAB + `<VirtualSystemCollection ovf:id="shop"><Info>vApp</Info><Name>Shop</Name>
` + startup + vs("web", web...) + vs("db", db...) + "</VirtualSystemCollection></Envelope>")
	}
	inspect := func(ovf string, opt Options) ([]Plan, error) {
		ova := filepath.Join(t.TempDir(), "x.ova")
		writeTar(t, ova, append([]tarEntry{{name: "x.ovf", data: []byte(ovf)}}, disks...))
		plans, err := InspectAll(context.Background(), ova, opt)
		if err != nil {
			err = errors.Unwrap(err) // drop "import PATH: "
		}
		return plans, err
	}

	plans, err := inspect(vapp(startup, []string{cpu2, scsi, diskA, nicItem(1, "VM Network", "00:50:56:00:00:01")}, []string{mem1G, scsi, diskB, nicItem(1, "Storage", "")}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	type vmPlan struct {
		name  string
		order int
		cpus  int
		mem   int
		disk  int64
		net   string
		warns int
	}
	var got []vmPlan
	for _, p := range plans {
		if len(p.Disks) != 1 || len(p.NICs) != 1 || p.VApp != "shop" {
			t.Fatalf("plan %+v", p)
		}
		got = append(got, vmPlan{p.Name, p.StartOrder, p.CPUs, p.MemoryMiB, p.Disks[0].VirtualSize, p.NICs[0].Network, len(withoutVirtio(p.Warnings))})
	}
	want := []vmPlan{{"shop-db", 0, 0, 1024, 4 << 20, "Storage", 0}, {"shop-web", 1, 2, 0, 8 << 20, "VM Network", 0}}
	if !slices.Equal(got, want) {
		t.Fatalf("plans %+v\nwant %+v", got, want)
	}

	// Without a StartupSection: document order, unordered (-1).
	if plans, err = inspect(vapp("", []string{diskA}, []string{diskB}), Options{}); err != nil || len(plans) != 2 ||
		plans[0].Name != "shop-web" || plans[1].Name != "shop-db" || plans[0].StartOrder != -1 {
		t.Fatalf("unordered vApp: %+v, %v", plans, err)
	}
	// Two VMs of one Name: the second gets a suffix and a warning.
	same := strings.Replace(vapp("", []string{diskA}, []string{diskB}), "<Name>db</Name>", "<Name>web</Name>", 1)
	if plans, err = inspect(same, Options{}); err != nil || len(plans) != 2 || plans[0].Name != "shop-web" || plans[1].Name != "shop-web-2" ||
		len(plans[1].Warnings) != 1 || plans[1].Warnings[0] != "OVF vApp VM named shop-web like another VM of the vApp: imported as shop-web-2" {
		t.Fatalf("two VMs of one name: %+v, %v", plans, err)
	}
	// --vm picks one, whose order is still recorded.
	if plans, err = inspect(vapp(startup, []string{diskA}, []string{diskB}), Options{VM: "web"}); err != nil || len(plans) != 1 ||
		plans[0].Name != "shop-web" || plans[0].StartOrder != 1 {
		t.Fatalf("one VM of the vApp: %+v, %v", plans, err)
	}
	for _, c := range []struct{ name, ovf, err string }{
		{"shared disk", vapp(startup, []string{diskA}, []string{diskA}),
			`x.ovf: OVF disk "da" is attached by VMs "db" and "web" of the vApp; shared disks are not imported`},
		{"bad order", vapp(strings.Replace(startup, `ovf:order="1"`, `ovf:order="first"`, 1), []string{diskA}, []string{diskB}),
			`x.ovf: OVF StartupSection entry "web": ovf:order "first" is not a whole number from 0 to 65536`},
		{"VM named twice", vapp(strings.Replace(startup, `ovf:id="db"`, `ovf:id="web"`, 1), []string{diskA}, []string{diskB}),
			`x.ovf: OVF StartupSection names VM "web" twice`},
	} {
		if _, err := inspect(c.ovf, Options{}); err == nil || err.Error() != c.err || !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v\nwant %s", c.name, err, c.err)
		}
	}
}
