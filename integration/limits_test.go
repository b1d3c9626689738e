package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	v1 "hangar/api/v1"
)

// cgroupFile is a file of the test host's cgroup of vm: the v1 controller's
// file, or on v2 the unified one. "" when neither exists.
func cgroupFile(vm, controller, v1file, v2file string) string {
	p := filepath.Join("/sys/fs/cgroup", controller, "hangar-testhost", vm, v1file)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	p = filepath.Join("/sys/fs/cgroup", "hangar-testhost.slice", vm, v2file)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return ""
}

func readCgroup(t *testing.T, vm, controller, v1file, v2file string) string {
	t.Helper()
	p := cgroupFile(vm, controller, v1file, v2file)
	if p == "" {
		t.Fatalf("vm %s: no cgroup file %s/%s", vm, v1file, v2file)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// cpuNanos is the CPU time the VM's cgroup counted.
func cpuNanos(t *testing.T, vm string) uint64 {
	t.Helper()
	if p := cgroupFile(vm, "cpuacct", "cpuacct.usage", "cpu.stat"); strings.HasSuffix(p, "cpuacct.usage") {
		n, err := strconv.ParseUint(readCgroup(t, vm, "cpuacct", "cpuacct.usage", ""), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, l := range strings.Split(readCgroup(t, vm, "", "", "cpu.stat"), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "usage_usec" {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n * 1000
		}
	}
	t.Fatal("no usage_usec in cpu.stat")
	return 0
}

// cpuQuota is the VM's cgroup CPU quota in µs per 100 ms period (-1: none).
func cpuQuota(t *testing.T, vm string) int {
	t.Helper()
	var s string
	if strings.HasSuffix(cgroupFile(vm, "cpu", "cpu.cfs_quota_us", "cpu.max"), "cpu.cfs_quota_us") {
		s = readCgroup(t, vm, "cpu", "cpu.cfs_quota_us", "")
	} else {
		s = strings.Fields(readCgroup(t, vm, "", "", "cpu.max"))[0]
		if s == "max" {
			return -1
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func memoryLimit(t *testing.T, vm string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(readCgroup(t, vm, "memory", "memory.limit_in_bytes", "memory.max"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func inCgroup(t *testing.T, vm string, pid int) bool {
	t.Helper()
	for _, l := range strings.Fields(readCgroup(t, vm, "memory", "cgroup.procs", "cgroup.procs")) {
		if l == strconv.Itoa(pid) {
			return true
		}
	}
	return false
}

// TestLimits runs one capped guest through the life of its cgroup: the CPU
// cap holds while the guest boots (TCG keeps QEMU busy then), the memory
// limit is set, a live change lands without a restart, the cgroup is found
// again after kill -9 of hangar serve and removed when the VM stops.
func TestLimits(t *testing.T) {
	s := newServer(t)
	const name = "capped"
	s.createGuest(name, func(sp *v1.VMSpec) {
		sp.Resources = &v1.Resources{CPULimit: 0.5, MemoryLimitMiB: 1024}
	})
	v := s.waitState(name, time.Minute, v1.StateRunning)
	if cgroupFile(name, "memory", "cgroup.procs", "cgroup.procs") == "" {
		t.Skip("no cgroup for the vm: cgroups unavailable on this machine")
	}
	if !inCgroup(t, name, v.Status.PID) {
		t.Fatalf("qemu %d is not in its cgroup", v.Status.PID)
	}
	if q := cpuQuota(t, name); q != 50000 {
		t.Errorf("cpu quota %d µs per 100 ms, want 50000", q)
	}
	if got := memoryLimit(t, name); got != 1024<<20 {
		t.Errorf("memory limit %d, want %d", got, 1024<<20)
	}
	// and reported: /metrics from the cgroup
	if got, ok := sample(scrape(t, s), "hangar_vm_cgroup_memory_limit_bytes", map[string]string{"vm": name}); !ok || got != 1024<<20 {
		t.Errorf("hangar_vm_cgroup_memory_limit_bytes = %v (%v), want %d", got, ok, 1024<<20)
	}

	// The guest boots under TCG: QEMU would take a whole CPU; the cap
	// holds it near half of one. Only the upper bound is a property of
	// the cap; a loaded machine may give less.
	c0, t0 := cpuNanos(t, name), time.Now()
	time.Sleep(4 * time.Second)
	rate := float64(cpuNanos(t, name)-c0) / float64(time.Since(t0).Nanoseconds())
	t.Logf("cpu cap 0.5: measured %.3f CPUs while booting", rate)
	if rate > 0.65 {
		t.Errorf("capped at 0.5 CPU, the vm used %.3f CPUs", rate)
	}
	s.waitReady(name, 0)

	// A live change: no restart, the same QEMU, a new quota.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	limit, shares := 0.25, 512
	if _, err := s.c.PatchVM(ctx, name, v1.VMPatch{Resources: &v1.ResourcesPatch{CPULimit: &limit, CPUShares: &shares}}); err != nil {
		t.Fatalf("live limits change: %v", err)
	}
	if q := cpuQuota(t, name); q != 25000 {
		t.Errorf("cpu quota %d after the live change, want 25000", q)
	}
	if v2 := s.waitState(name, 10*time.Second, v1.StateRunning); v2.Status.PID != v.Status.PID {
		t.Fatalf("pid %d after a live change, want %d: the vm restarted", v2.Status.PID, v.Status.PID)
	}
	// Disk throttling, live: QEMU takes the limit (the PATCH waits for
	// the host's block_set_io_throttle) and lifts it again.
	disk := v.Spec.Disks[0].Name
	for _, bps := range []int64{2 << 20, 0} {
		vv, err := s.c.PatchVM(ctx, name, v1.VMPatch{Disks: map[string]v1.DiskPatch{disk: {BPS: &bps}}})
		if err != nil {
			t.Fatalf("live disk limit %d B/s: %v", bps, err)
		}
		if got := vv.Spec.Disks[0].Limits; (bps == 0) != (got == nil) || (got != nil && got.BPS != bps) {
			t.Errorf("disk limits %+v after setting bps %d", got, bps)
		}
	}
	// A bad value is refused naming the field.
	bad := 0.001
	if _, err := s.c.PatchVM(ctx, name, v1.VMPatch{Resources: &v1.ResourcesPatch{CPULimit: &bad}}); err == nil || !strings.Contains(err.Error(), "resources.cpuLimit") {
		t.Errorf("cpuLimit 0.001: got %v, want an error naming resources.cpuLimit", err)
	}

	// Re-adoption: kill -9 of hangar serve; the restarted agent finds the
	// cgroup and keeps QEMU and its limits in it.
	s.kill9()
	s.start()
	v = s.waitState(name, 30*time.Second, v1.StateRunning)
	if !inCgroup(t, name, v.Status.PID) {
		t.Errorf("qemu %d not in its cgroup after re-adoption", v.Status.PID)
	}
	if q := cpuQuota(t, name); q != 25000 {
		t.Errorf("cpu quota %d after re-adoption, want 25000", q)
	}

	// Stop: the cgroup goes with the QEMU.
	s.action(name, "stop", v1.StopArgs{Force: true})
	s.waitState(name, time.Minute, v1.StateStopped)
	if p := cgroupFile(name, "memory", "cgroup.procs", "cgroup.procs"); p != "" {
		t.Errorf("cgroup %s still there after stop", filepath.Dir(p))
	}
}

// TestAdmissionReserve: with all but 192 MiB of the host's memory kept for
// the host itself, growing a placed (stopped) VM past that and starting a
// VM bigger than that are refused with a 412 naming memory and the
// numbers: what is asked, what is allocatable, the reserve.
func TestAdmissionReserve(t *testing.T) {
	s := newServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hosts, err := s.c.Hosts(ctx)
	if err != nil || len(hosts) != 1 {
		t.Fatalf("hosts: %v %v", hosts, err)
	}
	small := v1.VMSpec{Name: "small", CPUs: 1, MemoryMiB: 128, Disks: []v1.Disk{{SizeMiB: 16}}}
	op, err := s.c.CreateVM(ctx, small, false, time.Minute)
	if err == nil {
		_, err = s.c.Wait(ctx, op, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	ps, err := s.c.PoolSettings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ps.ReserveMemoryMiB = hosts[0].MemoryMiB - 192
	if _, err := s.c.SetPoolSettings(ctx, ps); err != nil {
		t.Fatal(err)
	}
	refused := func(what string, err error, want ...string) {
		t.Helper()
		var e *v1.Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: got %v, want a refusal", what, err)
		}
		t.Logf("%s refused: %v", what, e)
		if e.Code != v1.CodeFailedPrecondition || e.Field != "memoryMiB" {
			t.Errorf("%s: code %s field %q, want failed_precondition on memoryMiB", what, e.Code, e.Field)
		}
		for _, w := range want {
			if !strings.Contains(e.Message, w) {
				t.Errorf("%s: %q does not say %q", what, e.Message, w)
			}
		}
	}
	reserve := fmt.Sprintf("%d reserved for the host", ps.ReserveMemoryMiB)
	mem := 256
	_, err = s.c.PatchVM(ctx, "small", v1.VMPatch{MemoryMiB: &mem})
	refused("growing small to 256 MiB", err, "asks for 256 MiB", "free of 192 MiB allocatable", reserve)
	mem = 160
	if _, err := s.c.PatchVM(ctx, "small", v1.VMPatch{MemoryMiB: &mem}); err != nil {
		t.Errorf("growing small to 160 MiB of 192 allocatable: %v", err)
	}

	spec := v1.VMSpec{Name: "toobig", CPUs: 1, MemoryMiB: 256, Disks: []v1.Disk{{Image: guestImage}}}
	op, err = s.c.CreateVM(ctx, spec, true, time.Minute)
	if err == nil {
		op, err = s.c.Wait(ctx, op, nil)
		if err == nil && op.Error != nil {
			err = op.Error
		}
	}
	refused("starting a 256 MiB vm", err, "needs 1 CPUs and 256 MiB", "192 MiB allocatable", reserve)
}

// pinProcess pins every thread of pid to host CPU cpu.
func pinProcess(t *testing.T, pid, cpu int) {
	t.Helper()
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tasks {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			t.Logf("pin thread %d: %v", tid, err)
		}
	}
}

// TestCPUWeights: two booting guests pinned to one host CPU, weights 1:3,
// split its time about 1:3 (their cgroups' CPU time over a window).
func TestCPUWeights(t *testing.T) {
	s := newServer(t)
	s.createGuest("light", func(sp *v1.VMSpec) { sp.Resources = &v1.Resources{CPUShares: 256} })
	s.createGuest("heavy", func(sp *v1.VMSpec) { sp.Resources = &v1.Resources{CPUShares: 768} })
	if cgroupFile("light", "memory", "cgroup.procs", "cgroup.procs") == "" {
		t.Skip("no cgroup for the vm: cgroups unavailable on this machine")
	}
	for _, n := range []string{"light", "heavy"} {
		v := s.waitState(n, time.Minute, v1.StateRunning)
		pinProcess(t, v.Status.PID, 0)
	}
	l0, h0 := cpuNanos(t, "light"), cpuNanos(t, "heavy")
	time.Sleep(5 * time.Second)
	l, h := cpuNanos(t, "light")-l0, cpuNanos(t, "heavy")-h0
	if l == 0 {
		t.Fatalf("the light vm got no CPU time (heavy %d ns)", h)
	}
	ratio := float64(h) / float64(l)
	t.Logf("weights 1:3 under contention: heavy/light = %.2f (%.2fs / %.2fs)", ratio, float64(h)/1e9, float64(l)/1e9)
	if ratio < 1.8 || ratio > 5 {
		t.Errorf("weights 1:3 split the CPU %.2f:1, want about 3:1", ratio)
	}
}

// TestDiskLimit: a guest booting from a disk limited to 512 KiB/s reads it
// at no more than about that (QEMU's own counters, /metrics); a live
// change lifts the limit on the same QEMU.
func TestDiskLimit(t *testing.T) {
	s := newServer(t)
	const name, limit = "slowdisk", 512 << 10
	s.createGuest(name, func(sp *v1.VMSpec) { sp.Disks[0].Limits = &v1.DiskLimits{BPS: limit} })
	v := s.waitState(name, time.Minute, v1.StateRunning)
	read := func() float64 {
		n, ok := sample(scrape(t, s), "hangar_vm_disk_read_bytes_total", map[string]string{"vm": name})
		if !ok {
			t.Fatal("no hangar_vm_disk_read_bytes_total for the vm")
		}
		return n
	}
	r0, t0 := read(), time.Now()
	time.Sleep(6 * time.Second)
	rate := (read() - r0) / time.Since(t0).Seconds()
	t.Logf("disk limit %d B/s: the booting guest read %.0f B/s (%.2f of the limit)", limit, rate, rate/limit)
	// QEMU's throttle lets a burst of one second's worth through.
	if rate > 1.5*limit {
		t.Errorf("limited to %d B/s, the guest read %.0f B/s", limit, rate)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	zero := int64(0)
	if _, err := s.c.PatchVM(ctx, name, v1.VMPatch{Disks: map[string]v1.DiskPatch{v.Spec.Disks[0].Name: {BPS: &zero}}}); err != nil {
		t.Fatalf("lift the disk limit: %v", err)
	}
	r0, t0 = read(), time.Now()
	s.waitReady(name, 0)
	t.Logf("after the live lift: %.0f B/s until ready", (read()-r0)/time.Since(t0).Seconds())
	if v2 := s.waitState(name, 10*time.Second, v1.StateRunning); v2.Status.PID != v.Status.PID {
		t.Fatalf("pid %d after a live change, want %d", v2.Status.PID, v.Status.PID)
	}
}

// guestDD runs dd in the guest (once: the console retypes a command that
// has not answered yet) and returns the whole blocks of bs bytes it read
// and the seconds it took by the guest's clock (/proc/uptime; this
// busybox's dd does not print its time).
func (s *server) guestDD(name, tag string, bs int, args string) (int64, float64) {
	s.t.Helper()
	up := "$(cut -d' ' -f1 /proc/uptime)"
	cmd := fmt.Sprintf("[ -e /tmp/%s ] || { touch /tmp/%s; a=%s; r=$(dd bs=%d %s 2>&1 | head -1); echo %s $a $r %s END; }", tag, tag, up, bs, args, tag, up)
	m := s.consoleExpect(name, cmd, regexp.MustCompile(tag+` ([\d.]+) (\d+)\+\d+ records in ([\d.]+) END`))
	a, _ := strconv.ParseFloat(m[1], 64)
	n, _ := strconv.ParseInt(m[2], 10, 64)
	b, _ := strconv.ParseFloat(m[3], 64)
	if n == 0 || b <= a {
		s.t.Fatalf("guest dd %s: %q", args, m[0])
	}
	return n, b - a
}

// TestDiskLimitGuest: the guest's own dd, reading its disk with O_DIRECT
// (past its page cache), runs at about the disk's bytes/s limit; a live
// change to an IOPS limit holds 4 KiB reads at about that many per second
// on the same QEMU, and lifting it lets them run free.
func TestDiskLimitGuest(t *testing.T) {
	s := newServer(t)
	const name, bps, iops = "dddisk", 2 << 20, 100
	s.createGuest(name, func(sp *v1.VMSpec) { sp.Disks[0].Limits = &v1.DiskLimits{BPS: bps} })
	v := s.waitState(name, time.Minute, v1.StateRunning)
	s.waitReady(name, 0)

	n, sec := s.guestDD(name, "DD1", 64<<10, "if=/dev/vda of=/dev/null count=96 iflag=direct")
	n <<= 16
	rate := float64(n) / sec
	t.Logf("disk limit %d B/s: the guest's dd read %d bytes at %.0f B/s (%.2f of the limit)", bps, n, rate, rate/bps)
	if rate > 1.25*bps {
		t.Errorf("limited to %d B/s, the guest's dd read at %.0f B/s", bps, rate)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	disk := v.Spec.Disks[0].Name
	zero, ops := int64(0), int64(iops)
	if _, err := s.c.PatchVM(ctx, name, v1.VMPatch{Disks: map[string]v1.DiskPatch{disk: {BPS: &zero, IOPS: &ops}}}); err != nil {
		t.Fatalf("live disk limit %d iops: %v", iops, err)
	}
	n, sec = s.guestDD(name, "DD2", 4096, "if=/dev/vda of=/dev/null count=400 skip=4096 iflag=direct")
	rate = float64(n) / sec
	t.Logf("live change to %d iops: the guest's dd read %d blocks of 4 KiB at %.0f per second (%.2f of the limit)", iops, n, rate, rate/iops)
	if rate > 1.25*iops {
		t.Errorf("limited live to %d iops, the guest's dd read %.0f per second", iops, rate)
	}
	if v2 := s.waitState(name, 10*time.Second, v1.StateRunning); v2.Status.PID != v.Status.PID {
		t.Fatalf("pid %d after a live change, want %d: the vm restarted", v2.Status.PID, v.Status.PID)
	}

	if _, err := s.c.PatchVM(ctx, name, v1.VMPatch{Disks: map[string]v1.DiskPatch{disk: {IOPS: &zero}}}); err != nil {
		t.Fatalf("lift the disk limit: %v", err)
	}
	n, sec = s.guestDD(name, "DD3", 4096, "if=/dev/vda of=/dev/null count=400 skip=8192 iflag=direct")
	t.Logf("lifted: the guest's dd read %d blocks of 4 KiB at %.0f per second", n, float64(n)/sec)
}

// vcpuAffinity maps each vCPU thread of QEMU pid (named "CPU n/TCG" or
// "CPU n/KVM": -name debug-threads=on) to its Cpus_allowed_list.
func vcpuAffinity(t *testing.T, pid int) map[string]string {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range tasks {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/comm", pid, e.Name()))
		name := strings.TrimSpace(string(comm))
		if !strings.HasPrefix(name, "CPU ") {
			continue
		}
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, e.Name()))
		for _, l := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
				n, _, _ := strings.Cut(strings.TrimPrefix(name, "CPU "), "/")
				out[n] = strings.TrimSpace(v)
			}
		}
	}
	return out
}

// TestCPUPinning: a 2-vCPU guest pinned "1;0" has vCPU 0's thread on host
// CPU 1 and vCPU 1's on CPU 0 (the threads' own Cpus_allowed_list); a
// live change moves both to CPU 0; after kill -9 of hangar serve and the
// threads moved away meanwhile, re-adoption pins them again; a CPU the
// host lacks is refused naming the field.
func TestCPUPinning(t *testing.T) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil || all.Count() < 2 {
		t.Skipf("needs 2 host CPUs (%d, %v)", all.Count(), err)
	}
	s := newServer(t)
	const name = "pinned"
	s.createGuest(name, func(sp *v1.VMSpec) {
		sp.CPUs = 2
		sp.Resources = &v1.Resources{CPUPinning: "1;0"}
	})
	v := s.waitState(name, time.Minute, v1.StateRunning)
	check := func(when string, want map[string]string) {
		t.Helper()
		if got := vcpuAffinity(t, v.Status.PID); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: vcpu threads on %v, want %v", when, got, want)
		}
	}
	// await: the affinity may reach want a moment after the answer (a
	// re-adoption, the re-apply after a refusal).
	await := func(when string, want map[string]string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for fmt.Sprint(vcpuAffinity(t, v.Status.PID)) != fmt.Sprint(want) && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		check(when, want)
	}
	check("at start", map[string]string{"0": "1", "1": "0"})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pin := "0"
	if _, err := s.c.PatchVM(ctx, name, v1.VMPatch{Resources: &v1.ResourcesPatch{CPUPinning: &pin}}); err != nil {
		t.Fatalf("live pinning: %v", err)
	}
	check("after the live change", map[string]string{"0": "0", "1": "0"})

	s.kill9()
	pinProcess(t, v.Status.PID, 1) // moved away while no agent watches
	s.start()
	if v2 := s.waitState(name, 30*time.Second, v1.StateRunning); v2.Status.PID != v.Status.PID {
		t.Fatalf("pid %d after re-adoption, want %d", v2.Status.PID, v.Status.PID)
	}
	await("after re-adoption", map[string]string{"0": "0", "1": "0"})

	pin = "4095"
	_, err := s.c.PatchVM(ctx, name, v1.VMPatch{Resources: &v1.ResourcesPatch{CPUPinning: &pin}})
	var e *v1.Error
	if !errors.As(err, &e) || e.Field != "resources.cpuPinning" || !strings.Contains(e.Message, "no CPU 4095") {
		t.Errorf("pinning to CPU 4095: %v, want a refusal on resources.cpuPinning naming the CPU", err)
	}
	t.Logf("refused: %v", err)
	if vv, err := s.c.VM(ctx, name); err != nil || vv.Spec.Resources == nil || vv.Spec.Resources.CPUPinning != "0" {
		t.Errorf("after the refusal: %+v %v, want the pinning kept at 0", vv.Spec.Resources, err)
	}

	// A CPU the host has but its agent may not use (hangar serve confined
	// to CPU 0 after it reported 2): the API admits the pinning, the agent
	// refuses it, and the spec is rolled back with the limits beside it.
	pinProcess(t, s.cmd.Process.Pid, 0)
	pin, shares := "1", 512
	_, err = s.c.PatchVM(ctx, name, v1.VMPatch{Resources: &v1.ResourcesPatch{CPUPinning: &pin, CPUShares: &shares}})
	if !errors.As(err, &e) || e.Field != "resources.cpuPinning" || !strings.Contains(e.Message, "as they were") {
		t.Errorf("pinning to a CPU the agent may not use: %v, want the agent's refusal on resources.cpuPinning, rolled back", err)
	}
	t.Logf("refused by the agent: %v", err)
	if vv, err := s.c.VM(ctx, name); err != nil || vv.Spec.Resources == nil || *vv.Spec.Resources != (v1.Resources{CPUPinning: "0"}) {
		t.Errorf("after the agent's refusal: %+v %v, want the resources as they were (pinning 0)", vv.Spec.Resources, err)
	}
	await("after the agent's refusal", map[string]string{"0": "0", "1": "0"})

	// A balloon target on a QEMU started without a balloon device: QEMU
	// has none to inflate, the agent refuses, the spec is rolled back.
	target := 128
	_, err = s.c.PatchVM(ctx, name, v1.VMPatch{Resources: &v1.ResourcesPatch{BalloonMiB: &target}})
	if !errors.As(err, &e) || e.Field != "resources.balloonMiB" || !strings.Contains(e.Message, "as they were") {
		t.Errorf("a balloon target without a balloon device: %v, want the agent's refusal on resources.balloonMiB, rolled back", err)
	}
	t.Logf("refused by the agent: %v", err)
	if vv, err := s.c.VM(ctx, name); err != nil || vv.Spec.Resources == nil || *vv.Spec.Resources != (v1.Resources{CPUPinning: "0"}) {
		t.Errorf("after the balloon refusal: %+v %v, want the resources as they were", vv.Spec.Resources, err)
	}
}
