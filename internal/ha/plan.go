package ha

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/scheduler"
	"hangar/internal/vm"
)

// ErrInvalid marks a malformed input or recorded plan.
var ErrInvalid = errors.New("invalid ha input")

// VM is one VM of a host, as the planner needs it.
type VM struct {
	// Spec is its desired state: name, CPUs, memory, power, HA settings,
	// placement, preferred hosts and anti-affinity group.
	Spec v1.VMSpec
	// Pools are the storage pools of its disks: a new host must reach
	// all of them.
	Pools []string
	// LocalDisks are its disks on storage that only its host reaches:
	// such a VM cannot restart elsewhere.
	LocalDisks []string
	// Restarts are the times of its earlier HA restarts.
	Restarts []time.Time
}

// Input is what PlanRestarts works from.
type Input struct {
	// Host is the dead host.
	Host string
	// Now is when the plan is made (it counts restarts in the window).
	Now time.Time
	// VMs are the VMs placed on Host.
	VMs []VM
	// Pool is the pool now: its hosts (Host among them or not) and what
	// is booked on them.
	Pool scheduler.Snapshot
}

// Plan is what to do with the VMs of a dead host, in a stable JSON shape:
// the master records it in the failover operation and a next master
// resumes it (after Validate: state read back is input). Every VM of the
// host is in exactly one list.
type Plan struct {
	Version int       `json:"version"`
	Host    string    `json:"host"`
	Made    time.Time `json:"made"`
	// Restarts in the order to do them: priority high to low, restart
	// order low to high, then name.
	Restarts []Restart `json:"restarts"`
	// Parked: HA VMs no host can take now (in restart order); they start
	// when capacity returns (the master plans them again).
	Parked []Held `json:"parked"`
	// Skipped: HA VMs restarted MaxRestarts times within their window.
	Skipped []Held `json:"skipped"`
	// Lost: VMs that were meant to run and are not restarted (not HA, or
	// they cannot be); they show lost.
	Lost []Held `json:"lost"`
	// Stopped: VMs not meant to run; nothing to do.
	Stopped []string `json:"stopped"`
}

// PlanVersion is the version of Plan's JSON shape.
const PlanVersion = 1

