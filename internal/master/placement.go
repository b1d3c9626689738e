package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/migrate"
	"hangar/internal/scheduler"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// commitAttempts bounds how often a plan that went stale (an allocation
// written after it was read) is made again.
const commitAttempts = 10

// opChanged handles one operation record: a create waiting for a host is
// placed, an operation an agent handed off is finished.
func (l *leader) opChanged(ctx context.Context, kv store.KV) {
	var op v1.Operation
	if err := json.Unmarshal(kv.Value, &op); err != nil {
		return // the agents refuse and report bad records
	}
	if op.Done() || vm.ValidateOp(op) != nil || inventory.OpKey(op.ID) != kv.Key {
		return
	}
	var err error
	switch {
	case op.Kind == "create" && op.Host == "" && op.State == v1.OpPending:
		err = l.place(ctx, op.ID)
	case op.Kind == "create" && op.Host != "" && op.State == v1.OpPending:
		err = l.replaceIfDead(ctx, op.ID)
	case op.Kind == "migrate" && op.Host == "" && op.State == v1.OpPending:
		err = l.startMigration(ctx, op.ID)
	case op.Kind == "evacuate" && op.Host == "":
		err = l.startEvacuation(ctx, op.ID)
	case op.HandOff:
		err = l.finish(ctx, op.ID)
	default:
		return
	}
	if err != nil && ctx.Err() == nil {
		l.log.Warn("operation", "op", op.ID, "kind", op.Kind, "target", op.Target, "err", err)
	}
}

// snapshot is the pool as the master plans on it: read at one revision.
type snapshot struct {
	rev    int64
	hosts  []v1.Host
	allocs map[string]map[string]inventory.Alloc // host → vm → booking
	specs  map[string]v1.VMSpec
	policy scheduler.Policy // the pool's admission settings
	pools  []store.Item[v1.StoragePool]
}

func (l *leader) snapshot(ctx context.Context) (snapshot, error) {
	s := snapshot{allocs: map[string]map[string]inventory.Alloc{}, specs: map[string]v1.VMSpec{}}
	// Allocations first: their revision is the one the plan is
	// conditioned on; what is read after it is at least as new.
	allocs, rev, err := store.ListJSON[inventory.Alloc](ctx, l.cfg.Store, inventory.Allocs)
	if err != nil {
		return s, fmt.Errorf("list allocations: %w", err)
	}
	s.rev = rev
	for _, a := range allocs {
		host, name, ok := allocKeyParts(a.Key)
		if !ok || a.Value.CPUs < 0 || a.Value.MemoryMiB < 0 {
			l.log.Warn("ignoring a bad allocation record", "key", a.Key)
			continue
		}
		if s.allocs[host] == nil {
			s.allocs[host] = map[string]inventory.Alloc{}
		}
		s.allocs[host][name] = a.Value
	}
	inv := inventory.Inventory{S: l.cfg.Store}
	if s.policy, err = inv.Admission(ctx); err != nil {
		return s, err
	}
	hosts, err := inv.HostInfos(ctx)
	if err != nil {
		return s, err
	}
	live, err := inv.LiveHosts(ctx)
	if err != nil {
		return s, err
	}
	inMaint, err := inv.HostsInMaintenance(ctx)
	if err != nil {
		return s, err
	}
	for _, h := range hosts {
		if vm.ValidateName("name", h.Name) != nil {
			continue
		}
		h.Alive = live[h.Name]
		h.Maintenance = inMaint[h.Name]
		h.AllocatedMemoryMiB = 0
		for _, a := range s.allocs[h.Name] {
			h.AllocatedMemoryMiB += a.MemoryMiB
		}
		s.hosts = append(s.hosts, h)
	}
	specs, _, err := l.specs(ctx)
	if err != nil {
		return s, err
	}
	for _, sp := range specs {
		s.specs[sp.Name] = sp
	}
	if s.pools, err = l.poolItems(ctx); err != nil {
		return s, err
	}
	return s, nil
}

// poolRecords are the storage pools of s.
func (s snapshot) poolRecords() []v1.StoragePool { return poolValues(s.pools) }

