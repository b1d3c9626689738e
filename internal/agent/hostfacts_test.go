package agent

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestProcessStart: the start time read from /proc is that of the process.
func TestProcessStart(t *testing.T) {
	// /proc has 10 ms ticks and btime whole seconds, and the wall clock may
	// have been stepped since boot: a margin of seconds, not of ticks.
	const slack = 5 * time.Second
	before := time.Now().Add(-slack)
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	got, err := processStart(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if got.Before(before) || got.After(time.Now().Add(slack)) {
		t.Fatalf("start time %s of a process started at %s", got, before.Add(slack))
	}
	self, err := processStart(os.Getpid())
	if err != nil || !self.Before(got.Add(time.Second)) {
		t.Fatalf("this test process started %s (%v), after its child (%s)", self, err, got)
	}
	if _, err := processStart(1 << 30); err == nil {
		t.Fatal("no error for a pid that does not exist")
	}
}
