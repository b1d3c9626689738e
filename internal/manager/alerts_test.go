package manager

import (
	"testing"
	"time"

	v1 "hangar/api/v1"
)

func TestAlertsOfHostsVMsAndStorage(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		state, severity string
	}{{v1.HostAlive, ""}, {v1.HostDown, ""}, {v1.HostMaintenance, ""}, {v1.HostSuspect, v1.SeverityWarning},
		{v1.HostIsolated, v1.SeverityCritical}, {v1.HostDead, v1.SeverityCritical}} {
		a := hostAlert(v1.Host{Name: "h2", State: c.state, LivenessWhy: "lease expired"}, since)
		switch {
		case c.severity == "" && a != nil:
			t.Errorf("host %s: alert %+v", c.state, a)
		case c.severity != "" && (a == nil || a.ID != "host-down/h2" || a.Severity != c.severity || a.Kind != v1.AlertHostDown ||
			a.Target != "h2" || !a.Since.Equal(since) || a.Message != "host h2 is "+c.state+" since 2026-01-02T03:04:05Z: lease expired"):
			t.Errorf("host %s: alert %+v, want %s", c.state, a, c.severity)
		}
	}
	for state, want := range map[string]bool{v1.StateRunning: false, v1.StateStopped: false, v1.StateCrashed: true, v1.StateError: true, v1.StateLost: false} {
		a := vmAlert(v1.VM{Spec: v1.VMSpec{Name: "db1"}, Status: v1.VMStatus{State: state, Host: "h1", Reason: "exit 1", UpdatedAt: since}})
		if (a != nil) != want {
			t.Errorf("vm %s: alert %+v", state, a)
		}
		if a != nil && (a.ID != "vm-crashed/db1" || a.Message != "vm db1 is "+state+" on host h1: exit 1" || !a.Since.Equal(since)) {
			t.Errorf("vm %s: alert %+v", state, a)
		}
	}
	var seen firstSeen
	for _, c := range []struct {
		free     int64
		severity string
	}{{50, ""}, {10, ""}, {9, v1.SeverityWarning}, {4, v1.SeverityCritical}} {
		a := storageAlert(v1.StorageUsage{Pool: "shared", TotalBytes: 100 << 20, FreeBytes: c.free << 20}, seen.since)
		if (a == nil) != (c.severity == "") || (a != nil && (a.Severity != c.severity || a.ID != "storage-low/shared")) {
			t.Errorf("%d%% free: alert %+v, want %q", c.free, a, c.severity)
		}
	}
	first := seen.since("storage-low/shared")
	if again := seen.since("storage-low/shared"); !again.Equal(first) {
		t.Errorf("since moved: %v then %v", first, again)
	}
	seen.keep(map[string]v1.Alert{})
	if len(seen.m) != 0 {
		t.Errorf("a cleared alert's time is kept: %v", seen.m)
	}
	if a := storageAlert(v1.StorageUsage{Pool: "x"}, seen.since); a != nil {
		t.Errorf("a pool of unknown size alerts: %+v", a)
	}
}
