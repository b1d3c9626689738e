package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// procStatus reads the fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of pid %d: %v", pid, err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// qemuCreds checks that a VM's QEMU runs as its recorded unprivileged uid
// with no capabilities and no_new_privs, and returns its supplementary
// groups.
func qemuCreds(t *testing.T, v v1.VM) []string {
	t.Helper()
	name, uid := v.Spec.Name, v.Status.UID
	if uid <= 0 {
		t.Fatalf("vm %s: status records uid %d", name, uid)
	}
	st := procStatus(t, v.Status.PID)
	want := strings.Repeat(strconv.Itoa(uid)+" ", 4)
	for _, k := range []string{"Uid", "Gid"} {
		if got := strings.Join(strings.Fields(st[k]), " ") + " "; got != want {
			t.Errorf("vm %s: qemu %s (real, effective, saved, fs) = %q, want all %d", name, k, st[k], uid)
		}
	}
	for _, k := range []string{"CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"} {
		if st[k] != "0000000000000000" {
			t.Errorf("vm %s: qemu %s = %s, want no capabilities", name, k, st[k])
		}
	}
	if st["NoNewPrivs"] != "1" {
		t.Errorf("vm %s: qemu NoNewPrivs = %q, want 1", name, st["NoNewPrivs"])
	}
	if st["Seccomp"] != "2" {
		t.Errorf("vm %s: qemu Seccomp = %q, want 2 (the -sandbox filter)", name, st["Seccomp"])
	}
	return strings.Fields(st["Groups"])
}

// openAs opens path for reading as uid with the given groups (what the
// VM's QEMU holds) and reports the error text ("" on success).
func openAs(t *testing.T, uid int, groups []string, path string) string {
	t.Helper()
	g := "--clear-groups"
	if len(groups) > 0 {
		g = "--groups=" + strings.Join(groups, ",")
	}
	out, err := exec.Command("setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(uid), g,
		"--", "head", "-c", "1", path).CombinedOutput()
	if err != nil {
		return strings.TrimSpace(string(out)) + " (" + err.Error() + ")"
	}
	return ""
}

// TestQEMUUnprivileged: every QEMU runs as its VM's own uid with no
// capabilities; one VM's uid cannot open another VM's disk or serial log;
// shared bases are reached through a group; the uid survives re-adoption
// and is released at delete.
func TestQEMUUnprivileged(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	s := newServer(t)
	ctx := context.Background()
	s.createGuest("uida", nil)
	s.createGuest("uidb", nil)
	s.waitReady("uida", 0)
	s.waitReady("uidb", 0)
	a := s.waitState("uida", 10*time.Second, v1.StateRunning)
	b := s.waitState("uidb", 10*time.Second, v1.StateRunning)
	groupsA := qemuCreds(t, a)
	qemuCreds(t, b)
	if a.Status.UID == b.Status.UID {
		t.Fatalf("both vms run as uid %d", a.Status.UID)
	}

	diskA, diskB := a.Status.Disks[0].Path, b.Status.Disks[0].Path
	for _, p := range []string{diskA, diskB} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
	if msg := openAs(t, a.Status.UID, groupsA, diskA); msg != "" {
		t.Errorf("vm a's uid cannot open its own disk: %s", msg)
	}
	if msg := openAs(t, a.Status.UID, groupsA, diskB); !strings.Contains(msg, "Permission denied") {
		t.Errorf("vm a's uid opening vm b's disk %s: %q, want Permission denied", diskB, msg)
	}
	if msg := openAs(t, a.Status.UID, groupsA, s.serialLog("uidb")); !strings.Contains(msg, "Permission denied") {
		t.Errorf("vm a's uid opening vm b's serial log: %q, want Permission denied", msg)
	}
	// The shared base image under both overlays: readable through a group
	// both QEMUs hold, not by others (nor by a's uid without its groups).
	base := filepath.Join(s.dataDir, "pools", "default", a.Status.Disks[0].Backing) // pool-relative
	fi, err := os.Stat(base)
	if err != nil {
		t.Fatalf("base image %q: %v", a.Status.Disks[0].Backing, err)
	}
	gid := int(fi.Sys().(*syscall.Stat_t).Gid)
	if fi.Mode().Perm()&0o007 != 0 || fi.Mode().Perm()&0o040 == 0 || gid == 0 {
		t.Errorf("base image %s: mode %v group %d, want group-readable by its own group and nothing for others", base, fi.Mode().Perm(), gid)
	}
	if !slicesContain(groupsA, strconv.Itoa(gid)) {
		t.Errorf("vm a's qemu groups %v lack the base image's group %d", groupsA, gid)
	}
	if msg := openAs(t, a.Status.UID, nil, base); !strings.Contains(msg, "Permission denied") {
		t.Errorf("vm a's uid without its groups opening the base image: %q, want Permission denied", msg)
	}

	// A linked clone of a template: its base is shared through a group.
	s.action("uidb", "stop", nil)
	s.wait(s.c.MakeTemplate(ctx, "uidb", "uidt", time.Minute))
	s.wait(s.c.Deploy(ctx, "uidt", v1.DeployArgs{Name: "uidc", Linked: true, Start: true}, time.Minute))
	s.waitReady("uidc", 0)
	c := s.waitState("uidc", 10*time.Second, v1.StateRunning)
	groupsC := qemuCreds(t, c)
	tbase := filepath.Join(s.dataDir, "pools", "default", "templates", "uidt", "disk0.qcow2")
	if fi, err := os.Stat(tbase); err != nil || !slicesContain(groupsC, strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Gid))) {
		t.Errorf("template base %s: %v; the clone's qemu groups %v must hold its group", tbase, err, groupsC)
	}
	if msg := openAs(t, a.Status.UID, groupsA, tbase); !strings.Contains(msg, "Permission denied") {
		t.Errorf("vm a (no clone of the template) opening its base: %q, want Permission denied", msg)
	}

	// kill -9 of hangar serve: the VM survives and is re-adopted with the
	// same uid.
	s.kill9()
	s.start()
	a2 := s.waitState("uida", 30*time.Second, v1.StateRunning)
	if a2.Status.PID != a.Status.PID || a2.Status.UID != a.Status.UID {
		t.Fatalf("after re-adoption: pid %d uid %d, want pid %d uid %d", a2.Status.PID, a2.Status.UID, a.Status.PID, a.Status.UID)
	}
	qemuCreds(t, a2)
	s.action("uida", "reboot", nil)

	// Delete releases the uid: the next VM to start gets it again (ids
	// are handed out lowest first).
	s.wait(s.c.DeleteVM(ctx, "uida", true, time.Minute))
	s.createGuest("uidd", nil)
	d := s.waitState("uidd", time.Minute, v1.StateRunning)
	if d.Status.UID != a.Status.UID {
		t.Errorf("the vm started after uida's delete got uid %d, want uida's released %d", d.Status.UID, a.Status.UID)
	}
	qemuCreds(t, d)
}

func slicesContain(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
