package vm

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

func base() v1.VMSpec {
	s := v1.VMSpec{Name: "web1", MemoryMiB: 256, Disks: []v1.Disk{{Image: "/img/a.qcow2"}},
		NICs: []v1.NIC{{Forwards: []v1.Forward{{HostPort: 8080, GuestPort: 80}}}}}
	Defaults(&s, "tcg")
	return s
}

func TestDefaults(t *testing.T) {
	s := base()
	if s.CPUs != 1 || s.Machine != "q35" || s.CPUModel != "max" || s.RestartPolicy != "on-failure" || s.Power != "stopped" {
		t.Fatalf("defaults: %+v", s)
	}
	if s.Disks[0].Name != "disk0" || s.Disks[0].Bus != "virtio" || s.NICs[0].Mode != "user" || s.NICs[0].Forwards[0].Protocol != "tcp" {
		t.Fatalf("device defaults: %+v %+v", s.Disks, s.NICs)
	}
	if !strings.HasPrefix(s.NICs[0].MAC, "52:54:00:") {
		t.Fatalf("mac %q", s.NICs[0].MAC)
	}
	k := v1.VMSpec{}
	Defaults(&k, "kvm")
	if k.CPUModel != "host" {
		t.Fatalf("kvm cpu model %q", k.CPUModel)
	}
	if err := Validate(base(), 1024); err != nil {
		t.Fatal(err)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	cases := []struct {
		field string
		mut   func(*v1.VMSpec)
	}{
		{"name", func(s *v1.VMSpec) { s.Name = "Web_1" }},
		{"name", func(s *v1.VMSpec) { s.Name = "-web" }},
		{"name", func(s *v1.VMSpec) { s.Name = strings.Repeat("a", 64) }},
		{"name", func(s *v1.VMSpec) { s.Name = "a/../b" }},
		{"cpus", func(s *v1.VMSpec) { s.CPUs = 0 }},
		{"cpus", func(s *v1.VMSpec) { s.CPUs = 256 }},
		{"memoryMiB", func(s *v1.VMSpec) { s.MemoryMiB = 31 }},
		{"memoryMiB", func(s *v1.VMSpec) { s.MemoryMiB = 2048 }},
		{"machine", func(s *v1.VMSpec) { s.Machine = "isapc" }},
		{"cpuModel", func(s *v1.VMSpec) { s.CPUModel = "486; rm -rf /" }},
		{"restartPolicy", func(s *v1.VMSpec) { s.RestartPolicy = "maybe" }},
		{"power", func(s *v1.VMSpec) { s.Power = "off" }},
		{"disks[0].name", func(s *v1.VMSpec) { s.Disks[0].Name = "../x" }},
		{"disks[1].name", func(s *v1.VMSpec) { s.Disks = append(s.Disks, v1.Disk{Name: "disk0", SizeMiB: 1, Bus: "virtio"}) }},
		{"disks[0].bus", func(s *v1.VMSpec) { s.Disks[0].Bus = "floppy" }},
		{"disks[0].sizeMiB", func(s *v1.VMSpec) { s.Disks[0].Image = "" }},
		{"disks[0].sizeMiB", func(s *v1.VMSpec) { s.Disks[0].SizeMiB = -1 }},
		{"disks[0].image", func(s *v1.VMSpec) { s.Disks[0].Image = "rel/path.qcow2" }},
		{"nics[0].mac", func(s *v1.VMSpec) { s.NICs[0].MAC = "52:54:00:zz:00:00" }},
		{"nics[0].mac", func(s *v1.VMSpec) { s.NICs[0].MAC = "01:00:5e:00:00:01" }}, // IPv4 multicast
		{"nics[0].mac", func(s *v1.VMSpec) { s.NICs[0].MAC = "ff:ff:ff:ff:ff:ff" }},
		{"nics[0].mac", func(s *v1.VMSpec) { s.NICs[0].MAC = "53:54:00:12:34:56" }}, // group bit set
		{"nics[0].mac", func(s *v1.VMSpec) { s.NICs[0].MAC = "00:00:00:00:00:00" }},
		{"cpus", func(s *v1.VMSpec) { s.CPUs = -1 }},
		{"nics[0].mode", func(s *v1.VMSpec) { s.NICs[0].Mode = "wifi" }},
		{"nics[0].bridge", func(s *v1.VMSpec) { s.NICs[0].Bridge = "br0" }},
		{"nics[0].forwards", func(s *v1.VMSpec) { s.NICs[0].Mode, s.NICs[0].Bridge = "bridge", "br0" }},
		{"nics[0].bridge", func(s *v1.VMSpec) { s.NICs[0].Mode, s.NICs[0].Bridge, s.NICs[0].Forwards = "bridge", "br0;x", nil }},
		{"nics[0].forwards[0].hostPort", func(s *v1.VMSpec) { s.NICs[0].Forwards[0].HostPort = 0 }},
		{"nics[0].forwards[0].guestPort", func(s *v1.VMSpec) { s.NICs[0].Forwards[0].GuestPort = 65536 }},
		{"nics[0].forwards[0].protocol", func(s *v1.VMSpec) { s.NICs[0].Forwards[0].Protocol = "sctp" }},
		{"nics[0].forwards[1].hostPort", func(s *v1.VMSpec) {
			s.NICs[0].Forwards = append(s.NICs[0].Forwards, v1.Forward{HostPort: 8080, GuestPort: 81, Protocol: "tcp"})
		}},
		{"boot[0]", func(s *v1.VMSpec) { s.Boot = []string{"usb"} }},
		{"ioErrorPolicy", func(s *v1.VMSpec) { s.IOErrorPolicy = "pause" }},
		{"disks[0].ioErrorPolicy", func(s *v1.VMSpec) { s.Disks[0].IOErrorPolicy = "enospc" }},
		{"disks[1].ioErrorPolicy", func(s *v1.VMSpec) {
			s.Disks = append(s.Disks, v1.Disk{Name: "cd0", Media: "cdrom", Bus: "sata", IOErrorPolicy: "stop"})
		}},
		{"placement", func(s *v1.VMSpec) { s.Placement = "best" }},
		{"placement", func(s *v1.VMSpec) { s.Placement, s.PreferredHosts = "auto", []string{"h1"} }},
		{"preferredHosts", func(s *v1.VMSpec) { s.Placement = "manual" }},
		{"preferredHosts", func(s *v1.VMSpec) { s.Placement = "preferred" }},
		{"preferredHosts", func(s *v1.VMSpec) {
			s.Placement = "preferred"
			for i := range MaxPreferredHosts + 1 {
				s.PreferredHosts = append(s.PreferredHosts, fmt.Sprintf("h%d", i))
			}
		}},
		{"preferredHosts[1]", func(s *v1.VMSpec) { s.Placement, s.PreferredHosts = "preferred", []string{"h1", "H2"} }},
		{"preferredHosts[0]", func(s *v1.VMSpec) { s.Placement, s.PreferredHosts = "manual", []string{""} }},
		{"preferredHosts[2]", func(s *v1.VMSpec) { s.Placement, s.PreferredHosts = "preferred", []string{"h1", "h2", "h1"} }},
		{"antiAffinityGroup", func(s *v1.VMSpec) { s.AntiAffinityGroup = "db/../x" }},
		{"antiAffinityGroup", func(s *v1.VMSpec) { s.AntiAffinityGroup = strings.Repeat("g", 64) }},
	}
	for _, c := range cases {
		s := base()
		c.mut(&s)
		err := Validate(s, 1024)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want a FieldError on %s", c.field, err, c.field)
		}
	}
}

