package vm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/uuid"

	v1 "hangar/api/v1"
)

// Target kinds of operations.
const (
	TargetVM     = "vm"     // the target is a VM name
	TargetVolume = "volume" // the target is a volume reference "pool/name"
	TargetHost   = "host"   // the target is a host name
)

// opKinds maps each operation kind the API creates to what its target
// names and the type of its arguments (nil: it takes none).
var opKinds = map[string]struct {
	target string
	args   func() any
}{
	"create":           {TargetVM, func() any { return new(v1.CreateArgs) }},
	"start":            {TargetVM, nil},
	"stop":             {TargetVM, func() any { return new(v1.StopArgs) }},
	"reboot":           {TargetVM, nil},
	"pause":            {TargetVM, nil},
	"limits":           {TargetVM, func() any { return new(v1.LimitsArgs) }}, // apply the spec's resources to the running QEMU
	"resume":           {TargetVM, nil},
	"suspend":          {TargetVM, nil},
	"media":            {TargetVM, func() any { return new(v1.MediaArgs) }},
	"snapshot":         {TargetVM, func() any { return new(v1.SnapshotArgs) }},
	"snapshot-commit":  {TargetVM, func() any { return new(v1.SnapshotActionArgs) }},
	"snapshot-revert":  {TargetVM, func() any { return new(v1.SnapshotActionArgs) }},
	"snapshot-discard": {TargetVM, func() any { return new(v1.SnapshotActionArgs) }},
	"resize":           {TargetVM, func() any { return new(v1.ResizeArgs) }},
	"template":         {TargetVM, func() any { return new(v1.TemplateArgs) }},
	"clone":            {TargetVM, func() any { return new(v1.CloneArgs) }},
	"delete":           {TargetVM, func() any { return new(v1.DeleteArgs) }},
	"migrate":          {TargetVM, func() any { return new(v1.MigrateArgs) }},
	"evacuate":         {TargetHost, func() any { return new(v1.EvacuateArgs) }},
	// failover: the master's handling of a dead host; its args are the
	// restart plan (ha.Plan, checked by ha's Validate where it is read).
	"failover":       {TargetHost, func() any { return new(json.RawMessage) }},
	"volume-copy":    {TargetVolume, func() any { return new(v1.VolumeCopyArgs) }},
	"volume-flatten": {TargetVolume, func() any { return new(v1.VolumeCopyArgs) }},
}

// OpKinds lists every operation kind Hangar knows, sorted.
func OpKinds() []string {
	return slices.Sorted(maps.Keys(opKinds))
}

// DrivenByMaster reports whether the pool master, not a host's agent,
// runs operations of kind: they span hosts (a migration), so the API
// records them without a host and no agent's task names them.
func DrivenByMaster(kind string) bool {
	return kind == "migrate" || kind == "evacuate" || kind == "failover"
}

// OpTarget returns what an operation kind's target names (TargetVM or
// TargetVolume), or "" for a kind Hangar does not know.
func OpTarget(kind string) string { return opKinds[kind].target }

// ValidateOpID checks that id is an operation id (a UUID in its canonical
// form: it is used in etcd keys).
func ValidateOpID(field, id string) error {
	u, err := uuid.Parse(id)
	if err != nil || u.String() != id {
		return invalid(field, "%q is not an operation id", id)
	}
	return nil
}

// ValidateOp checks an operation record as strictly as the API checks the
// request that made it: its id, a known kind, a target of the kind's sort
// (a VM name or a volume reference) and arguments that decode strictly
// into the kind's type with valid values. The agent runs it on every
// operation it reads from the store before it builds a path from it.
func ValidateOp(op v1.Operation) error {
	if err := ValidateOpID("id", op.ID); err != nil {
		return err
	}
	k, ok := opKinds[op.Kind]
	if !ok {
		return invalid("kind", "unknown operation kind %q", op.Kind)
	}
	switch k.target {
	case TargetVM:
		if err := ValidateName("target", op.Target); err != nil {
			return err
		}
	case TargetVolume:
		if err := ValidateVolumeRef("target", op.Target); err != nil {
			return err
		}
	case TargetHost:
		if err := ValidateName("target", op.Target); err != nil {
			return err
		}
	}
	if k.args == nil {
		if a := bytes.TrimSpace(op.Args); len(a) > 0 && !bytes.Equal(a, []byte("null")) && !bytes.Equal(a, []byte("{}")) {
			return invalid("args", "operation %s takes no arguments", op.Kind)
		}
		return nil
	}
	args := k.args()
	if len(bytes.TrimSpace(op.Args)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(op.Args))
		dec.DisallowUnknownFields()
		if err := dec.Decode(args); err != nil {
			return invalid("args", "%v", err)
		}
		if dec.More() {
			return invalid("args", "trailing data after the arguments")
		}
	}
	return validateArgs(op, args)
}

