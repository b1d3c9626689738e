// Package inventory is the layout of Hangar's records in the state store:
// VM specs (desired, written by the manager), VM statuses (observed, written
// by the owning agent), hosts (kept alive by a lease) and operations.
package inventory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/scheduler"
	"hangar/internal/store"
)

// Key prefixes.
const (
	Root      = "/hangar/"
	VMs       = Root + "vms/"
	Statuses  = Root + "status/"
	Hosts     = Root + "hosts/"
	Ops       = Root + "ops/"
	HostInfos = Root + "hostinfo/"
	Pools     = Root + "pools/"
	Templates = Root + "templates/"

	// The pool's records (issue 9; see docs/architecture.md "Many hosts").

	// Owners: /hangar/owner/<vm> = Owner, written by the pool master only.
	Owners = Root + "owner/"
	// Allocs: /hangar/alloc/<host>/<vm> = Alloc (CPU and memory booked for a
	// VM on a host), written by the pool master only.
	Allocs = Root + "alloc/"
	// Tasks: /hangar/tasks/<host>/<op id> marks an operation as work for one
	// host; each agent watches only its own prefix.
	Tasks = Root + "tasks/"
	// Migrations: /hangar/migrations/<vm> (phase, master), .../<vm>/source
	// and .../<vm>/target (each agent its own part).
	Migrations = Root + "migrations/"
	// Leftovers: /hangar/leftovers/<host>/<vm>, a migrated VM's local disk
	// files that its source host still has (it was not alive to remove
	// them when the migration ended); written by the pool master with the
	// end of the migration, removed by that host's agent once it deleted
	// them.
	Leftovers = Root + "leftovers/"
	// Election is the prefix of the pool master's etcd election.
	Election = Root + "election/master"
	// PoolRecord is the pool's identity: name, CA fingerprint, CPU model.
	PoolRecord = Root + "pool"
	// JoinTokens: /hangar/jointokens/<id>, one per join token issued.
	JoinTokens = Root + "jointokens/"
	// Maintenance: /hangar/maintenance/<host>, present while a host is in
	// maintenance (the scheduler places nothing there).
	Maintenance = Root + "maintenance/"
	// Liveness: /hangar/liveness/<host> = HostLiveness, the pool master's
	// judgement of a host whose lease expired (HA), written by the master
	// only; removed when the host holds its lease again.
	Liveness = Root + "liveness/"
	// HARestarts: /hangar/harestarts/<vm> = HARestarts, when the master
	// restarted the VM after its host died (maxRestarts per window).
	HARestartsPrefix = Root + "harestarts/"
	// Settings: the pool's admission settings (v1.PoolSettings), written
	// by the API; absent until set (the defaults).
	Settings = Root + "settings"
)

func OwnerKey(vm string) string               { return Owners + vm }
func AllocKey(host, vm string) string         { return Allocs + host + "/" + vm }
func AllocPrefix(host string) string          { return Allocs + host + "/" }
func TaskKey(host, op string) string          { return Tasks + host + "/" + op }
func TaskPrefix(host string) string           { return Tasks + host + "/" }
func MigrationKey(vm string) string           { return Migrations + vm }
func MigrationPartKey(vm, part string) string { return Migrations + vm + "/" + part }
func MaintenanceKey(host string) string       { return Maintenance + host }
func LeftoverKey(host, vm string) string      { return Leftovers + host + "/" + vm }
func LeftoverPrefix(host string) string       { return Leftovers + host + "/" }
func LivenessKey(host string) string          { return Liveness + host }
func HARestartsKey(vm string) string          { return HARestartsPrefix + vm }

// HostLiveness is the master's judgement of a host (ha.Judge): suspect,
// isolated or dead, why, and since when.
type HostLiveness struct {
	State string    `json:"state"`
	Why   string    `json:"why"`
	Since time.Time `json:"since"`
}

