package scheduler

import (
	"errors"
	"fmt"
	"math"
)

// Placement modes of a Request.
const (
	// PlacementAuto (or ""): the freest eligible host; PreferredHosts, when
	// given, are tried first (as PlacementPreferred).
	PlacementAuto = "auto"
	// PlacementPreferred: the freest eligible host among PreferredHosts; if
	// none of them can take the VM, the freest eligible host of the pool.
	PlacementPreferred = "preferred"
	// PlacementManual: only the hosts in PreferredHosts (one host: exactly
	// that host), or an error.
	PlacementManual = "manual"
)

// Default overcommit ratios: CPUs are time-shared, memory is not.
const (
	DefaultCPUOvercommit    = 4.0
	DefaultMemoryOvercommit = 1.0
	// MaxOvercommit bounds both ratios: virtual is not unlimited.
	MaxOvercommit = 64.0
)

// Bounds on the numbers of a snapshot, so sums never overflow.
const (
	maxCPUs      = 1 << 20
	maxMemoryMiB = 1 << 40
)

// ErrInvalid marks a snapshot or request that is malformed (a bug of the
// caller, not a lack of capacity).
var ErrInvalid = errors.New("invalid placement input")

// Host is one host as the scheduler sees it.
type Host struct {
	Name        string
	CPUs        int
	MemoryMiB   int
	Alive       bool
	Maintenance bool
	// Pools are the storage pools the host reaches.
	Pools []string
}

// Alloc is what is booked on a host now: one VM's CPUs and memory.
type Alloc struct {
	Host, VM     string
	CPUs         int
	MemoryMiB    int
	AntiAffinity string
}

// Request asks for a host for one VM.
type Request struct {
	VM        string
	CPUs      int
	MemoryMiB int
	// Pools the VM's storage lives in: the host must reach all of them.
	Pools []string
	// PreferredHosts are tried first (auto, preferred) or are the only
	// candidates (manual).
	PreferredHosts []string
	// Placement is auto (""), preferred or manual.
	Placement string
	// AntiAffinity: no two VMs of this group on one host.
	AntiAffinity string
	// Exclude hosts, e.g. the source of a migration.
	Exclude []string
}

// Policy holds the overcommit ratios: a host admits VMs while the booked
// CPUs stay within CPUs×CPUOvercommit and the booked memory within
// MemoryMiB×MemoryOvercommit (both rounded down). Zero means the default.
type Policy struct {
	CPUOvercommit    float64
	MemoryOvercommit float64
	// ReserveCPUs and ReserveMemoryMiB are kept for the host itself on
	// every host: the ratios apply to what is left.
	ReserveCPUs      int
	ReserveMemoryMiB int
}

// AllocatableCPUs are the vCPUs a host of cpus CPUs admits: its CPUs less
// the host's reserve, times the CPU ratio. The one place the reserve is
// taken off, for placement, the capacity view and migrations alike.
func (p Policy) AllocatableCPUs(cpus int) int {
	return Admitted(max(cpus-p.ReserveCPUs, 0), p.CPUOvercommit)
}

// AllocatableMemoryMiB is AllocatableCPUs for memory.
func (p Policy) AllocatableMemoryMiB(mib int) int {
	return Admitted(max(mib-p.ReserveMemoryMiB, 0), p.MemoryOvercommit)
}

// Snapshot is the pool at one moment: hosts, what is booked, the policy.
type Snapshot struct {
	Hosts  []Host
	Allocs []Alloc
	Policy Policy
}

// Placement is the answer for one Request: Host, or Err (wrapping ErrNoHost
// or ErrInvalid) saying why no host can take the VM.
type Placement struct {
	VM   string
	Host string
	Err  error
}

// Plan places reqs in order on the hosts of s. Each placement books its
// VM in the working state, so a batch never overcommits a host. It does no
// I/O; the caller commits the plan. The error is for a malformed snapshot;
// a request that fits nowhere gets its own Err.
//
// The choice is deterministic: among the eligible hosts the one with the
// most free memory and CPUs, scored by the scarcer of the two: free
// memory and free CPUs (after overcommit) are each divided by the largest
// host's (memory, CPUs) capacity, and the smaller of the two is the score.
// Ties go to the larger sum of the two, then to the first name.
func Plan(s Snapshot, reqs []Request) ([]Placement, error) {
	p, err := newPlanner(s)
	if err != nil {
		return nil, err
	}
	out := make([]Placement, len(reqs))
	seen := make(map[string]bool, len(reqs))
	for i, r := range reqs {
		out[i] = Placement{VM: r.VM}
		if seen[r.VM] {
			out[i].Err = fmt.Errorf("%w: vm %q: requested twice in one plan", ErrInvalid, r.VM)
			continue
		}
		seen[r.VM] = true
		out[i].Host, out[i].Err = p.place(r)
	}
	return out, nil
}

