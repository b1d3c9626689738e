package manager

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/storage"
)

// dirVolumes accepts the files below dir as import sources.
type dirVolumes struct {
	volumesAPI // nil: only CheckSource is called
	dir        string
}

func (v dirVolumes) CheckSource(ctx context.Context, kind storage.SourceKind, path string) (storage.HostFile, error) {
	if rel, err := filepath.Rel(v.dir, path); err != nil || !filepath.IsLocal(rel) {
		return storage.HostFile{}, fmt.Errorf("%s: outside %s: %w", path, v.dir, storage.ErrOutsidePool)
	}
	return storage.HostFile{Path: path}, nil
}

// vappOVA writes an OVA of the vApp "Shop": VMs web (2 vCPUs, an 8 MiB
// disk, a NIC on "VM Network" with its MAC) and db (1 GiB, a 4 MiB disk, a
// NIC on "Storage"); its StartupSection starts db first.
func vappOVA(t *testing.T, dir string) string {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	var files [][]byte
	for i, size := range []string{"8M", "4M"} {
		p := filepath.Join(dir, fmt.Sprintf("d%d.vmdk", i))
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", p, size).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v %s", err, out)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, b)
	}
	item := func(body string) string { return "<Item>" + body + "</Item>\n" }
	vs := func(id string, items ...string) string {
		return `<VirtualSystem ovf:id="` + id + `"><Info>vm</Info><Name>` + id + `</Name><VirtualHardwareSection><Info>hw</Info>` +
			strings.Join(items, "") + `</VirtualHardwareSection></VirtualSystem>`
	}
	ovf := fmt.Sprintf(`<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
<References><File ovf:id="f0" ovf:href="d0.vmdk" ovf:size="%d"/><File ovf:id="f1" ovf:href="d1.vmdk" ovf:size="%d"/></References>
<DiskSection><Info>disks</Info><Disk ovf:diskId="web-disk" ovf:fileRef="f0" ovf:capacity="8388608"/><Disk ovf:diskId="db-disk" ovf:fileRef="f1" ovf:capacity="4194304"/></DiskSection>
<VirtualSystemCollection ovf:id="Shop"><Info>vApp</Info><Name>Shop</Name>
<StartupSection><Info>order</Info><Item ovf:id="web" ovf:order="1"/><Item ovf:id="db" ovf:order="0"/></StartupSection>
%s
%s
</VirtualSystemCollection></Envelope>`, len(files[0]), len(files[1]),
		vs("web", item(`<rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity>`),
			item(`<rasd:HostResource>ovf:/disk/web-disk</rasd:HostResource><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType>`),
			item(`<rasd:Address>00:50:56:00:00:0a</rasd:Address><rasd:Connection>VM Network</rasd:Connection><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType>`)),
		vs("db", item(`<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity>`),
			item(`<rasd:HostResource>ovf:/disk/db-disk</rasd:HostResource><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType>`),
			item(`<rasd:Connection>Storage</rasd:Connection><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType>`)))
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range []struct {
		name string
		data []byte
	}{{"shop.ovf", []byte(ovf)}, {"d0.vmdk", files[0]}, {"d1.vmdk", files[1]}} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg, Format: tar.FormatUSTAR}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "shop.ova")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestImportVApp: a multi-VM vApp imports as one VM per VirtualSystem,
// named after the vApp, each with its own CPUs, memory, disk and NICs
// (networks mapped across the vApp), created together and in start order,
// which their operations record; what belongs to one VM is refused, and a
// name taken refuses the whole vApp (nothing created).
func TestImportVApp(t *testing.T) {
	ts := newTestServer(t)
	dir := t.TempDir()
	ts.s.cfg.Volumes = dirVolumes{dir: dir}
	ova := vappOVA(t, dir)

	for _, c := range []struct{ body, field string }{
		{`{"path":"` + ova + `","cpus":4}`, "cpus"},
		{`{"path":"` + ova + `","forwards":[{"hostPort":2222,"guestPort":22}]}`, "forwards"},
		{`{"path":"` + ova + `","networks":{"DMZ":"br1"}}`, "networks"},
	} {
		code, _, b := ts.do("POST", "/api/v1/imports", "application/json", c.body)
		if e := apiErr(t, code, b); code != 400 || e.Field != c.field {
			t.Fatalf("%s: %d %s, want 400 on %s", c.body, code, b, c.field)
		}
	}
	// shop-web taken: the vApp is refused whole, shop-db is not created.
	ts.createVM(`{"name":"shop-web","cpus":1,"memoryMiB":128}`)
	code, _, b := ts.do("POST", "/api/v1/imports", "application/json", `{"path":"`+ova+`"}`)
	if e := apiErr(t, code, b); code != 409 || !strings.Contains(e.Message, "none was created") {
		t.Fatalf("vApp over a taken name: %d %s", code, b)
	}
	if _, _, err := ts.s.inv.Spec(t.Context(), "shop-db"); err == nil {
		t.Fatal("shop-db created though the vApp was refused")
	}

	code, _, b = ts.do("POST", "/api/v1/imports", "application/json", `{"path":"`+ova+`","name":"prod","networks":{"VM Network":"br0"}}`)
	if code != 202 {
		t.Fatalf("import the vApp: %d %s", code, b)
	}
	var op v1.Operation
	if err := json.Unmarshal(b, &op); err != nil || op.Target != "prod-db" {
		t.Fatalf("answer %s: want the first VM in start order, prod-db", b)
	}
	note := `OVF vApp "shop": its 2 VMs are created together; its start order (recorded, not enforced: each starts on its own): prod-db (ovf:order 0), prod-web (ovf:order 1)`
	if len(op.Warnings) == 0 || op.Warnings[len(op.Warnings)-1] != note {
		t.Fatalf("warnings %q, want the start order last", op.Warnings)
	}
	type vmWant struct {
		cpus, mem int
		offset    bool
		nics      []v1.NIC
	}
	for name, want := range map[string]vmWant{
		"prod-web": {2, 512, true, []v1.NIC{{Mode: v1.NICBridge, Bridge: "br0", MAC: "00:50:56:00:00:0a"}}},
		"prod-db":  {1, 1024, true, []v1.NIC{{Mode: v1.NICUser}}},
	} {
		spec, _, err := ts.s.inv.Spec(t.Context(), name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if spec.CPUs != want.cpus || spec.MemoryMiB != want.mem || len(spec.Disks) != 1 || spec.Disks[0].Import == nil ||
			spec.Disks[0].Import.Path != ova || spec.Disks[0].Import.Offset == 0 {
			t.Errorf("%s: %+v", name, spec)
		}
		for i := range min(len(spec.NICs), len(want.nics)) {
			if want.nics[i].MAC == "" {
				spec.NICs[i].MAC = "" // a new one, given on create
			}
		}
		if fmt.Sprint(spec.NICs) != fmt.Sprint(want.nics) {
			t.Errorf("%s: nics %+v, want %+v", name, spec.NICs, want.nics)
		}
	}
}
