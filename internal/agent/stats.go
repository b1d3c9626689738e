package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "hangar/api/v1"
	"hangar/internal/cgroup"
	"hangar/internal/network"
	"hangar/internal/qemu"
)

// The agent is a prometheus.Collector of its VMs' usage: CPU time and
// resident memory of each QEMU process (/proc), bytes and requests per disk
// (QMP query-blockstats) and bytes per bridged NIC (the tap's counters), and
// the durations of the operations it finished. Each VM is read on its own
// goroutine under statsTimeout, so one hung QEMU leaves out only its own
// QMP figures and never holds up a scrape.

const statsTimeout = 2 * time.Second

// userHZ is the unit of utime/stime in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Hangar runs on).
const userHZ = 100

var (
	descVMCPU  = prometheus.NewDesc("hangar_vm_cpu_seconds_total", "CPU time (user + system) of the VM's QEMU process.", []string{"vm"}, nil)
	descVMRSS  = prometheus.NewDesc("hangar_vm_memory_resident_bytes", "Resident memory of the VM's QEMU process.", []string{"vm"}, nil)
	descRdB    = prometheus.NewDesc("hangar_vm_disk_read_bytes_total", "Bytes the guest read from the disk.", []string{"vm", "disk"}, nil)
	descWrB    = prometheus.NewDesc("hangar_vm_disk_written_bytes_total", "Bytes the guest wrote to the disk.", []string{"vm", "disk"}, nil)
	descRdOps  = prometheus.NewDesc("hangar_vm_disk_reads_total", "Read requests of the guest on the disk.", []string{"vm", "disk"}, nil)
	descWrOps  = prometheus.NewDesc("hangar_vm_disk_writes_total", "Write requests of the guest on the disk.", []string{"vm", "disk"}, nil)
	descNetRx  = prometheus.NewDesc("hangar_vm_network_receive_bytes_total", "Bytes the guest received on the NIC (bridged NICs: the tap's transmitted bytes).", []string{"vm", "nic"}, nil)
	descNetTx  = prometheus.NewDesc("hangar_vm_network_transmit_bytes_total", "Bytes the guest sent on the NIC (bridged NICs: the tap's received bytes).", []string{"vm", "nic"}, nil)
	descNetRxP = prometheus.NewDesc("hangar_vm_network_receive_packets_total", "Packets the guest received on the NIC (bridged NICs).", []string{"vm", "nic"}, nil)
	descNetTxP = prometheus.NewDesc("hangar_vm_network_transmit_packets_total", "Packets the guest sent on the NIC (bridged NICs).", []string{"vm", "nic"}, nil)
	descIOErrs = prometheus.NewDesc("hangar_vm_io_errors_total", "Storage errors QEMU met on the disk (BLOCK_IO_ERROR), whatever its I/O error policy did.", []string{"vm", "disk"}, nil)
	descIOStop = prometheus.NewDesc("hangar_vm_io_error_pauses_total", "Times a storage error of the disk paused the VM (I/O error policy stop).", []string{"vm", "disk"}, nil)
	descCgCPU  = prometheus.NewDesc("hangar_vm_cgroup_cpu_seconds_total", "CPU time the VM's cgroup counted (QEMU and every thread it runs).", []string{"vm"}, nil)
	descCgMem  = prometheus.NewDesc("hangar_vm_cgroup_memory_bytes", "Memory the VM's cgroup charges now.", []string{"vm"}, nil)
	descCgLim  = prometheus.NewDesc("hangar_vm_cgroup_memory_limit_bytes", "Hard memory limit of the VM's cgroup.", []string{"vm"}, nil)
	descScrape = prometheus.NewDesc("hangar_vm_stats_incomplete", "Running VMs whose usage this scrape could not read in full, by what failed (proc: CPU and memory; qmp: disks).", []string{"source"}, nil)
)

// liveSet is the QEMU instances the agent's workers run, readable from
// other goroutines (a machine's inst is its worker's alone).
type liveSet struct {
	mu sync.Mutex
	m  map[string]*qemu.Instance
}

