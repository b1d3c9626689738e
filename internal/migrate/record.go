// Package migrate is a live migration as one recorded state machine: the
// pool master writes the phase (/hangar/migrations/<vm>), the source and
// the target agent each write only their own part (.../<vm>/source,
// .../<vm>/target), and every decision is a pure function of those records
// (Next for the master, SourceStep and TargetStep for the agents), so a
// master or agent that restarts resumes from etcd with the same decision.
//
// The one moment that decides where the VM runs is the switch-over: one
// fenced transaction moves the owner record to the target (epoch + 1) and
// the phase to switched-over, and only after it may the target resume the
// guest. Before it, any failure aborts and the source, which never stopped
// running (or is resumed from its post-migration pause), keeps the VM.
package migrate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/storage"
	"hangar/internal/vm"
)

// Phase is where a migration is, as the master records it.
type Phase string

// The phases, in order; Aborting and RolledBack are the failure path.
const (
	Pending        Phase = "pending"         // recorded with its Operation; nothing checked yet
	Checked        Phase = "checked"         // no blocker; the target may prepare
	TargetPrepared Phase = "target-prepared" // target QEMU listening (-incoming), NBD exports up; the source may start
	Mirroring      Phase = "mirroring"       // source copies local disks to the exports
	MirrorReady    Phase = "mirror-ready"    // every mirror READY (writes go to both)
	Migrating      Phase = "migrating"       // RAM and device state moving
	SwitchedOver   Phase = "switched-over"   // owner moved to the target (epoch+1), in the same txn as this phase
	Cleaning       Phase = "cleaning"        // target runs the guest; the source removes its QEMU and local files
	Done           Phase = "done"            // nothing left anywhere; records are deleted
	Aborting       Phase = "aborting"        // before switch-over: source resumes/keeps running, target is removed
	RolledBack     Phase = "rolled-back"     // abort finished; records are deleted
)

var phaseOrder = []Phase{Pending, Checked, TargetPrepared, Mirroring, MirrorReady, Migrating, SwitchedOver, Cleaning, Done}

// rank orders the forward phases; the failure phases rank after Migrating
// and before SwitchedOver would not make sense, so they get -1.
func rank(p Phase) int { return slices.Index(phaseOrder, p) }

// BeforeSwitchOver says whether an abort is still possible (the source
// owns the VM).
func (p Phase) BeforeSwitchOver() bool { r := rank(p); return r >= 0 && r < rank(SwitchedOver) }

func (p Phase) valid() bool { return rank(p) >= 0 || p == Aborting || p == RolledBack }

