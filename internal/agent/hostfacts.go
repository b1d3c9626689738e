package agent

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/qemu"
	"hangar/internal/storage"
)

// HostFacts reads what this host offers.
func HostFacts(name string, caps qemu.Capabilities) (v1.Host, error) {
	h := v1.Host{Name: name, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), Accelerator: caps.Accel, QEMUVersion: caps.Version}
	mem, err := memTotalMiB()
	if err != nil {
		return h, err
	}
	h.MemoryMiB = mem
	h.CPUModel = cpuModel()
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		h.Kernel = charsToString(u.Release[:])
	}
	return h, nil
}

func memTotalMiB() (int, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("read host memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				return 0, fmt.Errorf("parse MemTotal %q: %w", rest, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("read host memory: no MemTotal in /proc/meminfo")
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func charsToString(ca []int8) string {
	b := make([]byte, 0, len(ca))
	for _, c := range ca {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Hangar runs on.
const clockTicks = 100

// processStart returns when process pid started, from its start time in
// clock ticks after boot (/proc/<pid>/stat field 22) and the boot time
// (/proc/stat btime).
func processStart(pid int) (time.Time, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return time.Time{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return time.Time{}, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return time.Time{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields)+2)
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64) // field 22
	if err != nil {
		return time.Time{}, fmt.Errorf("/proc/%d/stat: start time %q: %w", pid, fields[19], err)
	}
	boot, err := bootTime()
	if err != nil {
		return time.Time{}, err
	}
	return boot.Add(time.Duration(ticks) * time.Second / clockTicks).UTC(), nil
}

func bootTime() (time.Time, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "btime "); ok {
			sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("/proc/stat btime %q: %w", v, err)
			}
			return time.Unix(sec, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("/proc/stat: no btime")
}

// storageUsage is each pool's file system as this host sees it (statfs of
// the pool's directory); a pool whose directory cannot be read is left out.
func storageUsage(pools []*storage.Pool) []v1.StorageUsage {
	out := make([]v1.StorageUsage, 0, len(pools))
	for _, p := range pools {
		var fs syscall.Statfs_t
		if err := syscall.Statfs(p.Path, &fs); err != nil {
			continue
		}
		bs := int64(fs.Bsize)
		out = append(out, v1.StorageUsage{Pool: p.Name, Type: p.Type, TotalBytes: int64(fs.Blocks) * bs,
			UsedBytes: int64(fs.Blocks-fs.Bfree) * bs, FreeBytes: int64(fs.Bavail) * bs})
	}
	return out
}