func (l *liveSet) set(name string, inst *qemu.Instance) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*qemu.Instance{}
	}
	l.m[name] = inst
}

// drop forgets inst, unless the VM runs another instance by now.
func (l *liveSet) drop(name string, inst *qemu.Instance) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m[name] == inst {
		delete(l.m, name)
	}
}

func (l *liveSet) all() map[string]*qemu.Instance {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]*qemu.Instance, len(l.m))
	for k, v := range l.m {
		out[k] = v
	}
	return out
}

// opSeconds is how long operations took, from creation to their end.
var opBuckets = []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900}

func newOpHistogram() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hangar_operation_duration_seconds",
		Help:    "Time from an operation's creation to its end on this host, by kind and result.",
		Buckets: opBuckets,
	}, []string{"kind", "result"})
}

// observeOp records a finished operation's duration.
func (a *Agent) observeOp(op v1.Operation) {
	if !op.Done() || op.Created.IsZero() || op.Updated.Before(op.Created) {
		return
	}
	a.opDur.WithLabelValues(op.Kind, op.State).Observe(op.Updated.Sub(op.Created).Seconds())
}

// Describe implements prometheus.Collector.
func (a *Agent) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVMCPU, descVMRSS, descRdB, descWrB, descRdOps, descWrOps, descNetRx, descNetTx, descNetRxP, descNetTxP, descIOErrs, descIOStop, descCgCPU, descCgMem, descCgLim, descScrape} {
		ch <- d
	}
	a.opDur.Describe(ch)
}

// Collect implements prometheus.Collector.
func (a *Agent) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
	defer cancel()
	stats := a.VMStats(ctx)
	errs := map[string]int{"proc": 0, "qmp": 0}
	for _, s := range stats {
		if s.ProcErr != nil {
			errs["proc"]++
		} else {
			ch <- prometheus.MustNewConstMetric(descVMCPU, prometheus.CounterValue, s.CPUSeconds, s.VM)
			ch <- prometheus.MustNewConstMetric(descVMRSS, prometheus.GaugeValue, float64(s.ResidentBytes), s.VM)
		}
		if s.DiskErr != nil {
			errs["qmp"]++
		}
		if c := s.Cgroup; c != nil {
			ch <- prometheus.MustNewConstMetric(descCgCPU, prometheus.CounterValue, float64(c.CPUNanos)/1e9, s.VM)
			ch <- prometheus.MustNewConstMetric(descCgMem, prometheus.GaugeValue, float64(c.MemoryBytes), s.VM)
			if c.MemoryLimit > 0 {
				ch <- prometheus.MustNewConstMetric(descCgLim, prometheus.GaugeValue, float64(c.MemoryLimit), s.VM)
			}
		}
		for _, d := range s.Disks {
			ch <- prometheus.MustNewConstMetric(descRdB, prometheus.CounterValue, float64(d.ReadBytes), s.VM, d.Disk)
			ch <- prometheus.MustNewConstMetric(descWrB, prometheus.CounterValue, float64(d.WrittenBytes), s.VM, d.Disk)
			ch <- prometheus.MustNewConstMetric(descRdOps, prometheus.CounterValue, float64(d.Reads), s.VM, d.Disk)
			ch <- prometheus.MustNewConstMetric(descWrOps, prometheus.CounterValue, float64(d.Writes), s.VM, d.Disk)
		}
		for _, n := range s.NICs {
			ch <- prometheus.MustNewConstMetric(descNetRx, prometheus.CounterValue, float64(n.ReceiveBytes), s.VM, n.NIC)
			ch <- prometheus.MustNewConstMetric(descNetTx, prometheus.CounterValue, float64(n.TransmitBytes), s.VM, n.NIC)
			ch <- prometheus.MustNewConstMetric(descNetRxP, prometheus.CounterValue, float64(n.ReceivePackets), s.VM, n.NIC)
			ch <- prometheus.MustNewConstMetric(descNetTxP, prometheus.CounterValue, float64(n.TransmitPackets), s.VM, n.NIC)
		}
	}
	for name := range a.live.all() {
		for _, e := range a.ioCounts.get(name) {
			ch <- prometheus.MustNewConstMetric(descIOErrs, prometheus.CounterValue, float64(e.Count), name, e.Disk)
			ch <- prometheus.MustNewConstMetric(descIOStop, prometheus.CounterValue, float64(e.Pauses), name, e.Disk)
		}
	}
	for src, n := range errs {
		ch <- prometheus.MustNewConstMetric(descScrape, prometheus.GaugeValue, float64(n), src)
	}
	a.opDur.Collect(ch)
}