// Record is the master's record of one migration (/hangar/migrations/<vm>).
type Record struct {
	VM     string `json:"vm"`
	OpID   string `json:"opID"`
	Source string `json:"source"`
	Target string `json:"target"`
	Phase  Phase  `json:"phase"`
	// Epoch is the owner record's epoch when the migration started (the
	// source's): the switch-over is conditioned on it and writes Epoch+1.
	Epoch int64          `json:"epoch"`
	Args  v1.MigrateArgs `json:"args"`
	// Disks are the VM's disks on local pools of the source, as the
	// source reported them (DisksPart) and the check accepted them: the
	// target makes an empty volume of each, the source mirrors into it.
	Disks []Disk `json:"disks,omitempty"`
	// Error says why the migration is aborting.
	Error   string    `json:"error,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// Source part states, written by the source agent.
const (
	SrcStarting    = "starting"     // claimed (conditioned on the target-prepared record)
	SrcMirroring   = "mirroring"    // local disks copying
	SrcMirrorReady = "mirror-ready" // all mirrors READY
	SrcMigrating   = "migrating"    // RAM moving
	SrcPaused      = "paused"       // migration completed: source paused, disks in sync, NBD nodes gone
	SrcFailed      = "failed"       // the migration failed and was rolled back: the source runs
	SrcRolledBack  = "rolled-back"  // aborted by the master: the source runs
	SrcCleaned     = "cleaned"      // after switch-over: source QEMU gone, local disk files removed
)

// SourcePart is the source agent's part (/hangar/migrations/<vm>/source).
type SourcePart struct {
	State    string      `json:"state"`
	Progress v1.Progress `json:"progress"`
	// DowntimeMs and TotalMs are QEMU's figures of a completed migration.
	DowntimeMs int64     `json:"downtimeMs,omitempty"`
	TotalMs    int64     `json:"totalMs,omitempty"`
	Error      string    `json:"error,omitempty"`
	Updated    time.Time `json:"updated"`
}

// Target part states, written by the target agent.
const (
	TgtPreparing = "preparing" // claimed (conditioned on the checked record): volumes and QEMU being made
	TgtListening = "listening" // QEMU -incoming on IP:Port, NBD exports on IP:NBDPort
	TgtRunning   = "running"   // after switch-over: guest resumed on the target
	TgtFailed    = "failed"    // preparing failed; its QEMU and volumes are already removed
	TgtCleaned   = "cleaned"   // aborted: QEMU killed, partial volumes removed
)

// TargetDisk is one volume the target made for a local disk.
type TargetDisk struct {
	Name   string `json:"name"`   // spec disk name
	Volume string `json:"volume"` // "pool/name" on the target
	Export string `json:"export"` // NBD export name (its node name)
}

// TargetPart is the target agent's part (/hangar/migrations/<vm>/target).
type TargetPart struct {
	State   string       `json:"state"`
	IP      string       `json:"ip,omitempty"`
	Port    int          `json:"port,omitempty"`
	NBDPort int          `json:"nbdPort,omitempty"`
	Disks   []TargetDisk `json:"disks,omitempty"`
	// Multifd: the target's QEMU took multifd (the source uses it only then).
	Multifd bool      `json:"multifd,omitempty"`
	Error   string    `json:"error,omitempty"`
	Updated time.Time `json:"updated"`
}

// ErrInvalidRecord is wrapped by the errors of a record that fails its
// checks: state is input, a bad record is never acted on.
var ErrInvalidRecord = errors.New("invalid migration record")

func invalid(what, format string, a ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidRecord, what, fmt.Sprintf(format, a...))
}

// decodeStrict decodes one JSON value into v, refusing unknown fields and
// trailing data.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// DecodeRecord decodes and validates the master's record of vm.
func DecodeRecord(vmName string, b []byte) (Record, error) {
	var r Record
	if err := decodeStrict(b, &r); err != nil {
		return r, invalid("migration of "+vmName, "%v", err)
	}
	return r, r.Validate(vmName)
}

// Validate checks a record read for vm.
func (r Record) Validate(vmName string) error {
	what := "migration of " + vmName
	if r.VM != vmName {
		return invalid(what, "record names vm %q", r.VM)
	}
	if err := vm.ValidateName("vm", r.VM); err != nil {
		return invalid(what, "%v", err)
	}
	if err := vm.ValidateOpID("opID", r.OpID); err != nil {
		return invalid(what, "%v", err)
	}
	for f, h := range map[string]string{"source": r.Source, "target": r.Target} {
		if err := vm.ValidateName(f, h); err != nil {
			return invalid(what, "%v", err)
		}
	}
	if r.Source == r.Target {
		return invalid(what, "source and target are both %q", r.Source)
	}
	if !r.Phase.valid() {
		return invalid(what, "unknown phase %q", r.Phase)
	}
	if r.Epoch < 0 {
		return invalid(what, "epoch %d", r.Epoch)
	}
	if err := ValidateArgs(r.Args); err != nil {
		return invalid(what, "%v", err)
	}
	if len(r.Error) > 4096 {
		return invalid(what, "error of %d bytes", len(r.Error))
	}
	if err := ValidateDisks(r.Disks); err != nil {
		return invalid(what, "%v", err)
	}
	for _, d := range r.Disks {
		if h, ok := storage.LocalPoolHost(d.Pool); ok && h != r.Source {
			return invalid(what, "disk %s is on host %s's own pool, the source is %s", d.Name, h, r.Source)
		}
	}
	return nil
}

// Disk is one disk of the VM on a local pool of the source host. The
// target makes its copy under the same pool name and volume name in its
// own pool of that name (a flat volume: the mirror copies the whole
// chain), of the same format and virtual size.
type Disk struct {
	Name      string `json:"name"`      // the spec's disk name
	Pool      string `json:"pool"`      // the pool holding the volume on the source
	Volume    string `json:"volume"`    // the volume's name in that pool, e.g. vms/web/disk0.qcow2
	Format    string `json:"format"`    // qcow2 or raw
	SizeBytes int64  `json:"sizeBytes"` // virtual size
}

// Ref is the disk's volume as "pool/volume".
func (d Disk) Ref() string { return d.Pool + "/" + d.Volume }

// OnTarget is d as the target of rec makes it: the same volume name, in the
// target's own pool when d is on the source's own pool, else in the
// target's pool of d's pool's name (a recorded dir pool every host has).
func (d Disk) OnTarget(rec Record) Disk {
	d.Pool = MovedPool(d.Pool, rec.Source, rec.Target)
	return d
}

// MovedPool is the pool a volume of pool on host from is in once it moved
// to host to: from's own pool becomes to's own pool; other pools keep
// their name.
func MovedPool(pool, from, to string) string {
	if pool == storage.LocalPoolName(from) {
		return storage.LocalPoolName(to)
	}
	return pool
}

// MovedSpec is spec once its VM runs on host to instead of from: the
// disks attached from from's own pool name to's (their volumes moved with
// the VM).
func MovedSpec(spec v1.VMSpec, from, to string) v1.VMSpec {
	spec.Disks = slices.Clone(spec.Disks)
	for i, d := range spec.Disks {
		if d.Volume == "" {
			continue
		}
		pool, name, _ := strings.Cut(d.Volume, "/")
		spec.Disks[i].Volume = MovedPool(pool, from, to) + "/" + name
	}
	return spec
}

// ValidateDisks checks the local disks of a record or a source's report:
// names, pool and volume names that stay in their pool, a known format, a
// size QEMU and the pool accept, no disk twice.
func ValidateDisks(ds []Disk) error {
	if len(ds) > vm.MaxDisks {
		return fmt.Errorf("disks: %d, at most %d", len(ds), vm.MaxDisks)
	}
	seen := map[string]bool{}
	for i, d := range ds {
		f := fmt.Sprintf("disks[%d]", i)
		if err := vm.ValidateName(f+".name", d.Name); err != nil {
			return err
		}
		if seen[d.Name] || seen[d.Ref()] {
			return fmt.Errorf("%s: disk %s or volume %s twice", f, d.Name, d.Ref())
		}
		seen[d.Name], seen[d.Ref()] = true, true
		if err := vm.ValidateName(f+".pool", d.Pool); err != nil {
			return err
		}
		if err := vm.ValidateVolumeRef(f+".volume", d.Ref()); err != nil {
			return err
		}
		if d.Format != "qcow2" && d.Format != "raw" {
			return fmt.Errorf("%s.format: %q is not qcow2 or raw", f, d.Format)
		}
		if d.SizeBytes <= 0 || d.SizeBytes%512 != 0 || d.SizeBytes > int64(vm.MaxDiskMiB)<<20 {
			return fmt.Errorf("%s.sizeBytes: %d is not a positive multiple of 512 up to %d MiB", f, d.SizeBytes, vm.MaxDiskMiB)
		}
	}
	return nil
}

// DisksPart is the source agent's report of the VM's local disks
// (/hangar/migrations/<vm>/disks), written while the record is pending:
// the master checks it and copies it into the record.
type DisksPart struct {
	Disks []Disk `json:"disks,omitempty"`
	// Error says why the source could not report them.
	Error   string    `json:"error,omitempty"`
	Updated time.Time `json:"updated"`
}

// DecodeDisks decodes and validates the source agent's report of disks.
func DecodeDisks(b []byte) (DisksPart, error) {
	var p DisksPart
	if err := decodeStrict(b, &p); err != nil {
		return p, invalid("disks part", "%v", err)
	}
	if err := ValidateDisks(p.Disks); err != nil {
		return p, invalid("disks part", "%v", err)
	}
	if len(p.Error) > 4096 {
		return p, invalid("disks part", "error of %d bytes", len(p.Error))
	}
	return p, nil
}

// Leftover is a migrated VM's local disks that its source host still has:
// the migration ended (the guest runs on the target) while the source was
// not alive to delete them. The source's agent deletes them when it is
// back (/hangar/leftovers/<source>/<vm>).
type Leftover struct {
	VM      string    `json:"vm"`
	OpID    string    `json:"opID"`
	Target  string    `json:"target"`
	Disks   []Disk    `json:"disks"`
	Created time.Time `json:"created"`
}

// LeftoverOf is what rec leaves on its source when it ends done without
// the source having cleaned up (nil when nothing is left there).
func LeftoverOf(rec Record, src *SourcePart) *Leftover {
	if rec.Phase != Done || len(rec.Disks) == 0 || (src != nil && src.State == SrcCleaned) {
		return nil
	}
	return &Leftover{VM: rec.VM, OpID: rec.OpID, Target: rec.Target, Disks: rec.Disks, Created: time.Now().UTC()}
}

// DecodeLeftover decodes and validates the leftover record of vm on host:
// the disks it names are deleted from host's pools, so every one must be a
// volume of host's own pool or of a recorded (never a shared) pool.
func DecodeLeftover(host, name string, b []byte) (Leftover, error) {
	var l Leftover
	what := "leftover record of vm " + name + " on " + host
	if err := decodeStrict(b, &l); err != nil {
		return l, invalid(what, "%v", err)
	}
	if l.VM != name {
		return l, invalid(what, "names vm %q", l.VM)
	}
	if err := vm.ValidateOpID("opID", l.OpID); err != nil {
		return l, invalid(what, "%v", err)
	}
	if err := vm.ValidateName("target", l.Target); err != nil || l.Target == host {
		return l, invalid(what, "target %q", l.Target)
	}
	if len(l.Disks) == 0 {
		return l, invalid(what, "no disks")
	}
	if err := ValidateDisks(l.Disks); err != nil {
		return l, invalid(what, "%v", err)
	}
	for _, d := range l.Disks {
		if h, ok := storage.LocalPoolHost(d.Pool); ok && h != host {
			return l, invalid(what, "disk %s is on host %s's own pool", d.Name, h)
		}
	}
	return l, nil
}

// ValidateArgs checks the arguments of a migrate operation (vm owns the
// rules, so that the API and ValidateOp use the same).
func ValidateArgs(a v1.MigrateArgs) error { return vm.ValidateMigrateArgs(a) }

// DecodeSource decodes and validates the source agent's part.
func DecodeSource(b []byte) (SourcePart, error) {
	var p SourcePart
	if err := decodeStrict(b, &p); err != nil {
		return p, invalid("source part", "%v", err)
	}
	if !slices.Contains([]string{SrcStarting, SrcMirroring, SrcMirrorReady, SrcMigrating, SrcPaused, SrcFailed, SrcRolledBack, SrcCleaned}, p.State) {
		return p, invalid("source part", "unknown state %q", p.State)
	}
	if p.DowntimeMs < 0 || p.TotalMs < 0 || len(p.Error) > 4096 {
		return p, invalid("source part", "bad figures or error")
	}
	return p, nil
}

// DecodeTarget decodes and validates the target agent's part; the address
// and export names are what the source builds QMP commands from.
func DecodeTarget(b []byte) (TargetPart, error) {
	var p TargetPart
	if err := decodeStrict(b, &p); err != nil {
		return p, invalid("target part", "%v", err)
	}
	if !slices.Contains([]string{TgtPreparing, TgtListening, TgtRunning, TgtFailed, TgtCleaned}, p.State) {
		return p, invalid("target part", "unknown state %q", p.State)
	}
	if p.State == TgtListening {
		if ip := net.ParseIP(p.IP); ip == nil || ip.IsUnspecified() {
			return p, invalid("target part", "ip %q", p.IP)
		}
		if p.Port < 1 || p.Port > 65535 || p.NBDPort < 0 || p.NBDPort > 65535 || (len(p.Disks) > 0 && p.NBDPort == 0) {
			return p, invalid("target part", "ports %d, %d", p.Port, p.NBDPort)
		}
	}
	if err := ValidateTargetDisks(p.Disks); err != nil {
		return p, invalid("target part", "%v", err)
	}
	if len(p.Error) > 4096 {
		return p, invalid("target part", "error of %d bytes", len(p.Error))
	}
	return p, nil
}

// ValidateTargetDisks checks the volumes a target lists: disk names,
// volume references that stay in their pool, export names QEMU takes.
func ValidateTargetDisks(ds []TargetDisk) error {
	if len(ds) > vm.MaxDisks {
		return fmt.Errorf("disks: %d, at most %d", len(ds), vm.MaxDisks)
	}
	for i, d := range ds {
		if err := vm.ValidateName(fmt.Sprintf("disks[%d].name", i), d.Name); err != nil {
			return err
		}
		if err := vm.ValidateVolumeRef(fmt.Sprintf("disks[%d].volume", i), d.Volume); err != nil {
			return err
		}
		if !validNodeName(d.Export) {
			return fmt.Errorf("disks[%d].export %q", i, d.Export)
		}
	}
	return nil
}

// validNodeName: QEMU node names (≤31 bytes, letter first, then letters,
// digits, '-', '_', '.').
func validNodeName(s string) bool {
	if len(s) == 0 || len(s) > 31 {
		return false
	}
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'):
		default:
			return false
		}
	}
	return true
}