// reached names the storage pools host h reaches: those its facts list
// (Storage), and those recorded or changed after the pool records its
// facts answer for (StorageRevision): not known to it yet, taken as
// reached rather than refused.
func (s snapshot) reached(h v1.Host) map[string]bool {
	out := map[string]bool{}
	for _, u := range h.Storage {
		out[u.Pool] = true
	}
	for _, p := range s.pools {
		if p.Rev > h.StorageRevision {
			out[p.Value.Name] = true
		}
	}
	return out
}

// specs lists the VM records that pass the API's checks (state is input:
// a record whose name is not its key's, or that fails validation, is
// left alone and logged) with their revisions.
func (l *leader) specs(ctx context.Context) ([]v1.VMSpec, []int64, error) {
	items, _, err := store.ListJSON[v1.VMSpec](ctx, l.cfg.Store, inventory.VMs)
	if err != nil {
		return nil, nil, fmt.Errorf("list vms: %w", err)
	}
	var specs []v1.VMSpec
	var revs []int64
	for _, it := range items {
		sp := it.Value
		if vm.ValidateName("name", sp.Name) != nil || it.Key != inventory.VMKey(sp.Name) || vm.Validate(sp, 0) != nil ||
			(sp.Host != "" && vm.ValidateName("host", sp.Host) != nil) {
			l.log.Warn("ignoring a vm record that fails its checks", "key", it.Key)
			continue
		}
		specs = append(specs, sp)
		revs = append(revs, it.Rev)
	}
	return specs, revs, nil
}

// allocKeyParts splits /hangar/alloc/<host>/<vm>.
func allocKeyParts(key string) (host, name string, ok bool) {
	rest := key[len(inventory.Allocs):]
	for i := 0; i < len(rest); i++ {
		if rest[i] == '/' {
			host, name = rest[:i], rest[i+1:]
			return host, name, vm.ValidateName("host", host) == nil && vm.ValidateName("name", name) == nil
		}
	}
	return "", "", false
}

// request is the scheduler's request for a new VM: its spec's sizes and
// placement settings, a pin (the host its source volumes are on), and the
// hosts where another VM forwards one of its host ports excluded.
func (s snapshot) request(spec v1.VMSpec, pin string) scheduler.Request {
	r := scheduler.FromSpec(spec, migrate.SharedPools(spec, v1.VMStatus{}, s.poolRecords()))
	if pin != "" {
		r.Placement, r.PreferredHosts = scheduler.PlacementManual, []string{pin}
	}
	mine := map[string]bool{}
	for _, p := range vm.HostPorts(spec) {
		mine[p] = true
	}
	for _, h := range s.hosts {
		if !s.portsFree(h.Name, spec.Name, mine) {
			r.Exclude = append(r.Exclude, h.Name)
		}
	}
	return r
}

// plan is the scheduler's snapshot of the pool.
func (s snapshot) plan() scheduler.Snapshot {
	out := scheduler.Snapshot{Policy: s.policy}
	for _, h := range s.hosts {
		out.Hosts = append(out.Hosts, scheduler.Host{Name: h.Name, CPUs: h.CPUs, MemoryMiB: h.MemoryMiB, Alive: h.Alive, Maintenance: h.Maintenance,
			Pools: slices.Sorted(maps.Keys(s.reached(h)))})
	}
	for host, vms := range s.allocs {
		for name, a := range vms {
			out.Allocs = append(out.Allocs, scheduler.Alloc{Host: host, VM: name, CPUs: a.CPUs, MemoryMiB: a.MemoryMiB, AntiAffinity: a.AntiAffinityGroup})
		}
	}
	return out
}

func (s snapshot) portsFree(host, name string, mine map[string]bool) bool {
	if len(mine) == 0 {
		return true
	}
	for _, o := range s.specs {
		if o.Host != host || o.Name == name {
			continue
		}
		for _, p := range vm.HostPorts(o) {
			if mine[p] {
				return false
			}
		}
	}
	return true
}