// VMStats is one running VM's usage as its host sees it.
type VMStats struct {
	VM            string
	CPUSeconds    float64
	ResidentBytes int64
	ProcErr       error // CPU and memory unknown
	Disks         []DiskStats
	DiskErr       error // QMP did not answer in time, or not sensibly
	NICs          []NICStats
	Cgroup        *cgroup.Usage // nil: no cgroup (unavailable here)
}

// DiskStats is one disk's I/O since its QEMU started.
type DiskStats struct {
	Disk                    string
	ReadBytes, WrittenBytes uint64
	Reads, Writes           uint64
}

// NICStats is one NIC's traffic, from the guest's side.
type NICStats struct {
	NIC                             string
	ReceiveBytes, TransmitBytes     uint64
	ReceivePackets, TransmitPackets uint64
}

// VMStats reads the usage of every VM this agent runs, each on its own
// goroutine; ctx bounds the whole (a VM that does not answer in time has
// no disk figures).
func (a *Agent) VMStats(ctx context.Context) []VMStats {
	live := a.live.all()
	out := make([]VMStats, 0, len(live))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, inst := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a.vmStats(ctx, name, inst)
			mu.Lock()
			out = append(out, s)
			mu.Unlock()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		// Every QMP call honours ctx; wait for the stragglers briefly so
		// their results are not lost, but never past a second more.
		select {
		case <-done:
		case <-time.After(time.Second):
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]VMStats(nil), out...)
}

func (a *Agent) vmStats(ctx context.Context, name string, inst *qemu.Instance) VMStats {
	s := VMStats{VM: name}
	select {
	case <-inst.Exited():
		s.ProcErr = fmt.Errorf("vm %q: qemu exited", name)
		return s
	default:
	}
	s.CPUSeconds, s.ResidentBytes, s.ProcErr = procUsage(inst.PID, name)
	if a.cgroups != nil {
		if u, err := a.cgroups.Usage(name); err == nil {
			s.Cgroup = &u
		}
	}
	spec, _, err := a.inv.Spec(ctx, name)
	if err != nil {
		s.DiskErr = err
		return s
	}
	if inst.Mon != nil {
		var bs []blockStats
		if err := inst.Mon.Execute(ctx, "query-blockstats", nil, &bs); err != nil {
			s.DiskErr = err
		} else {
			s.Disks = diskStats(spec, bs)
		}
	}
	for i, n := range spec.NICs {
		if n.Mode != v1.NICBridge {
			continue // QEMU 7.2 keeps no counters of user-mode networking
		}
		if st, err := tapStats(network.TapName(name, i)); err == nil {
			st.NIC = fmt.Sprintf("net%d", i)
			s.NICs = append(s.NICs, st)
		}
	}
	return s
}

// procUsage reads the CPU time and resident memory of pid, after checking
// that pid is the QEMU of vm (guards against a reused pid).
func procUsage(pid int, name string) (cpu float64, rss int64, err error) {
	if pid <= 1 {
		return 0, 0, fmt.Errorf("vm %q: bad pid %d", name, pid)
	}
	dir := fmt.Sprintf("/proc/%d", pid)
	cmd, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return 0, 0, fmt.Errorf("vm %q: %w", name, err)
	}
	if !isQEMUOf(cmd, name) {
		return 0, 0, fmt.Errorf("vm %q: pid %d is not its qemu", name, pid)
	}
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return 0, 0, fmt.Errorf("vm %q: %w", name, err)
	}
	if cpu, err = parseStatCPU(stat); err != nil {
		return 0, 0, fmt.Errorf("vm %q: %s/stat: %w", name, dir, err)
	}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return 0, 0, fmt.Errorf("vm %q: %w", name, err)
	}
	if rss, err = parseStatusRSS(status); err != nil {
		return 0, 0, fmt.Errorf("vm %q: %s/status: %w", name, dir, err)
	}
	return cpu, rss, nil
}

