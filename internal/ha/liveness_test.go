package ha

import (
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func TestJudge(t *testing.T) {
	beat := func(s float64) []Heartbeat { return []Heartbeat{{Pool: "shared", Counter: 7, ChangedAt: at(s)}} }
	for _, c := range []struct {
		name string
		now  float64
		f    Facts
		want State
	}{
		{"lease held", 100, Facts{LastRenewal: at(0), LeaseTTL: DefaultLeaseTTL}, Alive},
		{"lease held, heartbeat stopped long ago", 100, Facts{LastRenewal: at(99), LeaseTTL: DefaultLeaseTTL, Heartbeats: beat(0)}, Alive},
		// Power loss at 0: last renewal at -1, expiry seen at 4, last heartbeat seen at 0.
		{"lease expired, heartbeat fresh", 4.5, Facts{LeaseExpiredAt: at(4), LastRenewal: at(-1), LeaseTTL: DefaultLeaseTTL, Heartbeats: beat(2)}, Isolated},
		{"heartbeat stopped, margin not over", 5.5, Facts{LeaseExpiredAt: at(4), LastRenewal: at(-1), LeaseTTL: DefaultLeaseTTL, Heartbeats: beat(0)}, Suspect},
		{"margin just over", 6, Facts{LeaseExpiredAt: at(4), LastRenewal: at(-1), LeaseTTL: DefaultLeaseTTL, Heartbeats: beat(0)}, Dead},
		{"expiry seen late", 11.9, Facts{LeaseExpiredAt: at(10), LastRenewal: at(-1), LeaseTTL: DefaultLeaseTTL, Heartbeats: beat(0)}, Suspect},
		{"expiry seen late, margin over", 12, Facts{LeaseExpiredAt: at(10), LastRenewal: at(-1), LeaseTTL: DefaultLeaseTTL, Heartbeats: beat(0)}, Dead},
		{"expiry reported early", 5.9, Facts{LeaseExpiredAt: at(1), LastRenewal: at(-1), LeaseTTL: DefaultLeaseTTL, Heartbeats: beat(-5)}, Suspect},
		{"heartbeat not quite stale", 2.999, Facts{LeaseExpiredAt: at(0), LastRenewal: at(-5), LeaseTTL: DefaultLeaseTTL, Heartbeats: beat(0)}, Isolated},
		{"heartbeat stale just now", 3, Facts{LeaseExpiredAt: at(0), LastRenewal: at(-5), LeaseTTL: DefaultLeaseTTL, Heartbeats: beat(0)}, Dead},
		// Management cut, storage fine: isolated for as long as it beats.
		{"management partition", 600, Facts{LeaseExpiredAt: at(5), LastRenewal: at(0), LeaseTTL: DefaultLeaseTTL, Heartbeats: beat(599.5)}, Isolated},
		{"one pool of two still beats", 600, Facts{LeaseExpiredAt: at(5), LastRenewal: at(0), LeaseTTL: DefaultLeaseTTL,
			Heartbeats: []Heartbeat{{Pool: "a", ChangedAt: at(10)}, {Pool: "b", ChangedAt: at(599)}}}, Isolated},
		{"no shared storage", 7, Facts{LeaseExpiredAt: at(5), LastRenewal: at(0), LeaseTTL: DefaultLeaseTTL}, Dead},
		{"no shared storage, margin not over", 6.9, Facts{LeaseExpiredAt: at(5), LastRenewal: at(0), LeaseTTL: DefaultLeaseTTL}, Suspect},
		{"renewal known, ttl unknown", 1000, Facts{LeaseExpiredAt: at(5), LastRenewal: at(0)}, Suspect},
		// A master elected after the host went silent never saw it renew.
		{"new master, margin not over", 101.9, Facts{LeaseExpiredAt: at(100), Heartbeats: beat(90)}, Suspect},
		{"new master, margin over", 102, Facts{LeaseExpiredAt: at(100), Heartbeats: beat(90)}, Dead},
	} {
		j := Judge(at(c.now), c.f, Config{})
		if j.State != c.want || j.Why == "" {
			t.Errorf("%s: %s (%s), want %s", c.name, j.State, j.Why, c.want)
		}
		if (j.State == Isolated || j.State == Suspect && (c.f.LeaseTTL > 0 || c.f.LastRenewal.IsZero())) != !j.Recheck.IsZero() {
			t.Errorf("%s: %s with recheck %v", c.name, j.State, j.Recheck)
		}
	}
}

func TestHeartbeatObserve(t *testing.T) {
	var h Heartbeat
	h = h.Observe(41, at(10)) // first reading: counts as a change
	if h.ChangedAt != at(10) {
		t.Fatalf("first reading: %+v", h)
	}
	h = h.Observe(41, at(12))
	if h.ChangedAt != at(10) {
		t.Fatalf("same counter moved ChangedAt: %+v", h)
	}
	h = h.Observe(42, at(13))
	if h.ChangedAt != at(13) || h.Counter != 42 {
		t.Fatalf("new counter: %+v", h)
	}
	// A master elected at 100 that reads a counter stopped since 0 waits
	// StaleAfter from its first reading.
	fresh := Heartbeat{Pool: "shared"}.Observe(42, at(100))
	f := Facts{LeaseExpiredAt: at(90), LastRenewal: at(0), LeaseTTL: DefaultLeaseTTL, Heartbeats: []Heartbeat{fresh}}
	if j := Judge(at(102), f, Config{}); j.State != Isolated {
		t.Fatalf("new observer after 2 s: %s", j.State)
	}
	if j := Judge(at(103), f, Config{}); j.State != Dead {
		t.Fatalf("new observer after 3 s: %s", j.State)
	}
}

func TestFenceAt(t *testing.T) {
	if got := FenceAt(at(0), time.Time{}, DefaultLeaseTTL, Config{}); got != at(4) {
		t.Errorf("lease only: %v", got.Sub(t0))
	}
	if got := FenceAt(at(0), at(10), DefaultLeaseTTL, Config{}); got != at(12) {
		t.Errorf("heartbeat still written at 10: %v", got.Sub(t0))
	}
	if got := FenceAt(at(10), at(0), DefaultLeaseTTL, Config{}); got != at(14) {
		t.Errorf("renewed at 10: %v", got.Sub(t0))
	}
	if err := (Config{StaleAfter: time.Second, FenceLead: time.Second}).Validate(DefaultLeaseTTL); err == nil {
		t.Error("staleAfter = fenceLead accepted")
	}
	if err := (Config{}).Validate(time.Second); err == nil {
		t.Error("ttl = fenceLead accepted")
	}
	if err := (Config{}).Validate(DefaultLeaseTTL); err != nil {
		t.Error(err)
	}
}

// TestNeverDeadBeforeFenced is the safety property of the timeline: in
// random runs of an agent that renews its lease and writes its heartbeat
// until its management and storage links fail at random moments (with
// random network and storage delays, lost answers, and a master that
// polls at random times and may start watching late), the master never
// judges the host Dead before the agent's FenceAt + FenceLead or before
// etcd's expiry of the lease + Margin, and does
// judge it Dead once everything has surely stopped.
func TestNeverDeadBeforeFenced(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ttl, cfg := DefaultLeaseTTL, Config{}
	sec := func(lo, hi float64) time.Duration {
		return time.Duration((lo + rng.Float64()*(hi-lo)) * float64(time.Second))
	}
	for run := range 3000 {
		mgmtCut := t0.Add(sec(1, 30)) // renewals sent from here on are lost
		storCut := t0.Add(sec(1, 60)) // heartbeats written from here on fail
		if rng.IntN(4) == 0 {
			storCut = t0.Add(time.Hour) // management partition only
		}
		// The agent: renewals every TTL/3, heartbeats every second.
		var agentRenewal, agentBeat time.Time // last successes as the agent knows them
		expiry := t0.Add(ttl)                 // etcd's
		type write struct {
			visible time.Time
			counter uint64
		}
		var writes []write
		for s := t0; s.Before(t0.Add(110 * time.Second)); s = s.Add(ttl / 3) {
			if s.Before(mgmtCut) {
				recv := s.Add(sec(0, 0.3))
				expiry = recv.Add(ttl)
				if rng.IntN(10) != 0 { // an answer may be lost: the agent thinks it failed
					agentRenewal = s
				}
			}
		}
		var counter uint64
		for s := t0; s.Before(t0.Add(110 * time.Second)); s = s.Add(HeartbeatInterval) {
			if s.Before(storCut) {
				counter++
				done := s.Add(sec(0, 0.2)) // synced: the agent counts it from here
				writes = append(writes, write{visible: done, counter: counter})
				agentBeat = done
			}
		}
		fence := FenceAt(agentRenewal, agentBeat, ttl, cfg)
		// The master: reads at random times from a random start; it knows
		// the lease's last renewal from etcd's remaining TTL at its reads.
		var f Facts
		f.LeaseTTL = ttl
		var hb Heartbeat
		dead := false
		for now := t0.Add(sec(0, 40)); now.Before(t0.Add(100 * time.Second)); now = now.Add(sec(0.05, 1.5)) {
			if now.Before(expiry) {
				if known := expiry.Add(-ttl); known.Before(now) {
					f.LastRenewal = known
				}
			} else if f.LeaseExpiredAt.IsZero() {
				f.LeaseExpiredAt = now
			}
			var seen uint64
			for _, w := range writes {
				if !w.visible.After(now.Add(-sec(0, 0.3))) { // read latency
					seen = w.counter
				}
			}
			hb = hb.Observe(seen, now)
			f.Heartbeats = []Heartbeat{hb}
			j := Judge(now, f, cfg)
			if j.State == Dead {
				dead = true
				if now.Before(fence.Add(cfg.norm().FenceLead)) || now.Before(expiry.Add(cfg.norm().Margin)) {
					t.Fatalf("run %d: dead at %v, but the agent fences at %v and etcd expired the lease at %v (mgmt cut %v, storage cut %v)",
						run, now.Sub(t0), fence.Sub(t0), expiry.Sub(t0), mgmtCut.Sub(t0), storCut.Sub(t0))
				}
				break
			}
		}
		// Both links cut by 60 s: dead well before the master's last read.
		if storCut.Before(t0.Add(time.Hour)) && !dead {
			t.Fatalf("run %d: never dead (mgmt cut %v, storage cut %v)", run, mgmtCut.Sub(t0), storCut.Sub(t0))
		}
		if !storCut.Before(t0.Add(time.Hour)) && dead {
			t.Fatalf("run %d: dead while its heartbeat still moves", run)
		}
	}
}
