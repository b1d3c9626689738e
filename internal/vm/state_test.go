package vm

import (
	"errors"
	"testing"

	v1 "hangar/api/v1"
)

func TestCheckState(t *testing.T) {
	delNeed := []string{v1.StateStopped, v1.StateCrashed, v1.StateError, v1.StateCreating}
	cases := []struct {
		action, state string
		need          []string
		want          string
	}{
		{"delete", v1.StateRunning, delNeed, `vm "web1" is running: stop it first or use --force`},
		{"delete", v1.StateSuspended, delNeed, `vm "web1" is suspended: stop it first or use --force`},
		{"pause", v1.StateStopped, []string{v1.StateRunning}, `vm "web1" is stopped: start it first (pause needs it running)`},
		{"pause", v1.StatePaused, []string{v1.StateRunning}, `vm "web1" is paused: resume it first (pause needs it running)`},
		{"resume", v1.StateRunning, []string{v1.StatePaused, v1.StateSuspended}, `vm "web1" is running: only a paused or suspended vm can be resumed`},
		{"template", v1.StateRunning, []string{v1.StateStopped}, `vm "web1" is running: stop it first (template needs it stopped)`},
		{"reboot", v1.StateStopped, []string{v1.StateRunning, v1.StatePaused}, `vm "web1" is stopped: start it first (reboot needs it running or paused)`},
		{"snapshot", v1.StateSuspended, []string{v1.StateRunning, v1.StateStopped}, `vm "web1" is suspended: resume it first (a suspended vm cannot snapshot)`},
		{"resize", v1.StateCreating, []string{v1.StateRunning}, `vm "web1" is creating: wait until it is created`},
		{"suspend", v1.StateStarting, []string{v1.StateRunning}, `vm "web1" is starting: wait until it has finished starting (suspend needs it running)`},
	}
	for _, c := range cases {
		err := CheckState("web1", c.action, c.state, c.need)
		var se *StateError
		if !errors.As(err, &se) || err.Error() != c.want {
			t.Errorf("%s while %s: got %v, want %s", c.action, c.state, err, c.want)
		}
	}
	if err := CheckState("web1", "delete", v1.StateStopped, delNeed); err != nil {
		t.Errorf("delete of a stopped vm: %v", err)
	}
}
