// Package config turns a VM spec into a QEMU command line. It is pure: the
// same input always gives the same argv, which golden files pin down.
package config

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	v1 "hangar/api/v1"
	"hangar/internal/vm"
)

// Files in a VM's run directory (mode 0700, never on TCP).
const (
	QMPSocket     = "qmp.sock"
	ConsoleSocket = "console.sock"
	SerialLog     = "serial.log"
	PIDFile       = "qemu.pid"
	// GuestAgentSocket is the host end of the qemu-guest-agent channel.
	GuestAgentSocket = "qga.sock"
)

// DiskFile is the volume behind one spec disk.
type DiskFile struct {
	Path   string
	Format string // qcow2 or raw
	// FD, when not 0, is a read-only descriptor QEMU inherits for a
	// cdrom's medium (a host file outside every pool, which the VM's uid
	// may not reach): it goes into fd set FD (-add-fd) and the medium is
	// opened as /dev/fdset/FD. Path is then only for the record.
	FD int
}

// FDSetPath is the name under which QEMU opens the descriptors of fd set n.
func FDSetPath(n int) string { return fmt.Sprintf("/dev/fdset/%d", n) }

// Params is everything argv depends on.
type Params struct {
	Spec   v1.VMSpec
	Accel  string     // "kvm" or "tcg"
	RunDir string     // sockets and pidfile (0700)
	LogDir string     // serial log (kept across restarts of the host)
	Disks  []DiskFile // one per Spec.Disks, same order
	Taps   []string   // one per Spec.NICs; "" for user-mode NICs
	// Incoming, when set, starts QEMU waiting for a migration stream
	// ("defer" lets the caller set capabilities first); the guest stays
	// paused after it until "cont".
	Incoming string
}

// HugepagesPath is where hugetlbfs is mounted (systemd's dev-hugepages.mount):
// a VM with resources.hugepages has its RAM there.
const HugepagesPath = "/dev/hugepages"

// NodeName is the block node name of a disk's format layer; snapshots,
// mirrors and backups address disks by it.
func NodeName(disk string) string { return "drive-" + disk }

// TCGRAMPadKiB is what a guest under TCG gets on top of its memory: QEMU
// before 9.0 (Debian 12 ships 7.2) loses dirty pages when it migrates a TCG
// guest whose RAM block is a whole number of 64-page words: its fast path
// clears the migration bitmap without re-arming the TLB's dirty tracking
// (fixed upstream by 03bfc2188f, "physmem: Fix migration dirty bitmap
// coherency with TCG memory access"), and the migrated guest's kernel
// crashes on stale pages. Two pages more send QEMU down its per-page path,
// which re-arms the TLB. Every TCG launch pads alike, so the two ends of a
// migration (and a saved state and its restore) agree on the RAM size.
const TCGRAMPadKiB = 8

// memory is -m's value: MiB, padded under TCG (TCGRAMPadKiB).
func memory(mib int, accel string) string {
	if accel == "kvm" {
		return fmt.Sprintf("%d", mib)
	}
	return fmt.Sprintf("%dk", mib*1024+TCGRAMPadKiB)
}