// place books a host for a new VM: it reads the pool at one revision,
// picks a host, and commits the spec's host, the booking, the owner
// record and the operation's host (and its task for that host's agent)
// in one transaction conditioned on its leadership and on no booking
// having changed since it read them. A stale plan is made again.
func (l *leader) place(ctx context.Context, id string) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	for attempt := 1; ; attempt++ {
		op, oprev, err := inv.Op(ctx, id)
		if err != nil {
			return err
		}
		if op.Done() || op.Host != "" || op.State != v1.OpPending {
			return nil
		}
		var args v1.CreateArgs
		if len(op.Args) > 0 {
			if err := json.Unmarshal(op.Args, &args); err != nil {
				return l.fail(ctx, op, oprev, fmt.Errorf("create args: %v", err), nil)
			}
		}
		spec, specRev, err := inv.Spec(ctx, op.Target)
		if errors.Is(err, store.ErrNotFound) {
			return l.fail(ctx, op, oprev, fmt.Errorf("vm %q: its record is gone", op.Target), nil)
		}
		if err != nil {
			return err
		}
		if spec.Name != op.Target || vm.Validate(spec, 0) != nil || spec.Host != "" {
			return l.fail(ctx, op, oprev, fmt.Errorf("vm %q: its record is not a vm waiting for a host", op.Target), nil)
		}
		snap, err := l.snapshot(ctx)
		if err != nil {
			return err
		}
		plan, err := scheduler.Plan(snap.plan(), []scheduler.Request{snap.request(spec, args.Host)})
		if err != nil {
			return fmt.Errorf("plan: %w", err)
		}
		host, perr := plan[0].Host, plan[0].Err
		if perr != nil {
			if args.Host != "" {
				perr = fmt.Errorf("on host %q, where its source volumes are: %w", args.Host, perr)
			}
			return l.fail(ctx, op, oprev, errdefs.Placement(perr), []store.Op{store.DeleteOp(inventory.VMKey(spec.Name), specRev)})
		}
		spec.Host = host
		if err := AdmitHA(ctx, l.cfg.Store, l.log, spec); err != nil {
			if errdefs.Code(err) != v1.CodeFailedPrecondition {
				return err
			}
			return l.fail(ctx, op, oprev, err, []store.Op{store.DeleteOp(inventory.VMKey(spec.Name), specRev)})
		}
		op.Host = host
		op.Updated = time.Now().UTC()
		op.Progress = v1.Progress{Phase: "placed on " + host}
		_, err = l.Commit(ctx, []store.Cond{store.Unchanged(inventory.Allocs, snap.rev)},
			store.PutOp(inventory.VMKey(spec.Name), inventory.Marshal(spec), specRev),
			store.PutOp(inventory.AllocKey(host, spec.Name), inventory.Marshal(allocOf(spec)), store.MustNotExist),
			store.PutOp(inventory.OwnerKey(spec.Name), inventory.Marshal(inventory.Owner{Host: host, Epoch: 1}), store.MustNotExist),
			store.PutOp(inventory.OpKey(op.ID), inventory.Marshal(op), oprev),
			store.PutOp(inventory.TaskKey(host, op.ID), []byte(op.ID), store.MustNotExist))
		if errors.Is(err, store.ErrConflict) && attempt < commitAttempts {
			if !l.stillLeading(ctx) {
				return errors.New("leadership lost")
			}
			continue
		}
		if err != nil {
			return err
		}
		l.log.Info("vm placed", "vm", spec.Name, "host", host, "op", op.ID)
		return nil
	}
}

// replaceIfDead takes a create back from a host that died before its
// agent claimed it (the operation is still pending, so nothing of the VM
// exists there): the host's booking, owner record and task go, the VM
// waits for a host again, and place puts it on a live one. The take-back
// is conditioned on the operation and spec being unchanged, so an agent
// that claims the operation meanwhile keeps it.
func (l *leader) replaceIfDead(ctx context.Context, id string) error {
	inv := inventory.Inventory{S: l.cfg.Store}
	op, oprev, err := inv.Op(ctx, id)
	if err != nil {
		return err
	}
	if op.State != v1.OpPending || op.Host == "" || vm.ValidateName("host", op.Host) != nil {
		return nil
	}
	alive, err := inv.HostAlive(ctx, op.Host)
	if err != nil || alive {
		return err
	}
	spec, specRev, err := inv.Spec(ctx, op.Target)
	if err != nil {
		return err
	}
	if spec.Name != op.Target || spec.Host != op.Host {
		return nil
	}
	dead := op.Host
	spec.Host, op.Host = "", ""
	op.Updated = time.Now().UTC()
	op.Progress = v1.Progress{Phase: "host " + dead + " died before it took the create: placing again"}
	if _, err := l.Commit(ctx, nil,
		store.PutOp(inventory.OpKey(op.ID), inventory.Marshal(op), oprev),
		store.PutOp(inventory.VMKey(spec.Name), inventory.Marshal(spec), specRev),
		store.DeleteOp(inventory.TaskKey(dead, op.ID), store.AnyRevision),
		store.DeleteOp(inventory.AllocKey(dead, spec.Name), store.AnyRevision),
		store.DeleteOp(inventory.OwnerKey(spec.Name), store.AnyRevision)); err != nil {
		return err
	}
	l.log.Info("create taken back from a dead host", "vm", spec.Name, "host", dead, "op", op.ID)
	return l.place(ctx, op.ID)
}