// Restart is one VM to start on Host.
type Restart struct {
	VM           string `json:"vm"`
	Host         string `json:"host"`
	Priority     int    `json:"priority"`
	RestartOrder int    `json:"restartOrder"`
	// Attempt is this restart's number within the VM's window (1: first).
	Attempt int `json:"attempt"`
	// State is how far the master got: pending, done or failed (Error).
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// Restart states.
const (
	RestartPending = "pending"
	RestartDone    = "done"
	RestartFailed  = "failed"
)

// Held is a VM that is not restarted now, and why.
type Held struct {
	VM     string `json:"vm"`
	Reason string `json:"reason"`
}

// candidate is an HA VM to restart, with its restart number.
type candidate struct {
	vm      VM
	attempt int
}

// outcome is what becomes of one VM of the dead host.
type outcome int

const (
	restart outcome = iota
	stopped
	lost
	skipped
)

// PlanRestarts decides what happens to the VMs of the dead host in.Host:
// HA VMs meant to run restart on the hosts the scheduler picks (in
// restart order, each booked before the next is placed), or are parked
// when none can take them, or skipped past their restart limit; the rest
// are lost or stay stopped. It does no I/O. The error is for malformed
// input (a bad host name, a VM listed twice, a bad snapshot).
func PlanRestarts(in Input) (Plan, error) {
	if err := vm.ValidateName("host", in.Host); err != nil {
		return Plan{}, fmt.Errorf("%w: dead host: %w", ErrInvalid, err)
	}
	p := Plan{Version: PlanVersion, Host: in.Host, Made: in.Now.UTC().Round(0),
		Restarts: []Restart{}, Parked: []Held{}, Skipped: []Held{}, Lost: []Held{}, Stopped: []string{}}
	seen := map[string]bool{}
	var cands []candidate
	for _, m := range in.VMs {
		name := m.Spec.Name
		if err := vm.ValidateName("name", name); err != nil {
			return Plan{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if seen[name] {
			return Plan{}, fmt.Errorf("%w: vm %q listed twice", ErrInvalid, name)
		}
		seen[name] = true
		o, why, attempt := classify(m, in.Host, in.Now)
		switch o {
		case restart:
			cands = append(cands, candidate{vm: m, attempt: attempt})
		case stopped:
			p.Stopped = append(p.Stopped, name)
		case lost:
			p.Lost = append(p.Lost, Held{VM: name, Reason: why})
		case skipped:
			p.Skipped = append(p.Skipped, Held{VM: name, Reason: why})
		}
	}
	sortCandidates(cands)
	placed, err := place(in.Pool, []string{in.Host}, cands)
	if err != nil {
		return Plan{}, err
	}
	for i, c := range cands {
		h := c.vm.Spec.HA
		switch pl := placed[i]; {
		case errors.Is(pl.Err, scheduler.ErrInvalid): // waiting for capacity would not help
			p.Lost = append(p.Lost, Held{VM: pl.VM, Reason: "cannot be placed: " + pl.Err.Error()})
		case pl.Err != nil:
			p.Parked = append(p.Parked, Held{VM: pl.VM, Reason: pl.Err.Error()})
		default:
			p.Restarts = append(p.Restarts, Restart{VM: pl.VM, Host: pl.Host, Priority: h.Priority,
				RestartOrder: h.RestartOrder, Attempt: c.attempt, State: RestartPending})
		}
	}
	for _, l := range [][]Held{p.Lost, p.Skipped} {
		slices.SortFunc(l, func(a, b Held) int { return strings.Compare(a.VM, b.VM) })
	}
	slices.Sort(p.Stopped)
	return p, nil
}

// classify says what becomes of m, a VM of the dead host, and why; a VM
// to restart gets its restart number within its window.
func classify(m VM, host string, now time.Time) (o outcome, why string, attempt int) {
	if o, why := eligible(m, host); o != restart {
		return o, why, 0
	}
	h := m.Spec.HA
	window, _ := vm.HAWindow(h)
	n := 0
	for _, t := range m.Restarts {
		if t.After(now.Add(-window)) { // a time ahead of now counts too
			n++
		}
	}
	if n >= h.MaxRestarts {
		return skipped, fmt.Sprintf("restarted %d times within %s (maxRestarts %d)", n, h.RestartWindow, h.MaxRestarts), 0
	}
	return restart, "", n + 1
}

// eligible says whether m would restart if host died, restart limits
// aside: HA enabled (with valid settings), meant to run, no local disks.
func eligible(m VM, host string) (outcome, string) {
	s, h := m.Spec, m.Spec.HA
	switch {
	case s.Power != v1.PowerRunning && s.Power != v1.PowerPaused:
		return stopped, ""
	case h == nil || !h.Enabled:
		return lost, "not highly available: its host " + host + " is down"
	case s.Power == v1.PowerPaused:
		return lost, "it was paused: its memory is gone with host " + host + "; start it again"
	case len(m.LocalDisks) > 0:
		return lost, "disks " + strings.Join(m.LocalDisks, ", ") + " are on storage only host " + host + " reaches"
	}
	if err := vm.ValidateHA(h); err != nil {
		return lost, "its HA settings fail their checks: " + err.Error()
	}
	return restart, ""
}

// sortCandidates puts HA VMs in restart order (restartOrder).
func sortCandidates(cs []candidate) {
	rank := func(c candidate) Restart {
		return Restart{VM: c.vm.Spec.Name, Priority: c.vm.Spec.HA.Priority, RestartOrder: c.vm.Spec.HA.RestartOrder}
	}
	slices.SortFunc(cs, func(a, b candidate) int { return restartOrder(rank(a), rank(b)) })
}

// place asks the scheduler for a host for each candidate, in order, on
// s with the hosts down taken out (whatever s says of them).
func place(s scheduler.Snapshot, down []string, cs []candidate) ([]scheduler.Placement, error) {
	hosts := slices.Clone(s.Hosts)
	for i := range hosts {
		if slices.Contains(down, hosts[i].Name) {
			hosts[i].Alive = false
		}
	}
	s.Hosts = hosts
	reqs := make([]scheduler.Request, len(cs))
	for i, c := range cs {
		reqs[i] = scheduler.FromSpec(c.vm.Spec, c.vm.Pools)
	}
	out, err := scheduler.Plan(s, reqs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return out, nil
}
