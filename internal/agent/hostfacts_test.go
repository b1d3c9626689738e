package agent

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestProcessStart: the start time read from /proc is that of the process.
func TestProcessStart(t *testing.T) {
	before := time.Now().Add(-time.Second) // /proc has 10 ms ticks; btime whole seconds
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	got, err := processStart(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if got.Before(before) || got.After(time.Now().Add(time.Second)) {
		t.Fatalf("start time %s of a process started at %s", got, before.Add(time.Second))
	}
	self, err := processStart(os.Getpid())
	if err != nil || !self.Before(got.Add(time.Second)) {
		t.Fatalf("this test process started %s (%v), after its child (%s)", self, err, got)
	}
	if _, err := processStart(1 << 30); err == nil {
		t.Fatal("no error for a pid that does not exist")
	}
}
