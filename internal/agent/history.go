package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
)

// The usage history (GET /api/v1/vms/{name}/history and
// /hosts/{name}/history): every HistoryInterval the agent reads its VMs'
// usage (VMStats, the readers /metrics uses) and the host's CPU and memory
// (/proc/stat, /proc/meminfo), and keeps the rates over the interval in a
// ring of HistorySamples per VM and one for the host, in memory only. A VM
// that no longer runs here loses its ring.

// Defaults of Config.HistoryInterval and HistorySamples.
const (
	DefaultHistoryInterval = 10 * time.Second
	DefaultHistorySamples  = 360
)

// ring keeps the last len(buf) samples.
type ring struct {
	buf  []v1.HistorySample
	next int
	full bool
}

func newRing(n int) *ring { return &ring{buf: make([]v1.HistorySample, n)} }

func (r *ring) push(s v1.HistorySample) {
	r.buf[r.next] = s
	r.next = (r.next + 1) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
}

// samples are the kept samples, oldest first (a copy).
func (r *ring) samples() []v1.HistorySample {
	if !r.full {
		return append([]v1.HistorySample{}, r.buf[:r.next]...)
	}
	out := make([]v1.HistorySample, 0, len(r.buf))
	out = append(out, r.buf[r.next:]...)
	return append(out, r.buf[:r.next]...)
}

// last is the newest sample (false when there is none).
func (r *ring) last() (v1.HistorySample, bool) {
	if !r.full && r.next == 0 {
		return v1.HistorySample{}, false
	}
	return r.buf[(r.next+len(r.buf)-1)%len(r.buf)], true
}

// reading is one read of a VM's (or the host's) cumulative counters.
type reading struct {
	At                  time.Time
	CPUSeconds          float64
	MemoryBytes         int64
	DiskRead, DiskWrite uint64
	NetRx, NetTx        uint64
}

// rates is the sample between two readings: counter differences per second
// (a counter that went back — QEMU restarted — counts from 0) and the
// memory of the later one. ok is false when cur is not after prev.
func rates(prev, cur reading) (v1.HistorySample, bool) {
	dt := cur.At.Sub(prev.At).Seconds()
	if dt <= 0 {
		return v1.HistorySample{}, false
	}
	du := func(p, c uint64) float64 {
		if c < p {
			return float64(c) / dt
		}
		return float64(c-p) / dt
	}
	cpu := cur.CPUSeconds - prev.CPUSeconds
	if cpu < 0 {
		cpu = cur.CPUSeconds
	}
	return v1.HistorySample{T: cur.At.Unix(), CPUCores: cpu / dt, MemoryBytes: cur.MemoryBytes,
		DiskReadBps: du(prev.DiskRead, cur.DiskRead), DiskWriteBps: du(prev.DiskWrite, cur.DiskWrite),
		NetRxBps: du(prev.NetRx, cur.NetRx), NetTxBps: du(prev.NetTx, cur.NetTx)}, true
}

// series is one VM's (or the host's) ring and its last reading.
type series struct {
	ring *ring
	prev reading
	seen bool
}

func (s *series) add(cur reading) {
	if s.seen {
		if smp, ok := rates(s.prev, cur); ok {
			s.ring.push(smp)
		}
	}
	s.prev, s.seen = cur, true
}

// history is the agent's sampled usage.
type history struct {
	interval time.Duration
	size     int
	mu       sync.Mutex
	vms      map[string]*series
	host     *series
}

func newHistory(interval time.Duration, size int) *history {
	return &history{interval: interval, size: size, vms: map[string]*series{}, host: &series{ring: newRing(size)}}
}

// record adds one round of readings: the host's and its running VMs' (a
// VM missing from vms is dropped).
func (h *history) record(host reading, vms map[string]reading) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name := range h.vms {
		if _, ok := vms[name]; !ok {
			delete(h.vms, name)
		}
	}
	for name, r := range vms {
		s, ok := h.vms[name]
		if !ok {
			s = &series{ring: newRing(h.size)}
			h.vms[name] = s
		}
		s.add(r)
	}
	h.host.add(host)
}

func (h *history) answer(s *series) v1.History {
	out := v1.History{Interval: h.interval.Seconds(), Samples: []v1.HistorySample{}}
	if s != nil {
		out.Samples = s.ring.samples()
	}
	return out
}

// vm is a VM's history (no samples for one not sampled running here).
func (h *history) vm(name string) v1.History {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.answer(h.vms[name])
}

func (h *history) hostHistory() v1.History {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.answer(h.host)
}

// cpuCores is a VM's CPU use over the last interval (0 before two reads).
func (h *history) cpuCores(name string) float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.vms[name]; s != nil {
		if smp, ok := s.ring.last(); ok {
			return smp.CPUCores
		}
	}
	return 0
}

// VMHistory is the sampled usage of a VM that runs on this host.
func (a *Agent) VMHistory(_ context.Context, name string) (v1.History, error) {
	return a.history.vm(name), nil
}

// HostHistory is this host's sampled usage: its CPU (/proc/stat) and
// memory used (MemTotal − MemAvailable), disk and network summed over its
// VMs.
func (a *Agent) HostHistory(_ context.Context) (v1.History, error) {
	return a.history.hostHistory(), nil
}

