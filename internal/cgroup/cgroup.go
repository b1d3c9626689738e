// Package cgroup keeps one cgroup per VM under a per-host hangar hierarchy
// and writes the VM's CPU and memory limits into it. It works on the
// unified (v2) layout, where a VM's group is <mount>/<root>.slice/<vm>, and
// on the legacy and hybrid (v1) layouts, where it is <root>/<vm> under each
// controller's mount. The root's name carries the host's name, so agents of
// several hosts sharing one machine's cgroup file system (the pool tests)
// never touch each other's groups.
package cgroup

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ErrUnavailable: this host (or the namespace the agent runs in) has no
// cgroup file system the agent can use.
var ErrUnavailable = errors.New("cgroups unavailable")

// Period is the CPU quota period in microseconds.
const Period = 100000

// DefaultShares is a VM's CPU weight when its spec sets none (the v1
// default; v2 weights are converted from shares).
const DefaultShares = 1024

// Limits are what a VM's cgroup enforces; a zero field sets nothing.
type Limits struct {
	// CPUShares is the relative weight under contention (v1 shares,
	// 2..262144; converted to a v2 weight on v2).
	CPUShares uint64
	// CPUs caps the group's CPU time at this many CPUs (quota/period).
	CPUs float64
	// MemoryBytes is the hard memory limit of the group.
	MemoryBytes int64
}

// Usage is what a VM's cgroup has counted.
type Usage struct {
	CPUNanos    uint64 // CPU time of all the group's processes
	MemoryBytes uint64 // memory in use now
	MemoryLimit uint64 // the limit in force (0: none)
}

// Manager creates and finds the VMs' groups of one host.
type Manager struct {
	mode cgroups.CGMode
	root string // hierarchy name, e.g. "hangar-host1"
}

var unsafe = regexp.MustCompile(`[^a-zA-Z0-9_.-]`)

// New returns the manager of host's groups. It returns ErrUnavailable (and
// a nil Manager) when no cgroup hierarchy can be written here; callers
// then run VMs without limits and say so.
func New(host string) (*Manager, error) {
	mode := cgroups.Mode()
	if mode == cgroups.Unavailable {
		return nil, fmt.Errorf("%w: no cgroup file system at /sys/fs/cgroup", ErrUnavailable)
	}
	m := &Manager{mode: mode, root: "hangar-" + unsafe.ReplaceAllString(host, "_")}
	if err := m.probe(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return m, nil
}

// probe creates the host's root group (kept across VMs) to check that the
// agent may write the hierarchy.
func (m *Manager) probe() error {
	if m.mode == cgroups.Unified {
		if _, err := cgroup2.NewManager("/sys/fs/cgroup", "/"+m.root+".slice", &cgroup2.Resources{}); err != nil {
			return fmt.Errorf("create %s.slice: %w", m.root, err)
		}
		return nil
	}
	if _, err := cgroup1.New(cgroup1.StaticPath("/"+m.root), &specs.LinuxResources{}, m.v1Opts()...); err != nil {
		return fmt.Errorf("create %s: %w", m.root, err)
	}
	return nil
}

// Mode names the layout in use: "v2", "v1" or "hybrid".
func (m *Manager) Mode() string {
	switch m.mode {
	case cgroups.Unified:
		return "v2"
	case cgroups.Hybrid:
		return "hybrid"
	}
	return "v1"
}

// Path is the VM's group relative to the hierarchy's mount (v2) or to
// each controller's mount (v1).
func (m *Manager) Path(vm string) string {
	if m.mode == cgroups.Unified {
		return "/" + m.root + ".slice/" + vm
	}
	return "/" + m.root + "/" + vm
}

// v1Opts skips controllers a host lacks instead of failing on them.
func (m *Manager) v1Opts() []cgroup1.InitOpts {
	return []cgroup1.InitOpts{cgroup1.WithHierarchy(v1Subsystems)}
}

// v1Subsystems are the v1 controllers hangar uses, those mounted here.
func v1Subsystems() ([]cgroup1.Subsystem, error) {
	all, err := cgroup1.Default()
	if err != nil {
		return nil, err
	}
	var out []cgroup1.Subsystem
	for _, s := range all {
		switch s.Name() {
		case cgroup1.Cpu, cgroup1.Cpuacct, cgroup1.Memory, cgroup1.Pids:
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no cpu, cpuacct or memory controller mounted")
	}
	return out, nil
}

// Validate checks limits before anything is written.
func (l Limits) Validate() error {
	if l.CPUShares != 0 && (l.CPUShares < 2 || l.CPUShares > 262144) {
		return fmt.Errorf("cpu shares %d: must be between 2 and 262144", l.CPUShares)
	}
	if l.CPUs < 0 || math.IsNaN(l.CPUs) || math.IsInf(l.CPUs, 0) || (l.CPUs > 0 && l.CPUs*Period < 1000) {
		return fmt.Errorf("cpu limit %g: must be at least 0.01 CPU", l.CPUs)
	}
	if l.MemoryBytes < 0 {
		return fmt.Errorf("memory limit %d: must not be negative", l.MemoryBytes)
	}
	return nil
}

// resources are l as the OCI resources both layouts take. Unset fields go
// back to their unlimited defaults so an update can lift a limit.
func (l Limits) resources() *specs.LinuxResources {
	shares := uint64(DefaultShares)
	if l.CPUShares > 0 {
		shares = l.CPUShares
	}
	quota, period := int64(-1), uint64(Period)
	if l.CPUs > 0 {
		quota = int64(math.Round(l.CPUs * Period))
	}
	mem := int64(-1)
	if l.MemoryBytes > 0 {
		mem = l.MemoryBytes
	}
	return &specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Shares: &shares, Quota: &quota, Period: &period},
		Memory: &specs.LinuxMemory{Limit: &mem},
	}
}