func allocOf(spec v1.VMSpec) inventory.Alloc {
	return inventory.Alloc{CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB, AntiAffinityGroup: spec.AntiAffinityGroup}
}

// fail ends an operation the master cannot carry out, with extra writes
// (removing the record of a VM that never got a host).
func (l *leader) fail(ctx context.Context, op v1.Operation, rev int64, cause error, extra []store.Op) error {
	op.State, op.Updated = v1.OpFailed, time.Now().UTC()
	op.Error = errdefs.ToAPI(cause)
	ops := append([]store.Op{store.PutOp(inventory.OpKey(op.ID), inventory.Marshal(op), rev)}, extra...)
	if _, err := l.Commit(ctx, nil, ops...); err != nil {
		return err
	}
	l.log.Info("operation failed", "op", op.ID, "kind", op.Kind, "target", op.Target, "err", cause)
	return nil
}

// rebook brings the booking of every owned VM whose CPUs or memory
// changed (a PATCH of a stopped VM, which the API admitted against its
// host) to its spec's size, conditioned on the spec it read.
func (l *leader) rebook(ctx context.Context, specs []v1.VMSpec, revs []int64, owned map[string]bool) error {
	allocs, err := (inventory.Inventory{S: l.cfg.Store}).AllocsByHost(ctx)
	if err != nil {
		return err
	}
	for i, sp := range specs {
		a, ok := allocs[sp.Host][sp.Name]
		if sp.Host == "" || !owned[sp.Name] || !ok || (a.CPUs == sp.CPUs && a.MemoryMiB == sp.MemoryMiB) {
			continue
		}
		_, err := l.Commit(ctx, []store.Cond{{Key: inventory.VMKey(sp.Name), ExpectRev: revs[i]}},
			store.PutOp(inventory.AllocKey(sp.Host, sp.Name), inventory.Marshal(allocOf(sp)), store.AnyRevision))
		if err != nil && !errors.Is(err, store.ErrConflict) {
			return err
		}
		if err == nil {
			l.log.Info("booking resized", "vm", sp.Name, "host", sp.Host, "cpus", sp.CPUs, "memoryMiB", sp.MemoryMiB)
		}
	}
	return nil
}

// adoptPlaced records an owner and a booking for every VM placed on a
// host without them: VMs from before the pool had a master, and clones,
// which land on their source's host.
func (l *leader) adoptPlaced(ctx context.Context) error {
	specs, revs, err := l.specs(ctx)
	if err != nil {
		return err
	}
	owners, _, err := store.ListJSON[inventory.Owner](ctx, l.cfg.Store, inventory.Owners)
	if err != nil {
		return fmt.Errorf("list owners: %w", err)
	}
	owned := map[string]bool{}
	for _, o := range owners {
		owned[inventory.NameFromKey(o.Key)] = true
	}
	if err := l.rebook(ctx, specs, revs, owned); err != nil {
		return err
	}
	for i, sp := range specs {
		if sp.Host == "" || owned[sp.Name] || vm.ValidateName("host", sp.Host) != nil {
			continue
		}
		_, err := l.Commit(ctx, []store.Cond{{Key: inventory.VMKey(sp.Name), ExpectRev: revs[i]}},
			store.PutOp(inventory.OwnerKey(sp.Name), inventory.Marshal(inventory.Owner{Host: sp.Host, Epoch: 1}), store.MustNotExist),
			store.PutOp(inventory.AllocKey(sp.Host, sp.Name), inventory.Marshal(allocOf(sp)), store.AnyRevision))
		if err != nil && !errors.Is(err, store.ErrConflict) {
			return err
		}
		if err == nil {
			l.log.Info("owner recorded", "vm", sp.Name, "host", sp.Host)
		}
	}
	return nil
}