// sampleHistory reads the usage every interval until ctx ends.
func (a *Agent) sampleHistory(ctx context.Context) {
	t := time.NewTicker(a.history.interval)
	defer t.Stop()
	for {
		a.sampleOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *Agent) sampleOnce(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	stats := a.VMStats(sctx)
	now := time.Now()
	vms := make(map[string]reading, len(stats))
	var host reading
	for _, s := range stats {
		u := usageOf(s)
		r := reading{At: now, CPUSeconds: u.CPUSeconds, MemoryBytes: u.MemoryBytes,
			DiskRead: uint64(u.DiskReadBytes), DiskWrite: uint64(u.DiskWriteBytes),
			NetRx: uint64(u.NetRxBytes), NetTx: uint64(u.NetTxBytes)}
		vms[s.VM] = r
		host.DiskRead += r.DiskRead
		host.DiskWrite += r.DiskWrite
		host.NetRx += r.NetRx
		host.NetTx += r.NetTx
	}
	host.At = now
	if busy, err := readProc("/proc/stat", parseProcStat); err == nil {
		host.CPUSeconds = busy
	} else {
		a.cfg.Log.Debug("history: host cpu", "err", err)
	}
	if used, err := readProc("/proc/meminfo", parseMemUsed); err == nil {
		host.MemoryBytes = used
	} else {
		a.cfg.Log.Debug("history: host memory", "err", err)
	}
	a.history.record(host, vms)
}

// VMUsage is a running VM's usage now.
func (a *Agent) VMUsage(ctx context.Context, name string) (v1.VMUsage, error) {
	inst, ok := a.live.all()[name]
	if !ok {
		return v1.VMUsage{}, errdefs.Precondition("vm %q is not running on host %q: no usage to read", name, a.cfg.Host)
	}
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	s := a.vmStats(ctx, name, inst)
	if s.ProcErr != nil && s.Cgroup == nil {
		return v1.VMUsage{}, fmt.Errorf("read usage of vm %q: %w", name, s.ProcErr)
	}
	u := usageOf(s)
	u.CPUCores = a.history.cpuCores(name)
	if inst.Mon != nil {
		var err error
		if u.BalloonBytes, err = balloonBytes(ctx, inst.Mon); err != nil {
			a.cfg.Log.Debug("usage: balloon", "vm", name, "err", err)
		}
	}
	return u, nil
}

// usageOf sums a VM's stats into its usage: CPU and memory from its cgroup,
// else from its QEMU process; disks and NICs summed.
func usageOf(s VMStats) v1.VMUsage {
	u := v1.VMUsage{At: time.Now().UTC()}
	switch {
	case s.Cgroup != nil:
		u.Source = v1.UsageCgroup
		u.CPUSeconds = float64(s.Cgroup.CPUNanos) / 1e9
		u.MemoryBytes = clampInt(s.Cgroup.MemoryBytes)
		u.MemoryLimitBytes = clampInt(s.Cgroup.MemoryLimit)
	case s.ProcErr == nil:
		u.Source = v1.UsageProcess
		u.CPUSeconds = s.CPUSeconds
		u.MemoryBytes = s.ResidentBytes
	}
	for _, d := range s.Disks {
		u.DiskReadBytes += clampInt(d.ReadBytes)
		u.DiskWriteBytes += clampInt(d.WrittenBytes)
		u.DiskReadOps += clampInt(d.Reads)
		u.DiskWriteOps += clampInt(d.Writes)
	}
	for _, n := range s.NICs {
		u.NetRxBytes += clampInt(n.ReceiveBytes)
		u.NetTxBytes += clampInt(n.TransmitBytes)
	}
	return u
}

// clampInt is v as an int64; a value past its range (a bogus counter) is
// the maximum.
func clampInt(v uint64) int64 {
	if v > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(v)
}

// readProc parses a file of /proc with parse.
func readProc[T any](path string, parse func([]byte) (T, error)) (T, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var zero T
		return zero, err
	}
	return parse(b)
}

// parseProcStat is the CPU time the host spent busy (all but idle and
// iowait), in seconds, from /proc/stat's cpu line.
func parseProcStat(b []byte) (float64, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: first line %q", truncateLine(string(line)))
	}
	var busy uint64
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: cpu field %d %q: not a number", i+1, v)
		}
		// user nice system idle iowait irq softirq steal (guest and
		// guest_nice are already counted in user and nice)
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		busy += n
	}
	return float64(busy) / userHZ, nil
}

// parseMemUsed is MemTotal − MemAvailable of /proc/meminfo, in bytes.
func parseMemUsed(b []byte) (int64, error) {
	v, err := kBFields(b, "MemTotal", "MemAvailable")
	if err != nil {
		return 0, fmt.Errorf("/proc/meminfo: %w", err)
	}
	if v["MemAvailable"] > v["MemTotal"] {
		return 0, fmt.Errorf("/proc/meminfo: MemAvailable above MemTotal")
	}
	return v["MemTotal"] - v["MemAvailable"], nil
}

func truncateLine(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