// v2Resources converts to v2; ToResources leaves an unlimited quota and
// memory unset, which would keep an earlier limit, so write "max".
func v2Resources(l Limits) *cgroup2.Resources {
	r := cgroup2.ToResources(l.resources())
	if l.CPUs <= 0 {
		period := uint64(Period)
		r.CPU.Max = cgroup2.NewCPUMax(nil, &period)
	}
	if l.MemoryBytes <= 0 {
		max := int64(math.MaxInt64)
		r.Memory = &cgroup2.Memory{Max: &max}
	}
	return r
}

// Apply puts pid into the VM's group, creating it or finding it again (an
// agent restart), and writes l.
func (m *Manager) Apply(vm string, pid int, l Limits) error {
	if err := l.Validate(); err != nil {
		return err
	}
	if m.mode == cgroups.Unified {
		g, err := cgroup2.NewManager("/sys/fs/cgroup", m.Path(vm), v2Resources(l))
		if err != nil {
			return fmt.Errorf("create cgroup %s: %w", m.Path(vm), err)
		}
		if err := g.AddProc(uint64(pid)); err != nil {
			return fmt.Errorf("move qemu %d into cgroup %s: %w", pid, m.Path(vm), err)
		}
		return nil
	}
	g, err := cgroup1.New(cgroup1.StaticPath(m.Path(vm)), l.resources(), m.v1Opts()...)
	if err != nil {
		return fmt.Errorf("create cgroup %s: %w", m.Path(vm), err)
	}
	// New writes resources only on creation; a group found again
	// (re-adoption) gets them written here.
	if err := g.Update(l.resources()); err != nil {
		return fmt.Errorf("write limits of cgroup %s: %w", m.Path(vm), err)
	}
	if err := g.Add(cgroup1.Process{Pid: pid}); err != nil {
		return fmt.Errorf("move qemu %d into cgroup %s: %w", pid, m.Path(vm), err)
	}
	return nil
}

