package vm

import (
	"fmt"
	"slices"
	"strings"

	v1 "hangar/api/v1"
)

// StateError is an action that a VM's observed state does not allow. Its
// message says the state and what to do:
// `vm "web1" is running: stop it first or use --force`.
type StateError struct {
	VM, State, Action string
	// Need are the states the action is allowed in.
	Need []string
}

func (e *StateError) Error() string {
	return fmt.Sprintf("vm %q is %s: %s", e.VM, e.State, e.hint())
}

func (e *StateError) hint() string {
	need := func(states ...string) bool {
		for _, s := range states {
			if slices.Contains(e.Need, s) {
				return true
			}
		}
		return false
	}
	switch {
	case e.State == v1.StateCreating:
		return "wait until it is created"
	case e.State == v1.StateStarting || e.State == v1.StateStopping:
		return fmt.Sprintf("wait until it has finished %s (%s needs it %s)", e.State, e.Action, strings.Join(e.Need, " or "))
	case e.Action == "delete":
		return "stop it first or use --force"
	case e.Action == "resume":
		return "only a paused or suspended vm can be resumed"
	case e.State == v1.StateSuspended:
		return fmt.Sprintf("resume it first (a suspended vm cannot %s)", e.Action)
	case e.State == v1.StatePaused && need(v1.StateRunning):
		return fmt.Sprintf("resume it first (%s needs it running)", e.Action)
	case (e.State == v1.StateRunning || e.State == v1.StatePaused) && need(v1.StateStopped):
		return fmt.Sprintf("stop it first (%s needs it stopped)", e.Action)
	case need(v1.StateRunning, v1.StatePaused):
		return fmt.Sprintf("start it first (%s needs it %s)", e.Action, strings.Join(e.Need, " or "))
	default:
		return fmt.Sprintf("%s needs it %s", e.Action, strings.Join(e.Need, " or "))
	}
}

// CheckState returns a StateError unless state is one of need.
func CheckState(name, action, state string, need []string) error {
	if len(need) == 0 || slices.Contains(need, state) {
		return nil
	}
	return &StateError{VM: name, State: state, Action: action, Need: need}
}