// HARestarts are the times the master restarted a VM elsewhere after its
// host died, newest last (at most vm.MaxHARestarts kept).
type HARestarts struct {
	Times []time.Time `json:"times"`
}

// HostLivenesses reads the master's judgements by host; a record that is
// not one the master writes is left out.
func (i Inventory) HostLivenesses(ctx context.Context) (map[string]HostLiveness, error) {
	items, _, err := store.ListJSON[HostLiveness](ctx, i.S, Liveness)
	if err != nil {
		return nil, fmt.Errorf("list host liveness: %w", err)
	}
	out := map[string]HostLiveness{}
	for _, it := range items {
		h := NameFromKey(it.Key)
		switch it.Value.State {
		case v1.HostSuspect, v1.HostIsolated, v1.HostDead:
		default:
			continue
		}
		if validLabel(h) && len(it.Value.Why) <= 4096 {
			out[h] = it.Value
		}
	}
	return out, nil
}

// NewOpWrites are the writes that record a new operation: the operation
// itself (must not exist) and, for one placed on a host, that host's task,
// which is what the host's agent watches.
func NewOpWrites(op v1.Operation) []store.Op {
	ops := []store.Op{store.PutOp(OpKey(op.ID), Marshal(op), store.MustNotExist)}
	if op.Host != "" {
		ops = append(ops, store.PutOp(TaskKey(op.Host, op.ID), []byte(op.ID), store.MustNotExist))
	}
	return ops
}

// Owner says which host runs a VM. Only the pool master writes it; the
// epoch grows at every change of host (migration switch-over, HA restart),
// so a write conditioned on an older owner record fails.
type Owner struct {
	Host  string `json:"host"`
	Epoch int64  `json:"epoch"`
}

// OwnerOf returns a VM's owner record and its revision (0 and
// store.ErrNotFound when there is none). The record is checked: a host
// that is not a DNS label or an epoch below 1 is ErrInvalidRecord.
func (i Inventory) OwnerOf(ctx context.Context, name string) (Owner, int64, error) {
	o, rev, err := get[Owner](ctx, i.S, OwnerKey(name))
	if err != nil {
		return Owner{}, 0, err
	}
	if o.Epoch < 1 || !validLabel(o.Host) {
		return Owner{}, rev, fmt.Errorf("owner record of vm %q (host %q, epoch %d): %w", name, o.Host, o.Epoch, ErrInvalidRecord)
	}
	return o, rev, nil
}

// validLabel reports whether s is a DNS label (a host name as Hangar
// names hosts).
func validLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Alloc is what the master booked for a VM on a host.
type Alloc struct {
	CPUs      int `json:"cpus"`
	MemoryMiB int `json:"memoryMiB"`
	// AntiAffinityGroup of the VM (its spec's), for the scheduler.
	AntiAffinityGroup string `json:"antiAffinityGroup,omitempty"`
}

func PoolKey(name string) string     { return Pools + name }
func TemplateKey(name string) string { return Templates + name }

func VMKey(name string) string       { return VMs + name }
func StatusKey(name string) string   { return Statuses + name }
func HostKey(name string) string     { return Hosts + name }
func HostInfoKey(name string) string { return HostInfos + name }
func OpKey(id string) string         { return Ops + id }

// NameFromKey returns the last element of a key.
func NameFromKey(key string) string { return key[strings.LastIndexByte(key, '/')+1:] }

// ErrInvalidRecord is returned for a record in the store that fails the
// checks its API request would fail (a name that is not a DNS label, a
// path outside a pool, an unknown operation kind …): state is input too,
// and a bad record is refused, never acted on.
var ErrInvalidRecord = errors.New("invalid record in the store")

// Inventory reads and writes typed records.
type Inventory struct{ S store.Store }

func get[T any](ctx context.Context, s store.Store, key string) (T, int64, error) {
	var v T
	rev, err := store.GetJSON(ctx, s, key, &v)
	return v, rev, err
}

