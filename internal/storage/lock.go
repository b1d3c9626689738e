package storage

import (
	"context"
	"slices"
	"sync"
)

// volumeLocks orders operations on the same volume file in this process:
// reading it as a backing or copy source is shared, creating, replacing,
// resizing or deleting it is exclusive. (Between hosts of a shared pool
// the caller's operation records serialize; creation is still refused
// atomically by link(2).) Keys are symlink-free paths.
var volumeLocks = lockTable{m: map[string]*lockState{}}

type lockTable struct {
	mu sync.Mutex
	m  map[string]*lockState
}

type lockState struct {
	readers int
	writer  bool
	changed chan struct{} // closed and replaced on every release
}

// lock takes shared locks on read and exclusive ones on write (a path in
// both is taken exclusively), in a fixed order, waiting until ctx is done.
func (t *lockTable) lock(ctx context.Context, read, write []string) (unlock func(), err error) {
	mode := map[string]bool{}
	for _, k := range read {
		if _, ok := mode[k]; !ok {
			mode[k] = false
		}
	}
	for _, k := range write {
		mode[k] = true
	}
	keys := make([]string, 0, len(mode))
	for k := range mode {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var held []string
	release := func() {
		for _, k := range held {
			t.release(k, mode[k])
		}
	}
	for _, k := range keys {
		if err := t.acquire(ctx, k, mode[k]); err != nil {
			release()
			return nil, err
		}
		held = append(held, k)
	}
	return release, nil
}

func (t *lockTable) acquire(ctx context.Context, key string, exclusive bool) error {
	for {
		t.mu.Lock()
		s := t.m[key]
		if s == nil {
			s = &lockState{changed: make(chan struct{})}
			t.m[key] = s
		}
		if !s.writer && (!exclusive || s.readers == 0) {
			if exclusive {
				s.writer = true
			} else {
				s.readers++
			}
			t.mu.Unlock()
			return nil
		}
		changed := s.changed
		t.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (t *lockTable) release(key string, exclusive bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[key]
	if exclusive {
		s.writer = false
	} else {
		s.readers--
	}
	close(s.changed)
	s.changed = make(chan struct{})
	if !s.writer && s.readers == 0 {
		delete(t.m, key)
	}
}
