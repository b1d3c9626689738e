package agent

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/vm"
)

// checkHugepages refuses to start a VM with resources.hugepages that this
// host cannot back (no KVM, too few free huge pages), naming the field.
func (a *Agent) checkHugepages(spec v1.VMSpec) error {
	if spec.Resources == nil || !spec.Resources.Hugepages {
		return nil
	}
	var free, pageKiB int64
	if a.cfg.Caps.Accel == "kvm" {
		b, err := os.ReadFile("/proc/meminfo")
		if err != nil {
			return fmt.Errorf("huge pages of %s: %w", spec.Name, err)
		}
		if free, pageKiB, err = parseHugepages(b); err != nil {
			return fmt.Errorf("huge pages of %s: %w", spec.Name, err)
		}
		if pageKiB == 0 {
			return errdefs.Field("resources.hugepages", errdefs.Precondition("host %s has no huge pages (no Hugepagesize in /proc/meminfo)", a.cfg.Host))
		}
	}
	if p := vm.HugepagesProblem(spec, a.cfg.Host, a.cfg.Caps.Accel, free, pageKiB); p != "" {
		return errdefs.Field("resources.hugepages", errdefs.Precondition("%s", p))
	}
	return nil
}

// parseHugepages reads HugePages_Free and Hugepagesize (KiB) from
// /proc/meminfo; a kernel without huge pages has neither (0, 0).
func parseHugepages(b []byte) (free, pageKiB int64, err error) {
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "HugePages_Free" && k != "Hugepagesize") {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 || (k == "Hugepagesize" && (len(f) != 2 || f[1] != "kB")) || (k == "HugePages_Free" && len(f) != 1) {
			return 0, 0, fmt.Errorf("/proc/meminfo: %s %q", k, strings.TrimSpace(v))
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			return 0, 0, fmt.Errorf("/proc/meminfo: %s %q", k, f[0])
		}
		if k == "Hugepagesize" {
			pageKiB = n
		} else {
			free = n
		}
	}
	return free, pageKiB, nil
}