// Argv returns QEMU's arguments (without the binary). The guest starts
// paused (-S); the caller resumes it with "cont" once it is set up.
func Argv(p Params) ([]string, error) {
	s := p.Spec
	if len(p.Disks) != len(s.Disks) {
		return nil, fmt.Errorf("argv: %d disk files for %d disks", len(p.Disks), len(s.Disks))
	}
	if len(p.Taps) != len(s.NICs) {
		return nil, fmt.Errorf("argv: %d taps for %d nics", len(p.Taps), len(s.NICs))
	}
	accel := p.Accel
	if accel != "kvm" {
		accel = "tcg"
	}
	run := func(f string) string { return filepath.Join(p.RunDir, f) }
	machine := s.Machine + ",accel=" + accel
	var ram []string
	if s.Resources != nil && s.Resources.Hugepages {
		// vm.HugepagesProblem refuses this under TCG: its padded RAM is no
		// whole number of huge pages.
		if accel != "kvm" {
			return nil, fmt.Errorf("argv: huge pages need kvm (the ram of a %s guest is padded)", accel)
		}
		machine += ",memory-backend=ram0"
		ram = []string{"-object", mustJSON(map[string]any{"qom-type": "memory-backend-file", "id": "ram0",
			"mem-path": HugepagesPath, "size": int64(s.MemoryMiB) << 20, "share": false})}
	}
	a := []string{
		"-name", "guest=" + s.Name + ",debug-threads=on",
		"-no-user-config", "-nodefaults",
		"-machine", machine,
		"-cpu", s.CPUModel,
		"-smp", fmt.Sprintf("%d", s.CPUs),
		"-m", memory(s.MemoryMiB, accel),
	}
	a = append(a, ram...)
	if s.UUID != "" {
		a = append(a, "-uuid", s.UUID)
	}
	a = append(a,
		"-smbios", "type=1,manufacturer=Hangar,product=Hangar VM,serial="+s.Name,
		"-display", "none",
		"-chardev", "socket,id=monitor,path="+run(QMPSocket)+",server=on,wait=off",
		"-mon", "chardev=monitor,mode=control",
		"-pidfile", run(PIDFile),
		"-chardev", "socket,id=serial0,path="+run(ConsoleSocket)+",server=on,wait=off,logfile="+filepath.Join(p.LogDir, SerialLog)+",logappend=on",
		"-serial", "chardev:serial0",
		"-rtc", "base=utc",
		"-boot", "strict=on",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-msg", "timestamp=on",
		"-object", `{"qom-type":"rng-random","id":"rng0","filename":"/dev/urandom"}`,
		"-device", `{"driver":"virtio-rng-pci","rng":"rng0","id":"rng0-dev"}`,
		"-chardev", "socket,id=qga0,path="+run(GuestAgentSocket)+",server=on,wait=off",
		"-device", `{"driver":"virtio-serial-pci","id":"vser0"}`,
		"-device", `{"driver":"virtserialport","bus":"vser0.0","chardev":"qga0","name":"org.qemu.guest_agent.0"}`,
	)
	if s.Resources != nil && s.Resources.BalloonMiB > 0 {
		// The target is set over QMP (balloon) before the guest runs.
		a = append(a, "-device", `{"driver":"virtio-balloon-pci","id":"balloon0"}`)
	}
	boot := bootOrder(s.Boot)
	next := 1
	needSCSI := false
	for _, d := range s.Disks {
		if d.Bus == "scsi" {
			needSCSI = true
		}
	}
	if needSCSI {
		a = append(a, "-device", `{"driver":"virtio-scsi-pci","id":"scsi0"}`)
	}
	sata := 0
	for i, d := range s.Disks {
		f := p.Disks[i]
		dev := map[string]any{"id": "dev-" + d.Name}
		if boot[bootClass(d)] > 0 {
			dev["bootindex"] = boot[bootClass(d)]*100 + next
			next++
		}
		if d.Media == "cdrom" {
			dev["driver"] = "ide-cd"
			if s.Machine == "q35" {
				dev["bus"] = fmt.Sprintf("ide.%d", sata)
			}
			sata++
			if f.FD != 0 {
				if f.FD < 3 {
					return nil, fmt.Errorf("argv: disk %s: fd %d is not an inherited descriptor", d.Name, f.FD)
				}
				a = append(a, "-add-fd", fmt.Sprintf("fd=%d,set=%d", f.FD, f.FD))
				f.Path = FDSetPath(f.FD)
			}
			if f.Path != "" {
				a = append(a,
					"-blockdev", mustJSON(map[string]any{"driver": "file", "filename": f.Path, "node-name": "file-" + d.Name, "read-only": true}),
					"-blockdev", mustJSON(map[string]any{"driver": "raw", "file": "file-" + d.Name, "node-name": NodeName(d.Name), "read-only": true}))
				dev["drive"] = NodeName(d.Name)
			}
			a = append(a, "-device", mustJSON(dev))
			continue
		}
		if f.Format != "qcow2" && f.Format != "raw" {
			return nil, fmt.Errorf("argv: disk %s: unsupported format %q", d.Name, f.Format)
		}
		file := map[string]any{"driver": "file", "filename": f.Path, "node-name": "file-" + d.Name,
			"aio": "threads", "cache": map[string]any{"direct": false, "no-flush": false}, "discard": "unmap"}
		fmtNode := map[string]any{"driver": f.Format, "file": "file-" + d.Name, "node-name": NodeName(d.Name),
			"discard": "unmap"}
		dev["drive"] = NodeName(d.Name)
		// What a failed request does (the device's werror/rerror; with
		// -blockdev QEMU's "auto" would report reads and stop only on
		// ENOSPC writes).
		policy := vm.IOErrorPolicy(s, d)
		dev["werror"], dev["rerror"] = policy, policy
		if d.Shareable {
			// Several VMs write this raw volume (guest clusters): QEMU's image
			// locks stay on and admit only writers that also share.
			dev["share-rw"] = true
		}
		switch d.Bus {
		case "virtio":
			dev["driver"] = "virtio-blk-pci"
		case "sata":
			dev["driver"] = "ide-hd"
			if s.Machine == "q35" {
				dev["bus"] = fmt.Sprintf("ide.%d", sata)
			}
			sata++
		case "scsi":
			dev["driver"] = "scsi-hd"
			dev["bus"] = "scsi0.0"
		default:
			return nil, fmt.Errorf("argv: disk %s: unsupported bus %q", d.Name, d.Bus)
		}
		a = append(a, "-blockdev", mustJSON(file), "-blockdev", mustJSON(fmtNode), "-device", mustJSON(dev))
	}
	for i, n := range s.NICs {
		id := fmt.Sprintf("net%d", i)
		switch n.Mode {
		case v1.NICUser:
			nd := "user,id=" + id
			for _, fw := range n.Forwards {
				nd += fmt.Sprintf(",hostfwd=%s:127.0.0.1:%d-:%d", fw.Protocol, fw.HostPort, fw.GuestPort)
			}
			a = append(a, "-netdev", nd)
		case v1.NICBridge:
			if p.Taps[i] == "" {
				return nil, fmt.Errorf("argv: nic %d: no tap", i)
			}
			a = append(a, "-netdev", "tap,id="+id+",ifname="+p.Taps[i]+",script=no,downscript=no,vhost=off")
		default:
			return nil, fmt.Errorf("argv: nic %d: unsupported mode %q", i, n.Mode)
		}
		dev := map[string]any{"driver": "virtio-net-pci", "netdev": id, "mac": n.MAC, "id": id + "-dev"}
		if boot["network"] > 0 {
			dev["bootindex"] = boot["network"]*100 + i
		} else {
			dev["romfile"] = ""
		}
		a = append(a, "-device", mustJSON(dev))
	}
	if p.Incoming != "" {
		a = append(a, "-incoming", p.Incoming)
	}
	a = append(a, "-S") // also after an incoming migration: the caller resumes

	return a, nil
}

func bootClass(d v1.Disk) string {
	if d.Media == "cdrom" {
		return "cdrom"
	}
	return "disk"
}

// bootOrder ranks each device class: 1 first, 0 not bootable.
func bootOrder(order []string) map[string]int {
	m := map[string]int{}
	for i, b := range order {
		if m[b] == 0 {
			m[b] = i + 1
		}
	}
	return m
}

func mustJSON(v any) string {
	b, err := json.Marshal(v) // maps of strings, numbers and bools: cannot fail
	if err != nil {
		panic(err)
	}
	return string(b)
}

// Quote renders argv as a shell-like line for logs and docs.
func Quote(argv []string) string {
	out := make([]string, len(argv))
	for i, s := range argv {
		if strings.ContainsAny(s, " \"'{}$") {
			s = "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
		out[i] = s
	}
	return strings.Join(out, " ")
}
