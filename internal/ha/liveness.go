// Package ha decides high availability: whether a host is dead (Judge),
// when an agent must have killed its HA VMs (FenceAt), which VMs of a dead
// host restart where (PlanRestarts) and whether the pool keeps room for
// that (Admit). It is pure: the pool master and the agents read the
// facts, call it and act.
package ha

import (
	"fmt"
	"time"
)

// The fencing timeline, with its default numbers. Every time here is on
// one process's own monotonic clock; no host ever compares its clock with
// a time another host wrote.
//
//	t = R        the agent sends its last lease renewal that succeeds
//	t ≈ R + 1 s  …it renews every TTL/3; from here on none gets through
//	t = R + 4 s  FenceAt: the agent (if its storage heartbeat failed as
//	             well) SIGKILLs its HA VMs — TTL − FenceLead, on its own
//	             timer, whether or not etcd answers
//	t ≥ R + 5 s  etcd expires the lease: it counts the TTL from when it
//	             received the renewal (≥ R) and never expires a lease early
//	             (a new etcd leader extends them)
//	t = E ≥ R+5s the master sees the lease gone (a watch: E ≈ R + 5 s)
//	t ≥ E + 2 s  the master may declare the host Dead: lease seen expired
//	             Margin ago AND no heartbeat change seen for StaleAfter
//	             AND at least TTL + Margin after the last renewal it knows
//	             of (a master elected later knows none: E alone counts)
//
// So a restart elsewhere comes at least FenceLead + Margin (3 s) after the
// agent's kill deadline: room for the kill to finish and for clocks that
// run at slightly different rates. The expiry seen (E) is what makes it
// certain; LastRenewal + TTL only keeps the margin when E is reported late. The storage heartbeat half is the same
// argument: the agent counts a heartbeat only once it is written (synced);
// the master sees the change no earlier than that, and waits StaleAfter
// from when it saw it, while the agent fences StaleAfter − FenceLead after
// its last good write. A host that still writes its heartbeat is Isolated:
// it keeps its VMs and nothing restarts them elsewhere. What the timeline
// cannot cover — an agent frozen while its QEMU keeps running — the
// master's other two conditions do: the VM's owner record is taken over
// in etcd (epoch + 1) and the disk's QEMU image lock must be free.
const (
	DefaultLeaseTTL   = 5 * time.Second
	DefaultFenceLead  = 1 * time.Second
	DefaultStaleAfter = 3 * time.Second
	DefaultMargin     = 2 * time.Second
	// HeartbeatInterval is how often an agent writes its storage heartbeat.
	HeartbeatInterval = time.Second
)

// Config holds the liveness timings; zero fields take the defaults.
type Config struct {
	// StaleAfter: a heartbeat not seen changing for this long has stopped.
	StaleAfter time.Duration
	// Margin is waited beyond the lease TTL before a host is Dead.
	Margin time.Duration
	// FenceLead: an agent kills its HA VMs this long before the master
	// may call it dead.
	FenceLead time.Duration
}

func (c Config) norm() Config {
	if c.StaleAfter <= 0 {
		c.StaleAfter = DefaultStaleAfter
	}
	if c.Margin <= 0 {
		c.Margin = DefaultMargin
	}
	if c.FenceLead <= 0 {
		c.FenceLead = DefaultFenceLead
	}
	return c
}

// Validate refuses timings that leave an agent with lease TTL ttl no
// time to fence.
func (c Config) Validate(ttl time.Duration) error {
	c = c.norm()
	if c.StaleAfter <= c.FenceLead {
		return fmt.Errorf("ha config: staleAfter %v must be longer than fenceLead %v", c.StaleAfter, c.FenceLead)
	}
	if ttl <= c.FenceLead {
		return fmt.Errorf("ha config: lease TTL %v must be longer than fenceLead %v", ttl, c.FenceLead)
	}
	return nil
}

// State is a host's liveness as the master judges it.
type State string

const (
	// Alive: its lease is held.
	Alive State = "alive"
	// Isolated: its lease expired but its storage heartbeat still moves:
	// it lost the management network only. Its VMs keep running there and
	// nothing is restarted elsewhere.
	Isolated State = "isolated"
	// Suspect: its lease expired and the rest is not certain yet.
	Suspect State = "suspect"
	// Dead: lease expired, heartbeat stopped, self-fencing surely done:
	// its HA VMs may be restarted elsewhere.
	Dead State = "dead"
)