func TestPlacementFields(t *testing.T) {
	s := base()
	if s.Placement != v1.PlacementAuto {
		t.Fatalf("default placement %q, want auto", s.Placement)
	}
	p := v1.VMSpec{Name: "web", MemoryMiB: 256, PreferredHosts: []string{"h2", "h1"}}
	Defaults(&p, "tcg")
	if p.Placement != v1.PlacementPreferred {
		t.Fatalf("default placement with preferred hosts %q, want preferred", p.Placement)
	}
	ok := []func(*v1.VMSpec){
		func(s *v1.VMSpec) { s.Placement, s.PreferredHosts = "preferred", []string{"h2", "h1"} },
		func(s *v1.VMSpec) { s.Placement, s.PreferredHosts = "manual", []string{"h2"} },
		func(s *v1.VMSpec) { s.Placement, s.PreferredHosts = "manual", []string{"h2", "h3"} },
		func(s *v1.VMSpec) { s.Placement, s.PreferredHosts = "", []string{"h2"} }, // a record from before the field: preferred
		func(s *v1.VMSpec) { s.Placement = "" },
		func(s *v1.VMSpec) { s.AntiAffinityGroup = "db" },
		func(s *v1.VMSpec) {
			s.Placement = "preferred"
			for i := range MaxPreferredHosts {
				s.PreferredHosts = append(s.PreferredHosts, fmt.Sprintf("h%d", i))
			}
		},
	}
	for i, mut := range ok {
		s := base()
		mut(&s)
		if err := Validate(s, 1024); err != nil {
			t.Errorf("case %d (%+v %v %q): %v", i, s.Placement, s.PreferredHosts, s.AntiAffinityGroup, err)
		}
	}
}