// hostState is a host and what is booked on it.
type hostState struct {
	name             string
	cpus, mem        int // as reported
	cpuCap, memCap   int // after overcommit
	cpuUsed, memUsed int
	alive, maint     bool
	pools            map[string]struct{}
	// score is the smaller of the normalised free memory and CPUs, sum
	// their sum (see rescore).
	score, sum float64
	// in lists the heaps holding the host and its index in each.
	in []heapPos
}

type heapPos struct{ heap, pos int32 }

// rescore sets the host's score: free memory over the pool's largest
// memory capacity and free CPUs over its largest CPU capacity, the
// smaller of the two, and their sum for ties. A host full on either
// resource sinks, so the best hosts have room on both.
func (p *planner) rescore(i int32) {
	h := &p.hosts[i]
	fm := float64(h.memCap-h.memUsed) / float64(p.memRef)
	fc := float64(h.cpuCap-h.cpuUsed) / float64(p.cpuRef)
	h.score, h.sum = min(fm, fc), fm+fc
}

// ownAlloc is an existing allocation of a VM: it does not repel its own
// new placement through anti-affinity.
type ownAlloc struct {
	host  int32
	group string
}

// planner is the working state of one Plan.
type planner struct {
	policy Policy
	hosts  []hostState
	byName map[string]int32
	// heaps[0] holds the usable hosts (alive, not in maintenance), best
	// first; poolHeap[pool] the usable hosts reaching a pool, for pools
	// more than linearCutoff hosts reach.
	heaps    []*hostHeap
	poolHeap map[string]*hostHeap
	// poolHosts lists the usable hosts reaching each pool.
	poolHosts map[string][]int32
	// groups counts, per anti-affinity group, its VMs on each host.
	groups map[string]map[int32]int
	own    map[string][]ownAlloc
	// stamp marks excluded hosts of the current request (stamp == cur).
	stamp    []uint32
	cur      uint32
	frontier []int32
	// memRef, cpuRef: the largest capacities of the usable hosts (≥ 1),
	// the units of a score.
	memRef, cpuRef int
}

// linearCutoff is how many hosts a best-first walk of the heap may reject
// before a plain scan takes over: the walk is O(k log k) for k rejected
// hosts, the scan O(hosts), so each placement costs at most O(hosts).
const linearCutoff = 32

func newPlanner(s Snapshot) (*planner, error) {
	pol, err := normPolicy(s.Policy)
	if err != nil {
		return nil, err
	}
	p := &planner{
		policy:    pol,
		hosts:     make([]hostState, len(s.Hosts)),
		byName:    make(map[string]int32, len(s.Hosts)),
		stamp:     make([]uint32, len(s.Hosts)),
		poolHosts: map[string][]int32{},
		groups:    map[string]map[int32]int{},
		own:       map[string][]ownAlloc{},
	}
	for i, h := range s.Hosts {
		if h.Name == "" {
			return nil, fmt.Errorf("%w: host %d has no name", ErrInvalid, i)
		}
		if _, dup := p.byName[h.Name]; dup {
			return nil, fmt.Errorf("%w: host %q listed twice", ErrInvalid, h.Name)
		}
		if h.CPUs < 0 || h.CPUs > maxCPUs || h.MemoryMiB < 0 || h.MemoryMiB > maxMemoryMiB {
			return nil, fmt.Errorf("%w: host %q: cpus %d, memory %d MiB out of range", ErrInvalid, h.Name, h.CPUs, h.MemoryMiB)
		}
		p.byName[h.Name] = int32(i)
		hs := &p.hosts[i]
		*hs = hostState{
			name: h.Name, cpus: h.CPUs, mem: h.MemoryMiB,
			cpuCap: pol.AllocatableCPUs(h.CPUs),
			memCap: pol.AllocatableMemoryMiB(h.MemoryMiB),
			alive:  h.Alive, maint: h.Maintenance,
			pools: make(map[string]struct{}, len(h.Pools)),
		}
		for _, pl := range h.Pools {
			if _, dup := hs.pools[pl]; dup {
				continue
			}
			hs.pools[pl] = struct{}{}
			if hs.usable() {
				p.poolHosts[pl] = append(p.poolHosts[pl], int32(i))
			}
		}
	}
	for _, a := range s.Allocs {
		if a.CPUs < 0 || a.CPUs > maxCPUs || a.MemoryMiB < 0 || a.MemoryMiB > maxMemoryMiB {
			return nil, fmt.Errorf("%w: allocation of vm %q on %q: cpus %d, memory %d MiB out of range", ErrInvalid, a.VM, a.Host, a.CPUs, a.MemoryMiB)
		}
		i, ok := p.byName[a.Host]
		if !ok {
			continue // a host that left the pool: nothing can be placed there
		}
		p.book(i, a.CPUs, a.MemoryMiB, a.AntiAffinity)
		if a.AntiAffinity != "" {
			p.own[a.VM] = append(p.own[a.VM], ownAlloc{host: i, group: a.AntiAffinity})
		}
	}
	p.memRef, p.cpuRef = 1, 1
	for i := range p.hosts {
		if h := &p.hosts[i]; h.usable() {
			p.memRef, p.cpuRef = max(p.memRef, h.memCap), max(p.cpuRef, h.cpuCap)
		}
	}
	all := p.newHeap()
	for i := range p.hosts {
		p.rescore(int32(i))
		if p.hosts[i].usable() {
			p.add(all, int32(i))
		}
	}
	p.poolHeap = map[string]*hostHeap{}
	for pl, hs := range p.poolHosts {
		if len(hs) == len(all.items) {
			p.poolHeap[pl] = all // every usable host reaches it
		} else if len(hs) > linearCutoff {
			h := p.newHeap()
			for _, i := range hs {
				p.add(h, i)
			}
			p.poolHeap[pl] = h
		}
	}
	for _, h := range p.heaps {
		for j := len(h.items)/2 - 1; j >= 0; j-- {
			p.down(h, j)
		}
		h.most = make([]free, len(h.items))
		for j := len(h.items) - 1; j >= 0; j-- {
			p.total(h, j)
		}
	}
	return p, nil
}