func list[T any](ctx context.Context, s store.Store, prefix string) ([]T, []int64, int64, error) {
	items, rev, err := store.ListJSON[T](ctx, s, prefix)
	if err != nil {
		return nil, nil, 0, err
	}
	out := make([]T, len(items))
	revs := make([]int64, len(items))
	for i, it := range items {
		out[i], revs[i] = it.Value, it.Rev
	}
	return out, revs, rev, nil
}

// Marshal encodes a record (records are plain structs: cannot fail).
func Marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", v, err))
	}
	return b
}

// NotFoundError says which record does not exist, in the words of the
// API ("vm "web1" not found"), not of the store's keys. It matches
// store.ErrNotFound.
type NotFoundError struct {
	Kind, Name string
}

func (e *NotFoundError) Error() string        { return fmt.Sprintf("%s %q not found", e.Kind, e.Name) }
func (e *NotFoundError) Is(target error) bool { return target == store.ErrNotFound }

// NotFound turns the store's not-found into a NotFoundError of the record
// (kind "vm", "storage pool" …); other errors are returned as they are.
func NotFound(err error, kind, name string) error {
	if errors.Is(err, store.ErrNotFound) {
		return &NotFoundError{Kind: kind, Name: name}
	}
	return err
}

// Spec returns a VM's spec and its revision.
func (i Inventory) Spec(ctx context.Context, name string) (v1.VMSpec, int64, error) {
	s, rev, err := get[v1.VMSpec](ctx, i.S, VMKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return s, 0, NotFound(err, "vm", name)
	}
	if err != nil {
		return s, 0, fmt.Errorf("load vm %q: %w", name, err)
	}
	return s, rev, nil
}

// Specs lists all VM specs.
func (i Inventory) Specs(ctx context.Context) ([]v1.VMSpec, []int64, int64, error) {
	return list[v1.VMSpec](ctx, i.S, VMs)
}

// Status returns a VM's observed status; a VM no agent reported on yet is
// "creating".
func (i Inventory) Status(ctx context.Context, name string) (v1.VMStatus, error) {
	st, _, err := get[v1.VMStatus](ctx, i.S, StatusKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return v1.VMStatus{State: v1.StateCreating}, nil
	}
	if err != nil {
		return st, fmt.Errorf("load status of vm %q: %w", name, err)
	}
	return st, nil
}

// StatusRev returns a VM's observed status and its revision; a VM no agent
// reported on yet is "creating" with revision store.MustNotExist.
func (i Inventory) StatusRev(ctx context.Context, name string) (v1.VMStatus, int64, error) {
	st, rev, err := get[v1.VMStatus](ctx, i.S, StatusKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return v1.VMStatus{State: v1.StateCreating}, store.MustNotExist, nil
	}
	if err != nil {
		return st, 0, fmt.Errorf("load status of vm %q: %w", name, err)
	}
	return st, rev, nil
}

// UpdateStatus writes a VM's observed status in one transaction
// conditioned on the status record still having revision rev
// (store.MustNotExist: there is none) and the VM's spec — which names the
// host that owns the VM — still having revision specRev (store.MustNotExist:
// there is no spec). A changed record is store.ErrConflict: read both
// again and re-apply the change.
//
// ownerRev, when not 0, is the revision of the VM's owner record the writer
// read (and found naming itself): the write is conditioned on it too, so a
// host the master moved the VM away from (a migration's switch-over, an HA
// restart elsewhere) fails its late writes.
func (i Inventory) UpdateStatus(ctx context.Context, name string, st v1.VMStatus, rev, specRev, ownerRev int64) (int64, error) {
	conds := []store.Cond{{Key: VMKey(name), ExpectRev: specRev}}
	if ownerRev != 0 {
		conds = append(conds, store.Cond{Key: OwnerKey(name), ExpectRev: ownerRev})
	}
	r, err := i.S.Txn(ctx, conds, store.PutOp(StatusKey(name), Marshal(st), rev))
	if err != nil {
		return 0, fmt.Errorf("write status of vm %q: %w", name, err)
	}
	return r, nil
}