func TestHASettings(t *testing.T) {
	s := base()
	if s.HA != nil {
		t.Fatalf("ha without asking: %+v", s.HA)
	}
	h := v1.VMSpec{Name: "db", MemoryMiB: 256, HA: &v1.HA{Enabled: true, Priority: 5}}
	Defaults(&h, "tcg")
	if *h.HA != (v1.HA{Enabled: true, Priority: 5, MaxRestarts: DefaultHAMaxRestarts, RestartWindow: "1h"}) {
		t.Fatalf("ha defaults: %+v", *h.HA)
	}
	if err := Validate(h, 1024); err != nil {
		t.Fatal(err)
	}
	if d, err := HAWindow(h.HA); err != nil || d != time.Hour {
		t.Fatalf("window %v %v", d, err)
	}
	for _, c := range []struct {
		field string
		ha    v1.HA
	}{
		{"ha.priority", v1.HA{Priority: 1001}},
		{"ha.priority", v1.HA{Priority: -1001}},
		{"ha.restartOrder", v1.HA{RestartOrder: -1}},
		{"ha.restartOrder", v1.HA{RestartOrder: 1001}},
		{"ha.maxRestarts", v1.HA{MaxRestarts: -1}},
		{"ha.maxRestarts", v1.HA{MaxRestarts: 101}},
		{"ha.restartWindow", v1.HA{RestartWindow: "an hour"}},
		{"ha.restartWindow", v1.HA{RestartWindow: "1"}},
		{"ha.restartWindow", v1.HA{RestartWindow: "59s"}},
		{"ha.restartWindow", v1.HA{RestartWindow: "169h"}},
		{"ha.restartWindow", v1.HA{RestartWindow: "-1h"}},
	} {
		for _, enabled := range []bool{true, false} { // kept settings are checked too
			s := base()
			c.ha.Enabled = enabled
			s.HA = &c.ha
			HADefaults(s.HA)
			err := Validate(s, 1024)
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, ErrInvalid) {
				t.Errorf("%+v: got %v, want a FieldError on %s", c.ha, err, c.field)
			}
		}
	}
	for _, ok := range []v1.HA{
		{Enabled: true, Priority: -1000, RestartOrder: 1000, MaxRestarts: 100, RestartWindow: "168h"},
		{Enabled: true, Priority: 1000, MaxRestarts: 1, RestartWindow: "1m"},
		{Enabled: false, MaxRestarts: 3, RestartWindow: "90m"},
	} {
		s := base()
		s.HA = &ok
		if err := Validate(s, 1024); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}

func TestIOErrorPolicy(t *testing.T) {
	s := base()
	if s.IOErrorPolicy != v1.IOErrorStop {
		t.Fatalf("default policy %q", s.IOErrorPolicy)
	}
	s.Disks = append(s.Disks, v1.Disk{Name: "data", SizeMiB: 64, Bus: "virtio", Media: "disk", IOErrorPolicy: v1.IOErrorReport})
	if err := Validate(s, 0); err != nil {
		t.Fatal(err)
	}
	if got := IOErrorPolicy(s, s.Disks[0]); got != v1.IOErrorStop {
		t.Fatalf("disk0 takes the vm's policy: %q", got)
	}
	if got := IOErrorPolicy(s, s.Disks[1]); got != v1.IOErrorReport {
		t.Fatalf("data has its own policy: %q", got)
	}
	s.IOErrorPolicy = "" // a record from before the setting
	if err := Validate(s, 0); err != nil || IOErrorPolicy(s, s.Disks[0]) != v1.IOErrorStop {
		t.Fatalf("old record: %v %q", err, IOErrorPolicy(s, s.Disks[0]))
	}
}

