package master

import (
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

// TestPlacementReachesSharedPools: a VM whose disk is a volume on a shared
// pool goes to a host that reaches that pool (its facts list it), not to
// the emptier one that does not; a pool recorded after a host's facts is
// taken as reached by it (the host has not said yet); a pool no host
// reaches fails the create naming it.
func TestPlacementReachesSharedPools(t *testing.T) {
	c := etcdtest.Start(t).Client()
	s := store.NewEtcd(c)
	ctx := t.Context()
	pool := func(name string) int64 {
		t.Helper()
		rev, err := s.Put(ctx, inventory.PoolKey(name), inventory.Marshal(v1.StoragePool{Name: name, Type: "shared", Path: "/mnt/" + name}), store.AnyRevision)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	pool("nas")
	pool("far")
	// The hosts' facts, as their agents publish them: h1 (much room)
	// reaches only its own pool, h2 also nas; neither far.
	facts := func(name string, mem int, reaches ...string) {
		t.Helper()
		addHost(t, s, name, 8, mem)
		h := v1.Host{Name: name, CPUs: 8, MemoryMiB: mem, Alive: true}
		for _, p := range append([]string{"local-" + name}, reaches...) {
			h.Storage = append(h.Storage, v1.StorageUsage{Pool: p, Type: "shared"})
		}
		_, now, err := s.List(ctx, inventory.Pools)
		if err != nil {
			t.Fatal(err)
		}
		h.StorageRevision = now
		if _, err := s.Put(ctx, inventory.HostInfoKey(name), inventory.Marshal(h), store.AnyRevision); err != nil {
			t.Fatal(err)
		}
	}
	facts("h1", 16384)
	facts("h2", 2048, "nas")
	startMaster(t, c, s, "h1")

	create := func(name, volume string) v1.Operation {
		t.Helper()
		id, err := submitCreate(ctx, s, name, 256, func(sp *v1.VMSpec) { sp.Disks = []v1.Disk{{Name: "disk0", Volume: volume}} })
		if err != nil {
			t.Fatal(err)
		}
		return waitOp(t, s, id, time.Minute)
	}
	if op := create("on-nas", "nas/web.raw"); op.Host != "h2" {
		t.Errorf("a vm on nas went to %q (%s %+v), want h2: h1 does not reach nas", op.Host, op.State, op.Error)
	}
	if op := create("on-far", "far/web.raw"); op.State != v1.OpFailed || op.Error == nil || !strings.Contains(op.Error.Message, "far") {
		t.Errorf("a vm on a pool no host reaches: %s on %q %+v, want failed naming the pool", op.State, op.Host, op.Error)
	}
	pool("new") // after the hosts' facts: not known to them yet
	if op := create("on-new", "new/web.raw"); op.Host == "" {
		t.Errorf("a vm on a pool the hosts have not reported yet: %s %+v, want placed", op.State, op.Error)
	}
}
