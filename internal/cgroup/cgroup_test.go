package cgroup

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestLimitsValidate(t *testing.T) {
	for _, l := range []Limits{{CPUShares: 1}, {CPUShares: 300000}, {CPUs: -1}, {CPUs: 0.001}, {MemoryBytes: -5}} {
		if err := l.Validate(); err == nil {
			t.Errorf("%+v: no error", l)
		}
	}
	if err := (Limits{CPUShares: 256, CPUs: 0.5, MemoryBytes: 64 << 20}).Validate(); err != nil {
		t.Error(err)
	}
}

func newManager(t *testing.T) *Manager {
	t.Helper()
	m, err := New("unit-" + filepath.Base(t.Name()))
	if errors.Is(err, ErrUnavailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// the host's root group is kept across VMs; a test removes its own
		for _, c := range []string{"", "cpu", "cpuacct", "memory", "pids"} {
			_ = os.Remove(filepath.Join("/sys/fs/cgroup", c, "/"+m.root+".slice"))
			_ = os.Remove(filepath.Join("/sys/fs/cgroup", c, "/"+m.root))
		}
	})
	return m
}

// read returns a v1 controller file of vm's group, or the v2 file.
func read(t *testing.T, m *Manager, controller, v1file, v2file string, vm string) string {
	t.Helper()
	p := filepath.Join("/sys/fs/cgroup", controller, m.Path(vm), v1file)
	if m.Mode() == "v2" {
		p = filepath.Join("/sys/fs/cgroup", m.Path(vm), v2file)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestApplyUpdateRemove creates a real group with a real process in it,
// changes its limits live, finds it again and removes it.
func TestApplyUpdateRemove(t *testing.T) {
	m := newManager(t)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); _ = m.Remove("vm1") }()
	l := Limits{CPUShares: 512, CPUs: 0.5, MemoryBytes: 256 << 20}
	if err := m.Apply("vm1", cmd.Process.Pid, l); err != nil {
		t.Fatal(err)
	}
	if ok, err := m.Has("vm1", cmd.Process.Pid); err != nil || !ok {
		t.Fatalf("pid not in group: %v %v", ok, err)
	}
	if m.Mode() == "v2" {
		if got := read(t, m, "", "", "cpu.max", "vm1"); got != "50000 100000" {
			t.Errorf("cpu.max = %q", got)
		}
	} else {
		if got := read(t, m, "cpu", "cpu.cfs_quota_us", "", "vm1"); got != "50000" {
			t.Errorf("quota = %q", got)
		}
		if got := read(t, m, "cpu", "cpu.shares", "", "vm1"); got != "512" {
			t.Errorf("shares = %q", got)
		}
	}
	u, err := m.Usage("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if u.MemoryLimit != 256<<20 {
		t.Errorf("memory limit reported %d, want %d", u.MemoryLimit, 256<<20)
	}
	// live change: lift the cap, lower the memory limit
	if err := m.Update("vm1", Limits{CPUShares: 2048, MemoryBytes: 128 << 20}); err != nil {
		t.Fatal(err)
	}
	if m.Mode() != "v2" {
		if got := read(t, m, "cpu", "cpu.cfs_quota_us", "", "vm1"); got != "-1" {
			t.Errorf("quota after lift = %q", got)
		}
	} else if got := read(t, m, "", "", "cpu.max", "vm1"); !strings.HasPrefix(got, "max") {
		t.Errorf("cpu.max after lift = %q", got)
	}
	if u, err := m.Usage("vm1"); err != nil || u.MemoryLimit != 128<<20 {
		t.Errorf("memory limit after update %d, %v", u.MemoryLimit, err)
	}
	// re-adoption: a second manager (a restarted agent) finds the group
	m2 := newManager(t)
	if err := m2.Apply("vm1", cmd.Process.Pid, l); err != nil {
		t.Fatal(err)
	}
	if u, err := m2.Usage("vm1"); err != nil || u.MemoryLimit != 256<<20 {
		t.Errorf("memory limit after re-apply %d, %v", u.MemoryLimit, err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err := m.Remove("vm1"); err != nil {
		t.Fatal(err)
	}
	if m.Exists("vm1") {
		t.Error("group still there after remove")
	}
	if err := m.Remove("vm1"); err != nil {
		t.Errorf("remove of a removed group: %v", err)
	}
}