func validateArgs(op v1.Operation, args any) error {
	switch a := args.(type) {
	case *v1.StopArgs:
		if a.TimeoutSeconds < 0 || a.TimeoutSeconds > 3600 {
			return invalid("args.timeoutSeconds", "must be 0-3600, got %d", a.TimeoutSeconds)
		}
	case *v1.MediaArgs:
		if err := validateDiskName("args.disk", a.Disk); err != nil {
			return err
		}
		if a.Image != "" && (!strings.HasPrefix(a.Image, "/") || strings.ContainsRune(a.Image, 0)) {
			return invalid("args.image", "must be an absolute path, got %q", a.Image)
		}
	case *v1.SnapshotArgs:
		return ValidateName("args.name", a.Name)
	case *v1.SnapshotActionArgs:
		return ValidateName("args.name", a.Name)
	case *v1.ResizeArgs:
		if err := validateDiskName("args.disk", a.Disk); err != nil {
			return err
		}
		if a.SizeMiB <= 0 || a.SizeMiB > MaxDiskMiB {
			return invalid("args.sizeMiB", "must be between 1 and %d, got %d", MaxDiskMiB, a.SizeMiB)
		}
	case *v1.TemplateArgs:
		return ValidateName("args.template", a.Template)
	case *v1.CloneArgs:
		if err := ValidateName("args.name", a.Name); err != nil {
			return err
		}
		for j, fw := range a.Forwards {
			if err := validateForward(fmt.Sprintf("args.forwards[%d]", j), fw); err != nil {
				return err
			}
		}
	case *v1.MigrateArgs:
		return ValidateMigrateArgs(*a)
	case *v1.LimitsArgs:
		return validateLimitsArgs(*a)
	case *v1.VolumeCopyArgs:
		if a.Pool+"/"+a.Source != op.Target {
			return invalid("args.source", "%s/%s is not the operation's target %q", a.Pool, a.Source, op.Target)
		}
		if op.Kind == "volume-copy" {
			if err := ValidateVolumeRef("args.name", a.Pool+"/"+a.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// Limits of the migrate arguments.
const (
	MaxDowntimeLimitMs    = 60_000
	MaxProgressTimeoutSec = 24 * 3600
)

// ValidateMigrateArgs checks the arguments of a migrate operation; errors
// name the field as the API reports it.
func ValidateMigrateArgs(a v1.MigrateArgs) error {
	if err := ValidateName("args.to", a.To); err != nil {
		return err
	}
	if a.MaxBandwidth < 0 {
		return invalid("args.maxBandwidth", "must not be negative, got %d", a.MaxBandwidth)
	}
	if a.DowntimeLimitMs < 0 || a.DowntimeLimitMs > MaxDowntimeLimitMs {
		return invalid("args.downtimeLimitMs", "must be 0-%d, got %d", MaxDowntimeLimitMs, a.DowntimeLimitMs)
	}
	if a.ProgressTimeoutSec < 0 || a.ProgressTimeoutSec > MaxProgressTimeoutSec {
		return invalid("args.progressTimeoutSec", "must be 0-%d, got %d", MaxProgressTimeoutSec, a.ProgressTimeoutSec)
	}
	return nil
}

func validateDiskName(field, name string) error {
	if err := ValidateName(field, name); err != nil {
		return err
	}
	if len(name) > MaxDiskName {
		return invalid(field, "at most %d characters, got %q", MaxDiskName, name)
	}
	return nil
}

func validateForward(f string, fw v1.Forward) error {
	if fw.HostPort < 1 || fw.HostPort > 65535 {
		return invalid(f+".hostPort", "must be 1-65535, got %d", fw.HostPort)
	}
	if fw.GuestPort < 1 || fw.GuestPort > 65535 {
		return invalid(f+".guestPort", "must be 1-65535, got %d", fw.GuestPort)
	}
	if fw.Protocol != "" && fw.Protocol != "tcp" && fw.Protocol != "udp" {
		return invalid(f+".protocol", "must be tcp or udp, got %q", fw.Protocol)
	}
	return nil
}