func TestValidateResources(t *testing.T) {
	base := v1.VMSpec{Name: "a", MemoryMiB: 256}
	Defaults(&base, "tcg")
	for _, c := range []struct {
		r     v1.Resources
		field string
	}{
		{v1.Resources{CPUShares: 1}, "resources.cpuShares"},
		{v1.Resources{CPULimit: -0.5}, "resources.cpuLimit"},
		{v1.Resources{CPULimit: 0.001}, "resources.cpuLimit"},
		{v1.Resources{MemoryLimitMiB: 128}, "resources.memoryLimitMiB"},
		{v1.Resources{CPUShares: 512, CPULimit: 0.5, MemoryLimitMiB: 512}, ""},
		{v1.Resources{CPUPinning: "0-1,3"}, ""},
		{v1.Resources{CPUPinning: "1-0"}, "resources.cpuPinning"},
		{v1.Resources{CPUPinning: "a"}, "resources.cpuPinning"},
		{v1.Resources{CPUPinning: "1;2"}, "resources.cpuPinning"}, // 1 vCPU, 2 lists
		{v1.Resources{CPUPinning: "5000"}, "resources.cpuPinning"},
	} {
		s := base
		r := c.r
		s.Resources = &r
		wantField(t, c.r, Validate(s, 0), c.field)
	}
	if got := MemoryLimitMiB(base, "kvm"); got != 256+256+32 {
		t.Errorf("default limit %d", got)
	}
}

func TestValidateDiskLimits(t *testing.T) {
	for _, c := range []struct {
		l     v1.DiskLimits
		field string
	}{
		{v1.DiskLimits{IOPS: -1}, "disks[0].limits.iops"},
		{v1.DiskLimits{BPS: 10, BPSRead: 5}, "disks[0].limits.bps"},
		{v1.DiskLimits{IOPS: 100, IOPSMax: 50}, "disks[0].limits.iopsMax"},
		{v1.DiskLimits{BPSMax: 50}, "disks[0].limits.bpsMax"},
		{v1.DiskLimits{Group: "Bad Name"}, "disks[0].limits.group"},
		{v1.DiskLimits{IOPS: 100, IOPSMax: 200, BPSRead: 1 << 20, Group: "g1"}, ""},
	} {
		l := c.l
		err := validateDiskLimits("disks[0].limits", v1.Disk{Name: "d", Limits: &l})
		var fe *FieldError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%+v: %v", c.l, err)
		case c.field != "" && (!errors.As(err, &fe) || fe.Field != c.field):
			t.Errorf("%+v: got %v, want an error on %s", c.l, err, c.field)
		}
	}
}

func TestValidateNICLimits(t *testing.T) {
	for _, c := range []struct {
		mode  string
		l     v1.NICLimits
		field string
	}{
		{v1.NICBridge, v1.NICLimits{Mbps: 10}, ""},
		{v1.NICBridge, v1.NICLimits{RxMbps: 5, TxMbps: 0.5}, ""},
		{v1.NICBridge, v1.NICLimits{Mbps: -1}, "nics[0].limits.mbps"},
		{v1.NICBridge, v1.NICLimits{TxMbps: 0.01}, "nics[0].limits.txMbps"},
		{v1.NICBridge, v1.NICLimits{RxMbps: 1e6}, "nics[0].limits.rxMbps"},
		{v1.NICUser, v1.NICLimits{Mbps: 10}, "nics[0].limits"},
	} {
		s := v1.VMSpec{Name: "a", MemoryMiB: 256, NICs: []v1.NIC{{Mode: c.mode}}}
		if c.mode == v1.NICBridge {
			s.NICs[0].Bridge = "br0"
		}
		l := c.l
		s.NICs[0].Limits = &l
		Defaults(&s, "tcg")
		wantField(t, c.l, Validate(s, 0), c.field)
	}
	l := &v1.NICLimits{Mbps: 10, TxMbps: 2}
	if l.Rx() != 10 || l.Tx() != 2 {
		t.Errorf("rx %g tx %g, want 10 and 2", l.Rx(), l.Tx())
	}
}

func TestCPUPinning(t *testing.T) {
	s := v1.VMSpec{Name: "a", CPUs: 3, Resources: &v1.Resources{CPUPinning: "2;0-1,1;3"}}
	got, err := CPUPinning(s)
	if err != nil || fmt.Sprint(got) != "[[2] [0 1] [3]]" {
		t.Errorf("per vCPU: %v %v", got, err)
	}
	s.Resources.CPUPinning = "1,0"
	if got, err = CPUPinning(s); err != nil || fmt.Sprint(got) != "[[0 1] [0 1] [0 1]]" {
		t.Errorf("one list for all: %v %v", got, err)
	}
}

// wantField checks that err is nil for field "", else a FieldError on
// field; what is the case, for the message.
func wantField(t *testing.T, what any, err error, field string) {
	t.Helper()
	var fe *FieldError
	switch {
	case field == "" && err != nil:
		t.Errorf("%+v: %v", what, err)
	case field != "" && (!errors.As(err, &fe) || fe.Field != field):
		t.Errorf("%+v: got %v, want an error on %s", what, err, field)
	}
}