// PutStatus writes a VM's observed status unconditionally.
func (i Inventory) PutStatus(ctx context.Context, name string, st v1.VMStatus) error {
	if _, err := i.S.Put(ctx, StatusKey(name), Marshal(st), store.AnyRevision); err != nil {
		return fmt.Errorf("write status of vm %q: %w", name, err)
	}
	return nil
}

// VM returns spec and status together.
func (i Inventory) VM(ctx context.Context, name string) (v1.VM, error) {
	spec, rev, err := i.Spec(ctx, name)
	if err != nil {
		return v1.VM{}, err
	}
	st, err := i.Status(ctx, name)
	if err != nil {
		return v1.VM{}, err
	}
	return v1.VM{Spec: spec, Status: st, Revision: rev}, nil
}

// VMList returns every VM with its status.
func (i Inventory) VMList(ctx context.Context) ([]v1.VM, error) {
	specs, revs, _, err := i.Specs(ctx)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	sts, _, err := store.ListJSON[v1.VMStatus](ctx, i.S, Statuses)
	if err != nil {
		return nil, fmt.Errorf("list vm statuses: %w", err)
	}
	byName := map[string]v1.VMStatus{}
	for _, st := range sts {
		byName[NameFromKey(st.Key)] = st.Value
	}
	out := make([]v1.VM, 0, len(specs))
	for j, s := range specs {
		st, ok := byName[s.Name]
		if !ok {
			st = v1.VMStatus{State: v1.StateCreating}
		}
		out = append(out, v1.VM{Spec: s, Status: st, Revision: revs[j]})
	}
	return out, nil
}

// Op returns an operation and its revision.
func (i Inventory) Op(ctx context.Context, id string) (v1.Operation, int64, error) {
	op, rev, err := get[v1.Operation](ctx, i.S, OpKey(id))
	if errors.Is(err, store.ErrNotFound) {
		return op, 0, NotFound(err, "operation", id)
	}
	if err != nil {
		return op, 0, fmt.Errorf("load operation %q: %w", id, err)
	}
	return op, rev, nil
}

// Ops lists operations (oldest first: ids sort by time).
func (i Inventory) Ops(ctx context.Context) ([]v1.Operation, []int64, int64, error) {
	return list[v1.Operation](ctx, i.S, Ops)
}

// PutOp writes an operation if it still has revision rev.
func (i Inventory) PutOp(ctx context.Context, op v1.Operation, rev int64) (int64, error) {
	r, err := i.S.Put(ctx, OpKey(op.ID), Marshal(op), rev)
	if err != nil {
		return 0, fmt.Errorf("write operation %s: %w", op.ID, err)
	}
	return r, nil
}

// HostInfos lists the hosts' last reported facts.
func (i Inventory) HostInfos(ctx context.Context) ([]v1.Host, error) {
	hs, _, _, err := list[v1.Host](ctx, i.S, HostInfos)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	return hs, nil
}

