package manager

import (
	"errors"
	"reflect"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/imports"
)

// TestImportNICs maps an appliance's NICs: order and MACs kept, mapped
// networks on their bridges, unmapped ones user-mode with one warning each,
// no NIC for an OVF without one; a single disk gets one user-mode NIC.
func TestImportNICs(t *testing.T) {
	fw := []v1.Forward{{HostPort: 2222, GuestPort: 22, Protocol: "tcp"}}
	ova := imports.Plan{Kind: "ova", NICs: []imports.NIC{
		{Network: "VM Network", MAC: "00:50:56:ab:cd:01"}, {Network: "Storage"}, {Network: "VM Network", MAC: "00:50:56:ab:cd:03"}, {Network: "Backup"}}}
	cases := []struct {
		name     string
		plan     imports.Plan
		args     v1.ImportArgs
		nics     []v1.NIC
		warnings []string
		field    string
	}{
		{name: "mapped and unmapped", plan: ova,
			args: v1.ImportArgs{Networks: map[string]string{"VM Network": "br0", "Storage": "user"}, Forwards: fw},
			nics: []v1.NIC{{Mode: v1.NICBridge, Bridge: "br0", MAC: "00:50:56:ab:cd:01"}, {Mode: v1.NICUser, Forwards: fw},
				{Mode: v1.NICBridge, Bridge: "br0", MAC: "00:50:56:ab:cd:03"}, {Mode: v1.NICUser}},
			warnings: []string{`OVF network "Backup" is not mapped (--network "Backup=BRIDGE"): its NICs are user-mode NICs`}},
		{name: "nothing mapped", plan: ova,
			nics: []v1.NIC{{Mode: v1.NICUser, MAC: "00:50:56:ab:cd:01"}, {Mode: v1.NICUser}, {Mode: v1.NICUser, MAC: "00:50:56:ab:cd:03"}, {Mode: v1.NICUser}},
			warnings: []string{`OVF network "VM Network" is not mapped (--network "VM Network=BRIDGE"): its NICs are user-mode NICs`,
				`OVF network "Storage" is not mapped (--network "Storage=BRIDGE"): its NICs are user-mode NICs`,
				`OVF network "Backup" is not mapped (--network "Backup=BRIDGE"): its NICs are user-mode NICs`}},
		{name: "no NIC in the OVF", plan: imports.Plan{Kind: "ovf"}},
		{name: "NIC without a network", plan: imports.Plan{Kind: "ova", NICs: []imports.NIC{{}, {}}},
			nics: []v1.NIC{{Mode: v1.NICUser}, {Mode: v1.NICUser}}, warnings: []string{"OVF NICs without a network (rasd:Connection) are user-mode NICs"}},
		{name: "forwards without a user-mode NIC", plan: imports.Plan{Kind: "ovf"}, args: v1.ImportArgs{Forwards: fw}, field: "forwards"},
		{name: "network the OVF lacks", plan: ova, args: v1.ImportArgs{Networks: map[string]string{"DMZ": "br1"}}, field: "networks"},
		{name: "single disk", plan: imports.Plan{Kind: "vmdk"}, args: v1.ImportArgs{Forwards: fw}, nics: []v1.NIC{{Mode: v1.NICUser, Forwards: fw}}},
		{name: "networks of a single disk", plan: imports.Plan{Kind: "raw"}, args: v1.ImportArgs{Networks: map[string]string{"a": "br0"}}, field: "networks"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			nics, warnings, err := importNICs(c.plan, c.args)
			if c.field != "" {
				var e *v1.Error
				if !errors.As(err, &e) || e.Field != c.field || e.Code != v1.CodeInvalidArgument {
					t.Fatalf("err %v, want invalid %s", err, c.field)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(nics, c.nics) || !reflect.DeepEqual(warnings, c.warnings) {
				t.Fatalf("nics %+v\nwarnings %q\nwant %+v\n%q", nics, warnings, c.nics, c.warnings)
			}
		})
	}
}