func (h *hostState) usable() bool { return h.alive && !h.maint }

// Admitted is what a host of size units (CPUs, MiB) admits under ratio:
// rounded down, the one rule placement, the capacity view and the
// migration blocker share.
func Admitted(size int, ratio float64) int { return int(math.Floor(float64(size) * ratio)) }

// NormPolicy checks the ratios of pol and fills the defaults in for the
// zero ones.
func NormPolicy(pol Policy) (Policy, error) { return normPolicy(pol) }

func normPolicy(pol Policy) (Policy, error) {
	norm := func(name string, v, def float64) (float64, error) {
		if v == 0 {
			return def, nil
		}
		if math.IsNaN(v) || v < 0 || v > MaxOvercommit {
			return 0, fmt.Errorf("%w: %s overcommit %v: want a ratio in (0, %v]", ErrInvalid, name, v, MaxOvercommit)
		}
		return v, nil
	}
	var err error
	if pol.CPUOvercommit, err = norm("cpu", pol.CPUOvercommit, DefaultCPUOvercommit); err != nil {
		return pol, err
	}
	if pol.MemoryOvercommit, err = norm("memory", pol.MemoryOvercommit, DefaultMemoryOvercommit); err != nil {
		return pol, err
	}
	if pol.ReserveCPUs < 0 || pol.ReserveMemoryMiB < 0 {
		return pol, fmt.Errorf("%w: host reserve %d CPUs, %d MiB: must not be negative", ErrInvalid, pol.ReserveCPUs, pol.ReserveMemoryMiB)
	}
	return pol, nil
}

// book adds a VM's resources (and group) to host i; the caller fixes the
// heap.
func (p *planner) book(i int32, cpus, mem int, group string) {
	h := &p.hosts[i]
	h.cpuUsed += cpus
	h.memUsed += mem
	if group != "" {
		g := p.groups[group]
		if g == nil {
			g = map[int32]int{}
			p.groups[group] = g
		}
		g[i]++
	}
}

// better orders hosts: higher score, then higher sum, then name.
func (p *planner) better(a, b int32) bool {
	ha, hb := &p.hosts[a], &p.hosts[b]
	if ha.score != hb.score {
		return ha.score > hb.score
	}
	if ha.sum != hb.sum {
		return ha.sum > hb.sum
	}
	return ha.name < hb.name
}

// hostHeap is a binary max-heap of hosts by better. Each position also
// holds the most free memory and the most free CPUs of any host in its
// subtree, so a walk skips subtrees where no host is big enough.
type hostHeap struct {
	id    int32
	items []int32
	most  []free
}

type free struct{ mem, cpus int }