// HostAlive reports whether a host's lease key exists.
func (i Inventory) HostAlive(ctx context.Context, name string) (bool, error) {
	_, err := i.S.Get(ctx, HostKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// LiveHosts names the hosts whose lease key exists, in one read (rather
// than HostAlive for each).
func (i Inventory) LiveHosts(ctx context.Context) (map[string]bool, error) {
	return i.names(ctx, Hosts, "live hosts")
}

// HostsInMaintenance names the hosts in maintenance.
func (i Inventory) HostsInMaintenance(ctx context.Context) (map[string]bool, error) {
	return i.names(ctx, Maintenance, "hosts in maintenance")
}

// names is the set of last key elements under prefix.
func (i Inventory) names(ctx context.Context, prefix, what string) (map[string]bool, error) {
	kvs, _, err := i.S.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	out := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		out[NameFromKey(kv.Key)] = true
	}
	return out, nil
}

// Templates lists all templates.
func (i Inventory) Templates(ctx context.Context) ([]v1.Template, error) {
	ts, _, _, err := list[v1.Template](ctx, i.S, Templates)
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	return ts, nil
}

// AllocsByHost lists the master's allocation records by host and VM. A
// record whose key is not /hangar/alloc/<host>/<vm> or that books negative
// amounts is ErrInvalidRecord.
func (i Inventory) AllocsByHost(ctx context.Context) (map[string]map[string]Alloc, error) {
	out, _, err := i.AllocsByHostAt(ctx)
	return out, err
}

// AllocsByHostAt is AllocsByHost with the store revision they were read
// at, for a write conditioned on them (store.Unchanged).
func (i Inventory) AllocsByHostAt(ctx context.Context) (map[string]map[string]Alloc, int64, error) {
	items, rev, err := store.ListJSON[Alloc](ctx, i.S, Allocs)
	if err != nil {
		return nil, 0, fmt.Errorf("list allocations: %w", err)
	}
	out := map[string]map[string]Alloc{}
	for _, it := range items {
		host, vm, ok := strings.Cut(strings.TrimPrefix(it.Key, Allocs), "/")
		if !ok || host == "" || vm == "" || strings.Contains(vm, "/") {
			return nil, 0, fmt.Errorf("allocation %q: %w", it.Key, ErrInvalidRecord)
		}
		if it.Value.CPUs < 0 || it.Value.MemoryMiB < 0 {
			return nil, 0, fmt.Errorf("allocation %q books %d cpus, %d MiB: %w", it.Key, it.Value.CPUs, it.Value.MemoryMiB, ErrInvalidRecord)
		}
		if out[host] == nil {
			out[host] = map[string]Alloc{}
		}
		out[host][vm] = it.Value
	}
	return out, rev, nil
}

// Admission is the pool's admission policy: the settings record checked
// as strictly as an API request (a ratio out of range is ErrInvalidRecord,
// not a silent default), with the defaults filled in; the defaults when no
// settings were written.
func (i Inventory) Admission(ctx context.Context) (scheduler.Policy, error) {
	ps, err := i.settings(ctx)
	if err != nil {
		return scheduler.Policy{}, err
	}
	pol, err := scheduler.NormPolicy(scheduler.Policy{CPUOvercommit: ps.CPUOvercommit, MemoryOvercommit: ps.MemoryOvercommit,
		ReserveCPUs: ps.ReserveCPUs, ReserveMemoryMiB: ps.ReserveMemoryMiB})
	if err != nil {
		return pol, fmt.Errorf("pool settings: %w: %w", err, ErrInvalidRecord)
	}
	return pol, nil
}

// MaxHAFailures bounds PoolSettings.HAFailures.
const MaxHAFailures = 16

// HAFailures is how many host failures HA admission control keeps room
// for (PoolSettings.HAFailures; 1 when not set).
func (i Inventory) HAFailures(ctx context.Context) (int, error) {
	ps, err := i.settings(ctx)
	if err != nil || ps.HAFailures == nil {
		return 1, err
	}
	if n := *ps.HAFailures; n < 0 || n > MaxHAFailures {
		return 0, fmt.Errorf("pool settings: haFailures %d: %w", n, ErrInvalidRecord)
	}
	return *ps.HAFailures, nil
}

func (i Inventory) settings(ctx context.Context) (v1.PoolSettings, error) {
	var ps v1.PoolSettings
	kv, err := i.S.Get(ctx, Settings)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return ps, fmt.Errorf("read pool settings: %w", err)
	default:
		if err := json.Unmarshal(kv.Value, &ps); err != nil {
			return ps, fmt.Errorf("pool settings: %w: %w", err, ErrInvalidRecord)
		}
	}
	return ps, nil
}
