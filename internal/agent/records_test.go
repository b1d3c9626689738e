package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	v1 "hangar/api/v1"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/inventory"
	"hangar/internal/master"
	"hangar/internal/qemu"
	"hangar/internal/storage"
	"hangar/internal/store"
)

// testAgent is an agent of host "testhost" on a real in-process etcd
// member, with its data dir at base/data: a victim directory at
// base/victimdir is outside everything the agent may touch.
type testAgent struct {
	a      *Agent
	s      store.Store
	base   string
	victim string // base/victimdir/precious, must survive every case
}

func startAgent(t *testing.T, opts ...func(*Agent)) *testAgent {
	t.Helper()
	base := t.TempDir()
	st := store.NewEtcd(etcdtest.Start(t).Client())
	data := filepath.Join(base, "data")
	pool, err := storage.OpenDirPool("local-testhost", filepath.Join(data, "pools", "default"))
	if err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(base, "victimdir", "precious")
	if err := os.MkdirAll(filepath.Dir(victim), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim, []byte("do not delete"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Host: "testhost", DataDir: data, RunDir: filepath.Join(base, "run"), Store: st,
		Caps: qemu.Capabilities{Binary: "/bin/false", Accel: "tcg"}, Pool: pool,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(a)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	// The pool master finishes handed-off operations (deletes, failed
	// creates), as in hangar serve.
	m := master.New(master.Config{Client: st.Client(), Store: st, Host: "testhost", Log: a.cfg.Log})
	mdone := make(chan struct{})
	go func() { defer close(mdone); _ = m.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		<-mdone
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("agent did not stop")
		}
	})
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}
	return &testAgent{a: a, s: st, base: base, victim: victim}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func (ta *testAgent) put(t *testing.T, key string, v any) {
	t.Helper()
	if _, err := ta.s.Put(t.Context(), key, inventory.Marshal(v), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
}

// putOp writes an operation and its host's task, as the API does.
func (ta *testAgent) putOp(t *testing.T, op v1.Operation) {
	t.Helper()
	if _, err := ta.s.Txn(t.Context(), nil, inventory.NewOpWrites(op)...); err != nil {
		t.Fatal(err)
	}
}

// plantOp writes an operation record as a local attacker with etcd access
// would, and waits until the agent finished it.
func (ta *testAgent) plantOp(t *testing.T, op v1.Operation) v1.Operation {
	t.Helper()
	if op.ID == "" {
		op.ID = uuid.Must(uuid.NewV7()).String()
	}
	if op.Host == "" {
		op.Host = "testhost"
	}
	op.State, op.Created, op.Updated = v1.OpPending, time.Now().UTC(), time.Now().UTC()
	ta.putOp(t, op)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got v1.Operation
		if _, err := store.GetJSON(t.Context(), ta.s, inventory.OpKey(op.ID), &got); err != nil {
			t.Fatal(err)
		}
		if got.Done() {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("operation %s (%s %q) still %s", op.ID, op.Kind, op.Target, got.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (ta *testAgent) victimSurvives(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(ta.victim)
	if err != nil || string(b) != "do not delete" {
		t.Fatalf("victim file outside the data dir: %q, %v", b, err)
	}
}

func validSpec(name string) v1.VMSpec {
	return v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: 64, Machine: "q35", CPUModel: "max", Host: "testhost",
		RestartPolicy: v1.RestartNever, Power: v1.PowerStopped, Boot: []string{"disk"},
		Disks: []v1.Disk{{Name: "disk0", Media: "disk", Bus: "virtio", SizeMiB: 1}}}
}

func mustFail(t *testing.T, op v1.Operation, want string) {
	t.Helper()
	if op.State != v1.OpFailed || op.Error == nil || !strings.Contains(op.Error.Message, want) {
		t.Fatalf("operation %s on %q: state %s, error %+v; want failed with %q", op.Kind, op.Target, op.State, op.Error, want)
	}
	if !strings.Contains(op.Error.Message, "refused by the agent") || op.Error.Code != v1.CodeInvalidArgument {
		t.Fatalf("operation %s on %q: error %+v is not the agent's refusal of a bad record", op.Kind, op.Target, op.Error)
	}
}

// TestPlantedRecordsAreRefused plants the records of issue 7.1 — a spec and
// an operation whose target leaves the data dir — and other hostile shapes
// in etcd: each operation fails with a clear error and nothing outside the
// agent's directories (nor inside, for the refused VM) is touched.
func TestPlantedRecordsAreRefused(t *testing.T) {
	ta := startAgent(t)
	ctx := t.Context()
	poolDir := ta.a.cfg.Pool.Path

	t.Run("issue target ../../victimdir", func(t *testing.T) {
		// The spec's image does not exist, so the old agent's create
		// failed and its rollback removed logs/../../victimdir.
		spec := validSpec("../../victimdir")
		spec.Disks = []v1.Disk{{Name: "disk0", Media: "disk", Bus: "virtio", Image: "/nonexistent/x.qcow2"}}
		ta.put(t, inventory.VMKey(spec.Name), spec)
		op := ta.plantOp(t, v1.Operation{Kind: "create", Target: spec.Name})
		mustFail(t, op, "target")
		ta.victimSurvives(t)
	})
	for _, target := range []string{"", "/abs/victimdir", "a/../../b", "..", "UPPER", strings.Repeat("a", 64)} {
		t.Run("target "+target, func(t *testing.T) {
			op := ta.plantOp(t, v1.Operation{Kind: "delete", Target: target, Args: json.RawMessage(`{"force":true}`)})
			mustFail(t, op, "target")
			ta.victimSurvives(t)
		})
	}
	t.Run("volume target escapes its pool", func(t *testing.T) {
		op := ta.plantOp(t, v1.Operation{Kind: "volume-flatten", Target: "local-testhost/../../victimdir",
			Args: json.RawMessage(`{"pool":"local-testhost","source":"../../victimdir"}`)})
		mustFail(t, op, "target")
	})
	t.Run("spec named differently from its key", func(t *testing.T) {
		spec := validSpec("../../victimdir")
		ta.put(t, inventory.VMKey("good1"), spec)
		op := ta.plantOp(t, v1.Operation{Kind: "create", Target: "good1"})
		mustFail(t, op, `names vm "../../victimdir"`)
		if _, err := os.Stat(filepath.Join(poolDir, "vms", "good1")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the refused create made volumes: %v", err)
		}
		if _, err := ta.s.Get(ctx, inventory.VMKey("good1")); err != nil {
			t.Fatalf("the refused create touched the records: %v", err)
		}
		ta.victimSurvives(t)
	})
	t.Run("spec failing validation", func(t *testing.T) {
		spec := validSpec("bad2")
		spec.Disks[0].Image = "relative/../../victimdir/precious"
		spec.Disks[0].SizeMiB = 0
		ta.put(t, inventory.VMKey("bad2"), spec)
		op := ta.plantOp(t, v1.Operation{Kind: "create", Target: "bad2"})
		mustFail(t, op, "disks[0].image")
		if _, err := os.Stat(filepath.Join(poolDir, "vms", "bad2")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the refused create made volumes: %v", err)
		}
	})
	t.Run("op host differs from the vm's host", func(t *testing.T) {
		spec := validSpec("elsewhere")
		spec.Host = "otherhost"
		ta.put(t, inventory.VMKey("elsewhere"), spec)
		ta.put(t, inventory.StatusKey("elsewhere"), v1.VMStatus{State: v1.StateStopped, Host: "otherhost"})
		op := ta.plantOp(t, v1.Operation{Kind: "delete", Target: "elsewhere", Args: json.RawMessage(`{"force":true}`)})
		mustFail(t, op, `placed on host "otherhost"`)
		if _, err := ta.s.Get(ctx, inventory.VMKey("elsewhere")); err != nil {
			t.Fatalf("the refused delete removed the vm record: %v", err)
		}
	})
	t.Run("unknown kind", func(t *testing.T) {
		op := ta.plantOp(t, v1.Operation{Kind: "format-disk", Target: "elsewhere"})
		mustFail(t, op, `unknown operation kind "format-disk"`)
	})
	t.Run("args with unknown fields", func(t *testing.T) {
		ta.put(t, inventory.VMKey("argy"), validSpec("argy"))
		op := ta.plantOp(t, v1.Operation{Kind: "stop", Target: "argy", Args: json.RawMessage(`{"force":true,"rm":"/"}`)})
		mustFail(t, op, `unknown field "rm"`)
	})
	t.Run("args of a kind without args", func(t *testing.T) {
		op := ta.plantOp(t, v1.Operation{Kind: "start", Target: "argy", Args: json.RawMessage(`{"stateFile":"/x"}`)})
		mustFail(t, op, "takes no arguments")
	})
	t.Run("bad op id", func(t *testing.T) {
		op := ta.plantOp(t, v1.Operation{ID: "../x", Kind: "stop", Target: "argy"})
		mustFail(t, op, "not an operation id")
	})
	t.Run("status disk outside the pool", func(t *testing.T) {
		// The old agent resized the file a status record named: here the
		// victim, with qemu-img resize as root.
		spec := validSpec("resizer")
		ta.put(t, inventory.VMKey("resizer"), spec)
		ta.put(t, inventory.StatusKey("resizer"), v1.VMStatus{State: v1.StateStopped, Host: "testhost",
			Disks: []v1.DiskStatus{{Name: "disk0", Path: ta.victim, Format: "raw", Created: true}}})
		op := ta.plantOp(t, v1.Operation{Kind: "resize", Target: "resizer", Args: json.RawMessage(`{"disk":"disk0","sizeMiB":2}`)})
		if op.State != v1.OpFailed || !strings.Contains(op.Error.Message, "escapes the storage pool") {
			t.Fatalf("resize with a status disk outside the pool: %s %+v", op.State, op.Error)
		}
		ta.victimSurvives(t)
	})
	t.Run("status state file outside the vm dir", func(t *testing.T) {
		ta.put(t, inventory.VMKey("sleeper"), validSpec("sleeper"))
		ta.put(t, inventory.StatusKey("sleeper"), v1.VMStatus{State: v1.StateSuspended, Host: "testhost",
			StateFile: filepath.Join(poolDir, "vms", "resizer", "suspend.state")})
		op := ta.plantOp(t, v1.Operation{Kind: "delete", Target: "sleeper"})
		if op.State != v1.OpFailed || !strings.Contains(op.Error.Message, "stateFile") {
			t.Fatalf("delete with a foreign state file: %s %+v", op.State, op.Error)
		}
	})
	t.Run("pool record at /", func(t *testing.T) {
		ta.put(t, inventory.PoolKey("evil"), v1.StoragePool{Name: "evil", Type: storage.TypeDir, Path: "/"})
		spec := validSpec("pooled")
		spec.Disks = []v1.Disk{{Name: "disk0", Media: "disk", Bus: "virtio", Volume: "evil/victimdir/precious"}}
		ta.put(t, inventory.VMKey("pooled"), spec)
		op := ta.plantOp(t, v1.Operation{Kind: "create", Target: "pooled"})
		if op.State != v1.OpFailed || !strings.Contains(op.Error.Message, `storage pool record "evil"`) {
			t.Fatalf("create on a pool at /: %s %+v", op.State, op.Error)
		}
		ta.victimSurvives(t)
	})
	t.Run("template record naming another directory", func(t *testing.T) {
		// The old DeleteTemplate removed templates/<record name>: with
		// "../vms", every VM's volumes.
		keep := filepath.Join(poolDir, "vms", "keeper", "disk0.qcow2")
		if err := os.MkdirAll(filepath.Dir(keep), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keep, []byte("disk"), 0o600); err != nil {
			t.Fatal(err)
		}
		tmpl := v1.Template{Name: "../vms", Pool: "local-testhost"}
		ta.put(t, inventory.TemplateKey("t1"), tmpl)
		err := ta.a.DeleteTemplate(ctx, tmpl)
		if !errors.Is(err, inventory.ErrInvalidRecord) {
			t.Fatalf("delete template %q: %v", tmpl.Name, err)
		}
		tmpl.Name = "t1"
		tmpl.Disks = []v1.Disk{{Name: "disk0", Volume: "local-testhost/vms/keeper/disk0.qcow2"}}
		ta.put(t, inventory.TemplateKey("t1"), tmpl)
		if err := ta.a.DeleteTemplate(ctx, v1.Template{Name: "t1"}); !errors.Is(err, inventory.ErrInvalidRecord) {
			t.Fatalf("delete template t1 with a volume outside it: %v", err)
		}
		if _, err := os.Stat(keep); err != nil {
			t.Fatalf("a vm's volume went with a template: %v", err)
		}
	})
}

// TestSetStatusIsCompareAndSwap: a status write that races another writer
// is applied to the newer record, not over it.
func TestSetStatusIsCompareAndSwap(t *testing.T) {
	ta := startAgent(t)
	ctx := t.Context()
	ta.put(t, inventory.VMKey("cas1"), validSpec("cas1"))
	ta.put(t, inventory.StatusKey("cas1"), v1.VMStatus{State: v1.StateStopped, Host: "testhost"})
	m := &machine{a: ta.a, name: "cas1", log: ta.a.cfg.Log}
	calls := 0
	err := m.setStatus(ctx, func(st *v1.VMStatus) {
		calls++
		if calls == 1 {
			// Another writer gets in between this read and its write.
			ta.put(t, inventory.StatusKey("cas1"), v1.VMStatus{State: v1.StateStopped, Host: "testhost", Restarts: 7})
		}
		st.Reason = "mine"
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := ta.a.inv.Status(ctx, "cas1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Restarts != 7 || st.Reason != "mine" || calls != 2 {
		t.Fatalf("status %+v after %d calls: the concurrent write was lost or not re-applied", st, calls)
	}

	// The spec that places the VM changes between read and write: the
	// update is applied again to what the new spec says; once the VM is
	// placed on another host this agent no longer writes its status.
	calls = 0
	err = m.setStatus(ctx, func(st *v1.VMStatus) {
		calls++
		if calls == 1 {
			moved := validSpec("cas1")
			moved.Host = "otherhost"
			ta.put(t, inventory.VMKey("cas1"), moved)
		}
		st.Reason = "late"
	})
	if err == nil || !strings.Contains(err.Error(), `placed on host "otherhost"`) || calls != 1 {
		t.Fatalf("status write for a vm placed elsewhere: %v after %d calls", err, calls)
	}
	if st, _ := ta.a.inv.Inventory.Status(ctx, "cas1"); st.Reason != "mine" {
		t.Fatalf("a late status write landed after the vm moved: reason %q", st.Reason)
	}
}

// TestOpResultDoesNotOverwriteTakeover: an operation whose record changed
// after this agent claimed it (another host took it over) keeps the other
// writer's record: the result is written conditioned on the claimed revision.
func TestOpResultDoesNotOverwriteTakeover(t *testing.T) {
	claimed, proceed, finished := make(chan struct{}), make(chan struct{}), make(chan struct{})
	ta := startAgent(t, func(a *Agent) {
		a.onPoint = func(p string) {
			switch p {
			case "op-claimed":
				claimed <- struct{}{}
				<-proceed
			case "op-finished":
				close(finished)
			}
		}
	})
	ctx := t.Context()
	ta.put(t, inventory.VMKey("taken"), validSpec("taken"))
	ta.put(t, inventory.StatusKey("taken"), v1.VMStatus{State: v1.StateStopped, Host: "testhost"})
	id := uuid.Must(uuid.NewV7()).String()
	ta.putOp(t, v1.Operation{ID: id, Kind: "stop", Target: "taken", Host: "testhost", State: v1.OpPending})
	wait := func(c chan struct{}, what string) {
		select {
		case <-c:
		case <-time.After(20 * time.Second):
			t.Fatalf("operation not %s", what)
		}
	}
	wait(claimed, "claimed")
	taken := v1.Operation{ID: id, Kind: "stop", Target: "taken", Host: "otherhost", State: v1.OpRunning, Attempts: 1}
	ta.put(t, inventory.OpKey(id), taken)
	close(proceed)
	wait(finished, "finished")
	var got v1.Operation
	if _, err := store.GetJSON(ctx, ta.s, inventory.OpKey(id), &got); err != nil {
		t.Fatal(err)
	}
	if got.Host != "otherhost" || got.State != v1.OpRunning {
		t.Fatalf("operation after the takeover: host %s, state %s: the finished worker overwrote it", got.Host, got.State)
	}
}

// TestCheckStatus: which files a status record may name.
func TestCheckStatus(t *testing.T) {
	ta := startAgent(t)
	ctx := t.Context()
	pool := ta.a.cfg.Pool.Path
	own := func(f string) string { return filepath.Join(pool, "vms", "st1", f) }
	if err := os.MkdirAll(filepath.Join(pool, "vms", "st1"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A symlink inside the pool that leads out of it.
	if err := os.Symlink(filepath.Dir(ta.victim), filepath.Join(pool, "vms", "st1", "out")); err != nil {
		t.Fatal(err)
	}
	spec := validSpec("st1")
	spec.Disks = append(spec.Disks, v1.Disk{Name: "cd", Media: "cdrom", Bus: "sata", Image: "/srv/iso/x.iso"})
	disk := v1.DiskStatus{Name: "disk0", Path: own("disk0.qcow2"), Format: "qcow2", Created: true}
	cd := v1.DiskStatus{Name: "cd", Path: "/srv/iso/x.iso", Format: "raw"}
	good := v1.VMStatus{State: v1.StateSuspended, Disks: []v1.DiskStatus{disk, cd}, StateFile: own("suspend.state"),
		Snapshots: []v1.Snapshot{{Name: "s1", Overlays: map[string]string{"disk0": own("disk0.s1.qcow2")},
			Bases: map[string]string{"disk0": own("disk0.qcow2")}}}}
	cases := []struct {
		name   string
		mutate func(*v1.VMStatus)
		want   string // "" = valid
	}{
		{"valid", func(*v1.VMStatus) {}, ""},
		{"unknown state", func(st *v1.VMStatus) { st.State = "hacked" }, "unknown state"},
		{"disk outside the pool", func(st *v1.VMStatus) { st.Disks[0].Path = ta.victim }, "disks[0].path"},
		{"disk through a symlink out", func(st *v1.VMStatus) { st.Disks[0].Path = own("out/precious") }, "disks[0].path"},
		{"disk path not clean", func(st *v1.VMStatus) { st.Disks[0].Path = own("../../../../victimdir/precious") }, "disks[0].path"},
		{"disk is the pool itself", func(st *v1.VMStatus) { st.Disks[0].Path = pool }, "disks[0].path"},
		{"top outside", func(st *v1.VMStatus) { st.Disks[0].Top = "/etc/shadow" }, "disks[0].top"},
		{"protocol format", func(st *v1.VMStatus) { st.Disks[0].Format = "vvfat" }, "disks[0].format"},
		{"cdrom claimed as the vm's volume", func(st *v1.VMStatus) { st.Disks[1].Created = true }, "disks[1]"},
		{"state file of another vm", func(st *v1.VMStatus) {
			st.StateFile = filepath.Join(pool, "vms", "other", "suspend.state")
		}, "stateFile"},
		{"overlay in another vm's dir", func(st *v1.VMStatus) {
			st.Snapshots[0].Overlays["disk0"] = filepath.Join(pool, "vms", "other", "disk0.qcow2")
		}, "snapshots[0].overlays.disk0"},
		{"base outside", func(st *v1.VMStatus) { st.Snapshots[0].Bases["disk0"] = "/etc/shadow" }, "snapshots[0].bases.disk0"},
		{"snapshot name", func(st *v1.VMStatus) { st.Snapshots[0].Name = "../x" }, "snapshots[0].name"},
	}
	for _, c := range cases {
		st := good
		st.Disks = append([]v1.DiskStatus(nil), good.Disks...)
		sn := good.Snapshots[0]
		sn.Overlays, sn.Bases = map[string]string{"disk0": sn.Overlays["disk0"]}, map[string]string{"disk0": sn.Bases["disk0"]}
		st.Snapshots = []v1.Snapshot{sn}
		c.mutate(&st)
		err := ta.a.checkStatus(ctx, "st1", st, &spec)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (!errors.Is(err, inventory.ErrInvalidRecord) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: got %v, want an invalid record error about %q", c.name, err, c.want)
		}
	}
}