// Facts are what the master knows of one host, on its own clock.
type Facts struct {
	// LeaseExpiredAt is when the observer first saw the host's lease gone
	// (its liveness key deleted by etcd); zero while it is held.
	LeaseExpiredAt time.Time
	// LastRenewal is the latest moment the lease is known to have been
	// renewed: when it was seen alive, less what it had used of its TTL
	// (TTL − the time to live etcd reported). Zero: never seen alive (a
	// master elected after the host went silent).
	LastRenewal time.Time
	LeaseTTL    time.Duration
	// Heartbeats are the host's storage heartbeats, one per shared pool
	// it writes to; the host heartbeats while any of them moves.
	Heartbeats []Heartbeat
}

// Heartbeat is one storage heartbeat as an observer sees it. The agent
// writes a counter (and its own time, which the observer ignores).
type Heartbeat struct {
	Pool    string `json:"pool"`
	Counter uint64 `json:"counter"`
	// ChangedAt is when the observer saw Counter change, or first read it.
	ChangedAt time.Time `json:"changedAt"`
}

// Observe records a reading of the counter at time at. A first reading
// counts as a change: an observer that has not watched for StaleAfter
// (a master elected a moment ago) never takes a heartbeat for stopped.
func (h Heartbeat) Observe(counter uint64, at time.Time) Heartbeat {
	if h.ChangedAt.IsZero() || counter != h.Counter {
		h.Counter, h.ChangedAt = counter, at
	}
	return h
}

// Judgement is Judge's answer.
type Judgement struct {
	State State
	// Why says it in words, for logs and the failover operation.
	Why string
	// Recheck is when the state changes by the passing of time alone
	// (Isolated and Suspect); zero for Alive and Dead.
	Recheck time.Time
}

// Judge decides whether the host of f is Alive, Isolated, Suspect or Dead
// at now. Dead needs all of: the lease seen expired at least Margin ago,
// no heartbeat change seen for StaleAfter, and, when a renewal is known,
// now ≥ LastRenewal + TTL + Margin. A renewal known without its TTL never
// makes a host Dead.
func Judge(now time.Time, f Facts, c Config) Judgement {
	c = c.norm()
	if f.LeaseExpiredAt.IsZero() {
		return Judgement{State: Alive, Why: "lease held"}
	}
	fenced := f.LeaseExpiredAt.Add(c.Margin)
	if !f.LastRenewal.IsZero() {
		if f.LeaseTTL <= 0 {
			return Judgement{State: Suspect, Why: "lease expired, its TTL is unknown: never declared dead"}
		}
		if t := f.LastRenewal.Add(f.LeaseTTL + c.Margin); t.After(fenced) {
			fenced = t
		}
	}
	var beat Heartbeat
	for _, h := range f.Heartbeats {
		if h.ChangedAt.After(beat.ChangedAt) {
			beat = h
		}
	}
	if !beat.ChangedAt.IsZero() {
		if stale := beat.ChangedAt.Add(c.StaleAfter); now.Before(stale) {
			return Judgement{State: Isolated, Recheck: stale,
				Why: fmt.Sprintf("lease expired, storage heartbeat on %s moved %v ago", beat.Pool, now.Sub(beat.ChangedAt).Round(time.Millisecond))}
		}
	}
	if now.Before(fenced) {
		return Judgement{State: Suspect, Recheck: fenced,
			Why: fmt.Sprintf("lease expired, no storage heartbeat moving; self-fencing is certain in %v", fenced.Sub(now).Round(time.Millisecond))}
	}
	why := "lease expired, no storage heartbeat, self-fencing deadline passed"
	if !beat.ChangedAt.IsZero() {
		why = fmt.Sprintf("lease expired, storage heartbeat on %s stopped %v ago, self-fencing deadline passed", beat.Pool, now.Sub(beat.ChangedAt).Round(time.Millisecond))
	}
	return Judgement{State: Dead, Why: why}
}

// FenceAt is when an agent that runs HA VMs must have killed them, on its
// own monotonic clock: FenceLead before the master may call it dead. It is
// the later of the last lease renewal that succeeded (the time the agent
// sent it) + TTL − FenceLead and, when it writes storage heartbeats, its
// last heartbeat written + StaleAfter − FenceLead: an agent whose
// heartbeat still gets through is Isolated and keeps its VMs.
func FenceAt(renewalSent, heartbeatWritten time.Time, ttl time.Duration, c Config) time.Time {
	c = c.norm()
	at := renewalSent.Add(ttl - c.FenceLead)
	if !heartbeatWritten.IsZero() {
		if hb := heartbeatWritten.Add(c.StaleAfter - c.FenceLead); hb.After(at) {
			at = hb
		}
	}
	return at
}
