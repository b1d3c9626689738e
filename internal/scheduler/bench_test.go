package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkPlan places 20 VMs per host (a full-ish pool, some groups and
// preferred hosts) and reports the cost per placement; compare hosts=250
// with hosts=2500 to see how it grows with the pool.
func BenchmarkPlan(b *testing.B) {
	for _, n := range []int{250, 2500} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 2))
			var s Snapshot
			for i := range n {
				h := Host{Name: fmt.Sprintf("h%05d", i), CPUs: 16 << rng.IntN(3), MemoryMiB: 65536 << rng.IntN(3), Alive: true, Pools: []string{"shared"}}
				h.Maintenance = rng.IntN(50) == 0
				s.Hosts = append(s.Hosts, h)
			}
			reqs := make([]Request, 20*n)
			for i := range reqs {
				reqs[i] = Request{VM: fmt.Sprintf("vm%d", i), CPUs: 1 << rng.IntN(4), MemoryMiB: 1024 << rng.IntN(4), Pools: []string{"shared"}}
				if rng.IntN(10) == 0 {
					reqs[i].AntiAffinity = fmt.Sprintf("g%d", rng.IntN(8))
				}
				if rng.IntN(20) == 0 {
					reqs[i].PreferredHosts = []string{s.Hosts[rng.IntN(n)].Name, s.Hosts[rng.IntN(n)].Name}
				}
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := Plan(s, reqs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(reqs)), "ns/placement")
		})
	}
}