func (p *planner) freeOf(i int32) free {
	h := &p.hosts[i]
	return free{mem: h.memCap - h.memUsed, cpus: h.cpuCap - h.cpuUsed}
}

// total recomputes position j's subtree maxima from its children's.
func (p *planner) total(h *hostHeap, j int) {
	f := p.freeOf(h.items[j])
	for _, c := range [2]int{2*j + 1, 2*j + 2} {
		if c < len(h.items) {
			f.mem = max(f.mem, h.most[c].mem)
			f.cpus = max(f.cpus, h.most[c].cpus)
		}
	}
	h.most[j] = f
}

// roomy says whether position j's subtree may hold a host big enough.
func (h *hostHeap) roomy(j int, r *req) bool {
	return h.most[j].mem >= r.MemoryMiB && h.most[j].cpus >= r.CPUs
}

func (p *planner) newHeap() *hostHeap {
	h := &hostHeap{id: int32(len(p.heaps))}
	p.heaps = append(p.heaps, h)
	return h
}

// add appends host i; the caller heapifies.
func (p *planner) add(h *hostHeap, i int32) {
	p.hosts[i].in = append(p.hosts[i].in, heapPos{heap: h.id, pos: int32(len(h.items))})
	h.items = append(h.items, i)
}

// sink restores every heap holding host i after its free resources went
// down: the host sinks from j to k, and the maxima change
// only on k's path to the root.
func (p *planner) sink(i int32) {
	for _, hp := range p.hosts[i].in {
		h := p.heaps[hp.heap]
		for k := p.down(h, int(hp.pos)); ; k = (k - 1) / 2 {
			p.total(h, k)
			if k == 0 {
				break
			}
		}
	}
}

// down sifts position j down and returns where its host ends.
func (p *planner) down(h *hostHeap, j int) int {
	n := len(h.items)
	for {
		best, l, r := j, 2*j+1, 2*j+2
		if l < n && p.better(h.items[l], h.items[best]) {
			best = l
		}
		if r < n && p.better(h.items[r], h.items[best]) {
			best = r
		}
		if best == j {
			return j
		}
		p.swap(h, j, best)
		j = best
	}
}

func (p *planner) swap(h *hostHeap, a, b int) {
	h.items[a], h.items[b] = h.items[b], h.items[a]
	p.setPos(h, h.items[a], a)
	p.setPos(h, h.items[b], b)
}

func (p *planner) setPos(h *hostHeap, i int32, pos int) {
	in := p.hosts[i].in
	for k := range in {
		if in[k].heap == h.id {
			in[k].pos = int32(pos)
			return
		}
	}
}

// req is a validated request with its lookups done once.
type req struct {
	Request
	groupHosts map[int32]int // the group's VMs per host (nil: no group or empty)
	self       []int32       // hosts where this VM already holds a slot of its group
}

// why is the first rule a host fails for a request.
type why int

const (
	fits why = iota
	whyUnknown
	whyExcluded
	whyDown
	whyMaintenance
	whyPool
	whyAntiAffinity
	whyMemory
	whyCPU
)

func (p *planner) check(i int32, r *req) why {
	h := &p.hosts[i]
	switch {
	case p.stamp[i] == p.cur:
		return whyExcluded
	case !h.alive:
		return whyDown
	case h.maint:
		return whyMaintenance
	}
	for _, pl := range r.Pools {
		if _, ok := h.pools[pl]; !ok {
			return whyPool
		}
	}
	if r.groupHosts != nil {
		n := r.groupHosts[i]
		for _, s := range r.self {
			if s == i {
				n--
			}
		}
		if n > 0 {
			return whyAntiAffinity
		}
	}
	if h.memUsed+r.MemoryMiB > h.memCap {
		return whyMemory
	}
	if h.cpuUsed+r.CPUs > h.cpuCap {
		return whyCPU
	}
	return fits
}

func (p *planner) validate(r Request) error {
	switch {
	case r.VM == "":
		return fmt.Errorf("%w: a request without a vm name", ErrInvalid)
	case r.CPUs < 1 || r.CPUs > maxCPUs:
		return fmt.Errorf("%w: vm %q: cpus %d out of range", ErrInvalid, r.VM, r.CPUs)
	case r.MemoryMiB < 1 || r.MemoryMiB > maxMemoryMiB:
		return fmt.Errorf("%w: vm %q: memory %d MiB out of range", ErrInvalid, r.VM, r.MemoryMiB)
	}
	switch r.Placement {
	case "", PlacementAuto:
	case PlacementPreferred, PlacementManual:
		if len(r.PreferredHosts) == 0 {
			return fmt.Errorf("%w: vm %q: placement %s without preferred hosts", ErrInvalid, r.VM, r.Placement)
		}
	default:
		return fmt.Errorf("%w: vm %q: unknown placement %q", ErrInvalid, r.VM, r.Placement)
	}
	return nil
}