// Update writes l into the VM's existing group (a live change).
func (m *Manager) Update(vm string, l Limits) error {
	if err := l.Validate(); err != nil {
		return err
	}
	if m.mode == cgroups.Unified {
		g, err := cgroup2.Load(m.Path(vm))
		if err != nil {
			return fmt.Errorf("load cgroup %s: %w", m.Path(vm), err)
		}
		return g.Update(v2Resources(l))
	}
	g, err := cgroup1.Load(cgroup1.StaticPath(m.Path(vm)), m.v1Opts()...)
	if err != nil {
		return fmt.Errorf("load cgroup %s: %w", m.Path(vm), err)
	}
	return g.Update(l.resources())
}

// Has tells whether pid is in the VM's group.
func (m *Manager) Has(vm string, pid int) (bool, error) {
	if m.mode == cgroups.Unified {
		g, err := cgroup2.Load(m.Path(vm))
		if err != nil {
			return false, err
		}
		procs, err := g.Procs(false)
		if err != nil {
			return false, err
		}
		for _, p := range procs {
			if int(p) == pid {
				return true, nil
			}
		}
		return false, nil
	}
	g, err := cgroup1.Load(cgroup1.StaticPath(m.Path(vm)), m.v1Opts()...)
	if err != nil {
		return false, err
	}
	procs, err := g.Processes(cgroup1.Memory, false)
	if err != nil {
		return false, err
	}
	for _, p := range procs {
		if p.Pid == pid {
			return true, nil
		}
	}
	return false, nil
}

// Usage reads the VM's group's counters.
func (m *Manager) Usage(vm string) (Usage, error) {
	if m.mode == cgroups.Unified {
		g, err := cgroup2.Load(m.Path(vm))
		if err != nil {
			return Usage{}, fmt.Errorf("load cgroup %s: %w", m.Path(vm), err)
		}
		st, err := g.Stat()
		if err != nil {
			return Usage{}, fmt.Errorf("read cgroup %s: %w", m.Path(vm), err)
		}
		var u Usage
		if st.CPU != nil {
			u.CPUNanos = st.CPU.UsageUsec * 1000
		}
		if st.Memory != nil {
			u.MemoryBytes = st.Memory.Usage
			if st.Memory.UsageLimit != math.MaxUint64 {
				u.MemoryLimit = st.Memory.UsageLimit
			}
		}
		return u, nil
	}
	g, err := cgroup1.Load(cgroup1.StaticPath(m.Path(vm)), m.v1Opts()...)
	if err != nil {
		return Usage{}, fmt.Errorf("load cgroup %s: %w", m.Path(vm), err)
	}
	st, err := g.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return Usage{}, fmt.Errorf("read cgroup %s: %w", m.Path(vm), err)
	}
	var u Usage
	if st.CPU != nil && st.CPU.Usage != nil {
		u.CPUNanos = st.CPU.Usage.Total
	}
	if st.Memory != nil && st.Memory.Usage != nil {
		u.MemoryBytes = st.Memory.Usage.Usage
		// v1 reports "no limit" as a huge page-rounded number.
		if lim := st.Memory.Usage.Limit; lim < 1<<62 {
			u.MemoryLimit = lim
		}
	}
	return u, nil
}

// Remove deletes the VM's group; a group already gone is no error.
func (m *Manager) Remove(vm string) error {
	if m.mode == cgroups.Unified {
		g, err := cgroup2.Load(m.Path(vm))
		if err != nil {
			return nil
		}
		if err := g.Delete(); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove cgroup %s: %w", m.Path(vm), err)
		}
		return nil
	}
	g, err := cgroup1.Load(cgroup1.StaticPath(m.Path(vm)), m.v1Opts()...)
	if errors.Is(err, cgroup1.ErrCgroupDeleted) || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load cgroup %s: %w", m.Path(vm), err)
	}
	if err := g.Delete(); err != nil {
		return fmt.Errorf("remove cgroup %s: %w", m.Path(vm), err)
	}
	return nil
}

// Exists tells whether the VM's group is there (tests, diagnostics).
func (m *Manager) Exists(vm string) bool {
	if m.mode == cgroups.Unified {
		_, err := os.Stat(filepath.Join("/sys/fs/cgroup", m.Path(vm)))
		return err == nil
	}
	_, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory", m.Path(vm)))
	return err == nil
}
