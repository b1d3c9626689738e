package ha

import (
	"cmp"
	"fmt"
	"strings"

	"hangar/internal/vm"
)

// Bounds of a recorded plan.
const (
	maxPlanVMs = 1 << 16
	maxReason  = 4096
)

// Validate checks a plan read back from etcd before a master resumes it:
// the version, every name, each VM in one list once, restarts in restart
// order onto another host, known states, reasons present and bounded.
func (p Plan) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: recorded plan: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if p.Version != PlanVersion {
		return bad("version %d, want %d", p.Version, PlanVersion)
	}
	if err := vm.ValidateName("host", p.Host); err != nil {
		return bad("%v", err)
	}
	if p.Made.IsZero() {
		return bad("no time made")
	}
	if n := len(p.Restarts) + len(p.Parked) + len(p.Skipped) + len(p.Lost) + len(p.Stopped); n > maxPlanVMs {
		return bad("%d vms, at most %d", n, maxPlanVMs)
	}
	seen := map[string]string{}
	name := func(list, n string) error {
		if err := vm.ValidateName(list+".vm", n); err != nil {
			return bad("%v", err)
		}
		if other, dup := seen[n]; dup {
			return bad("vm %q is in %s and in %s", n, other, list)
		}
		seen[n] = list
		return nil
	}
	for i, r := range p.Restarts {
		if err := name("restarts", r.VM); err != nil {
			return err
		}
		if err := vm.ValidateName("restarts.host", r.Host); err != nil {
			return bad("vm %q: %v", r.VM, err)
		}
		switch {
		case r.Host == p.Host:
			return bad("vm %q restarts on the dead host %s", r.VM, p.Host)
		case r.Priority < vm.MinHAPriority || r.Priority > vm.MaxHAPriority || r.RestartOrder < 0 || r.RestartOrder > vm.MaxHARestartOrder:
			return bad("vm %q: priority %d, restart order %d out of range", r.VM, r.Priority, r.RestartOrder)
		case r.Attempt < 1 || r.Attempt > vm.MaxHARestarts:
			return bad("vm %q: attempt %d out of range", r.VM, r.Attempt)
		case r.State != RestartPending && r.State != RestartDone && r.State != RestartFailed:
			return bad("vm %q: unknown state %q", r.VM, r.State)
		case (r.State == RestartFailed) != (r.Error != "") || len(r.Error) > maxReason:
			return bad("vm %q: state %s with error %.40q", r.VM, r.State, r.Error)
		case i > 0 && restartOrder(p.Restarts[i-1], r) >= 0:
			return bad("vm %q is out of restart order", r.VM)
		}
	}
	for _, l := range []struct {
		name string
		held []Held
	}{{"parked", p.Parked}, {"skipped", p.Skipped}, {"lost", p.Lost}} {
		for _, h := range l.held {
			if err := name(l.name, h.VM); err != nil {
				return err
			}
			if strings.TrimSpace(h.Reason) == "" || len(h.Reason) > maxReason {
				return bad("%s vm %q: a reason of %d bytes", l.name, h.VM, len(h.Reason))
			}
		}
	}
	for _, n := range p.Stopped {
		if err := name("stopped", n); err != nil {
			return err
		}
	}
	return nil
}

// restartOrder compares two restarts: priority high to low, restart order
// low to high, then name.
func restartOrder(a, b Restart) int {
	return cmp.Or(cmp.Compare(b.Priority, a.Priority), cmp.Compare(a.RestartOrder, b.RestartOrder), strings.Compare(a.VM, b.VM))
}
