package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"hangar/internal/heartbeat"
	"hangar/internal/qemu"
)

// fakeFence is a fencer on a clock the test moves, with etcd and the
// shared pool answering or not as the test says.
type fakeFence struct {
	f          *fencer
	clock      time.Time
	etcdUp     bool
	storageUp  bool
	killed     []string
	mu         sync.Mutex
	web, batch *qemu.Instance
}

func newFakeFence(t *testing.T) *fakeFence {
	ff := &fakeFence{clock: time.Unix(1000, 0), etcdUp: true, storageUp: true,
		web: &qemu.Instance{Name: "web", PID: 1 << 30}, batch: &qemu.Instance{Name: "batch", PID: 1<<30 + 1}}
	root := t.TempDir()
	ff.f = &fencer{
		ttl: 10 * time.Second,
		now: func() time.Time { return ff.clock },
		probe: func(context.Context) (time.Duration, error) {
			if !ff.etcdUp {
				return 0, context.DeadlineExceeded
			}
			return 9 * time.Second, nil // whole seconds, rounded down
		},
		state: func(context.Context) (map[string]bool, []string, error) {
			if !ff.etcdUp {
				return nil, nil, errors.New("etcd unreachable")
			}
			return map[string]bool{"web": true}, []string{root}, nil
		},
		live: func() map[string]*qemu.Instance { return map[string]*qemu.Instance{"web": ff.web, "batch": ff.batch} },
		kill: func(name string, _ *qemu.Instance) { ff.killed = append(ff.killed, name) },
		log:  slog.New(slog.DiscardHandler),
		openPool: func(r string) (*heartbeat.Writer, error) {
			w, err := heartbeat.Open(r, "h1")
			if err != nil {
				return nil, err
			}
			return w, nil
		},
	}
	ff.f.writeBeat = func(w *heartbeat.Writer, ctx context.Context) error {
		if !ff.storageUp {
			return errors.New("storage hangs")
		}
		return w.Beat(ctx)
	}
	return ff
}

// run moves the clock by d in heartbeat ticks, checking at each.
func (ff *fakeFence) run(ctx context.Context, d time.Duration) {
	for end := ff.clock.Add(d); ff.clock.Before(end); ff.clock = ff.clock.Add(100 * time.Millisecond) {
		if ff.clock.UnixMilli()%1000 == 0 {
			ff.f.tick(ctx)
		}
		ff.f.check()
	}
}

// TestFencer: with etcd gone the agent kills its HA VMs (only those) by
// the lease's deadline less the fence lead — unless its storage heartbeat
// still gets through (isolated: it keeps them); with both gone it kills
// them by the later deadline, once; with fencing off it kills nothing.
func TestFencer(t *testing.T) {
	ctx := t.Context()
	t.Run("management and storage lost", func(t *testing.T) {
		ff := newFakeFence(t)
		ff.f.granted(ff.clock)
		ff.run(ctx, 5*time.Second)
		if len(ff.killed) != 0 {
			t.Fatalf("killed %v while all answered", ff.killed)
		}
		lastProbe := ff.clock.Add(-time.Second) // ticks at whole seconds: the last one before the cut
		ff.etcdUp, ff.storageUp = false, false
		// The lease holds until at least lastProbe + 9 s (its answer); the
		// agent must be done by then less the lead (1 s).
		ff.run(ctx, 7*time.Second)
		if len(ff.killed) != 0 {
			t.Fatalf("killed %v at %v, before the deadline", ff.killed, ff.clock.Sub(lastProbe))
		}
		ff.run(ctx, 3*time.Second)
		if len(ff.killed) != 1 || ff.killed[0] != "web" {
			t.Fatalf("killed %v, want web (HA) only", ff.killed)
		}
		if got := ff.f.check(); !got.IsZero() {
			t.Fatalf("a fenced VM still counted: deadline %v", got)
		}
		ff.run(ctx, 10*time.Second)
		if len(ff.killed) != 1 {
			t.Fatalf("killed again: %v", ff.killed)
		}
	})
	t.Run("management only lost: isolated", func(t *testing.T) {
		ff := newFakeFence(t)
		ff.f.granted(ff.clock)
		ff.run(ctx, 3*time.Second)
		ff.etcdUp = false
		ff.run(ctx, 30*time.Second)
		if len(ff.killed) != 0 {
			t.Fatalf("killed %v while the storage heartbeat got through", ff.killed)
		}
		ff.storageUp = false
		ff.run(ctx, time.Second)
		if len(ff.killed) != 0 {
			t.Fatalf("killed %v a second after the heartbeat stopped (stale after 3 s, lead 1 s)", ff.killed)
		}
		ff.run(ctx, 2*time.Second)
		if len(ff.killed) != 1 {
			t.Fatalf("killed %v, want web 2 s after the last heartbeat", ff.killed)
		}
	})
	t.Run("fencing off", func(t *testing.T) {
		ff := newFakeFence(t)
		ff.f.kill = nil
		ff.f.granted(ff.clock)
		ff.etcdUp, ff.storageUp = false, false
		ff.run(ctx, time.Minute)
		if len(ff.killed) != 0 {
			t.Fatal(ff.killed)
		}
	})
}
