package agent

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	v1 "hangar/api/v1"
	"hangar/internal/qemu"
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