// place picks a host for r and books it there.
func (p *planner) place(r Request) (string, error) {
	if err := p.validate(r); err != nil {
		return "", err
	}
	p.cur++
	if p.cur == 0 { // wrapped: clear old marks
		clear(p.stamp)
		p.cur = 1
	}
	for _, name := range r.Exclude {
		if i, ok := p.byName[name]; ok {
			p.stamp[i] = p.cur
		}
	}
	rq := &req{Request: r}
	if r.AntiAffinity != "" {
		rq.groupHosts = p.groups[r.AntiAffinity]
		for _, o := range p.own[r.VM] {
			if o.group == r.AntiAffinity {
				rq.self = append(rq.self, o.host)
			}
		}
	}
	best := int32(-1)
	if len(r.PreferredHosts) > 0 {
		best = p.bestOf(p.named(r.PreferredHosts), rq)
	}
	if best < 0 && r.Placement != PlacementManual {
		best = p.bestAll(rq)
	}
	if best < 0 {
		return "", p.explain(rq)
	}
	p.book(best, r.CPUs, r.MemoryMiB, r.AntiAffinity)
	p.rescore(best)
	p.sink(best) // booking only lowers a score: the host can only sink
	return p.hosts[best].name, nil
}

// named maps host names to indices, dropping names not in the pool.
func (p *planner) named(names []string) []int32 {
	out := make([]int32, 0, len(names))
	for _, n := range names {
		if i, ok := p.byName[n]; ok {
			out = append(out, i)
		}
	}
	return out
}

// bestOf is the best host of cands that fits r, or -1.
func (p *planner) bestOf(cands []int32, r *req) int32 {
	best := int32(-1)
	for _, i := range cands {
		if (best < 0 || p.better(i, best)) && p.check(i, r) == fits {
			best = i
		}
	}
	return best
}

// bestAll is the best usable host that fits r, or -1. It looks among the
// hosts of the request's rarest pool (all usable hosts without pools): if
// few, it scans them; otherwise it walks their heap best-first, skipping
// subtrees without a host big enough, and stops at the first host that
// fits, which is the best; after linearCutoff rejections (a crowded
// anti-affinity group) it scans the heap instead.
func (p *planner) bestAll(r *req) int32 {
	h := p.heaps[0]
	for k, pl := range r.Pools {
		hs := p.poolHosts[pl]
		if k == 0 || len(hs) < len(h.items) {
			if len(hs) <= linearCutoff {
				return p.bestOf(hs, r)
			}
			h = p.poolHeap[pl]
		}
	}
	if len(h.items) == 0 || !h.roomy(0, r) {
		return -1
	}
	f := append(p.frontier[:0], 0)
	defer func() { p.frontier = f[:0] }()
	for rejected := 0; len(f) > 0; rejected++ {
		// pop the best heap position of the frontier
		bi := 0
		for k := 1; k < len(f); k++ {
			if p.better(h.items[f[k]], h.items[f[bi]]) {
				bi = k
			}
		}
		j := f[bi]
		f[bi] = f[len(f)-1]
		f = f[:len(f)-1]
		i := h.items[j]
		if p.check(i, r) == fits {
			return i
		}
		if rejected >= linearCutoff {
			return p.bestOf(h.items, r)
		}
		for _, c := range [2]int32{2*j + 1, 2*j + 2} {
			if int(c) < len(h.items) && h.roomy(int(c), r) {
				f = append(f, c)
			}
		}
	}
	return -1
}

// PlaceIO picks the host for an I/O job (copy, convert, import, flatten)
// on storage in pools: the usable host reaching all of them with the
// most free memory and CPUs (the score of Plan). A job books nothing, so
// there is no admission control.
func PlaceIO(s Snapshot, pools []string) (string, error) {
	p, err := newPlanner(s)
	if err != nil {
		return "", err
	}
	r := &req{Request: Request{VM: "i/o job", Pools: pools}}
	p.cur++
	best := int32(-1)
	for _, i := range p.heaps[0].items {
		if w := p.check(i, r); (w == fits || w == whyMemory || w == whyCPU) && (best < 0 || p.better(i, best)) {
			best = i
		}
	}
	if best < 0 {
		return "", fmt.Errorf("%w: no live host out of maintenance reaches pools %v", ErrNoHost, pools)
	}
	return p.hosts[best].name, nil
}