// isQEMUOf tells whether a NUL-separated command line is QEMU's for vm:
// its -name argument is guest=<vm>,…
func isQEMUOf(cmdline []byte, name string) bool {
	args := strings.Split(string(cmdline), "\x00")
	for i, arg := range args {
		if arg == "-name" && i+1 < len(args) && strings.HasPrefix(args[i+1], "guest="+name+",") {
			return true
		}
	}
	return false
}

// parseStatCPU returns utime + stime of a /proc/<pid>/stat in seconds.
// The command name (field 2) may hold spaces and parentheses: fields are
// counted after its last ')'.
func parseStatCPU(b []byte) (float64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields", len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("utime %q stime %q: not numbers", f[11], f[12])
	}
	return float64(ut+st) / userHZ, nil
}

// parseStatusRSS returns VmRSS of a /proc/<pid>/status in bytes.
func parseStatusRSS(b []byte) (int64, error) {
	v, err := kBFields(b, "VmRSS")
	return v["VmRSS"], err
}

// kBFields reads the "Key: N kB" lines of a /proc file (status, meminfo)
// named by keys, in bytes; each must be there, once at least.
func kBFields(b []byte, keys ...string) (map[string]int64, error) {
	out := make(map[string]int64, len(keys))
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !want[k] {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return nil, fmt.Errorf("%s %q", k, strings.TrimSpace(v))
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s %q", k, f[0])
		}
		out[k] = n << 10
	}
	for _, k := range keys {
		if _, ok := out[k]; !ok {
			return nil, fmt.Errorf("no %s", k)
		}
	}
	return out, nil
}

// blockStats is one entry of QMP query-blockstats.
type blockStats struct {
	Device string `json:"device"`
	QDev   string `json:"qdev"`
	Stats  struct {
		RdBytes      uint64 `json:"rd_bytes"`
		WrBytes      uint64 `json:"wr_bytes"`
		RdOperations uint64 `json:"rd_operations"`
		WrOperations uint64 `json:"wr_operations"`
	} `json:"stats"`
}

// diskStats names QEMU's block devices after the spec's disks: a device
// is "dev-<disk>" (its id, or an element of its QOM path); one that names
// no disk of the spec is left out.
func diskStats(spec v1.VMSpec, bs []blockStats) []DiskStats {
	disks := map[string]bool{}
	for _, d := range spec.Disks {
		disks[d.Name] = true
	}
	var out []DiskStats
	seen := map[string]bool{}
	for _, b := range bs {
		disk := ""
		for _, el := range strings.Split(b.QDev, "/") {
			if n, ok := strings.CutPrefix(el, "dev-"); ok {
				disk = n
			}
		}
		if disk == "" || !disks[disk] || seen[disk] {
			continue
		}
		seen[disk] = true
		out = append(out, DiskStats{Disk: disk, ReadBytes: b.Stats.RdBytes, WrittenBytes: b.Stats.WrBytes,
			Reads: b.Stats.RdOperations, Writes: b.Stats.WrOperations})
	}
	return out
}

// tapStats reads a tap's counters. The tap's receive side is what the
// guest sent.
func tapStats(tap string) (NICStats, error) {
	read := func(f string) (uint64, error) {
		b, err := os.ReadFile(filepath.Join("/sys/class/net", tap, "statistics", f))
		if err != nil {
			return 0, err
		}
		return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	var v [4]uint64
	for i, f := range []string{"rx_bytes", "tx_bytes", "rx_packets", "tx_packets"} {
		n, err := read(f)
		if err != nil {
			return NICStats{}, fmt.Errorf("tap %s: %w", tap, err)
		}
		v[i] = n
	}
	return NICStats{ReceiveBytes: v[1], TransmitBytes: v[0], ReceivePackets: v[3], TransmitPackets: v[2]}, nil
}
