package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	v1 "hangar/api/v1"
	"hangar/internal/access"
	"hangar/internal/authn"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// GET /api/v1/events: server-sent events fed by one etcd watch of the
// records per stream. On connect the stream sends what the caller may read
// (VMs, operations; with pool read also hosts, the pool and alerts), each
// as its event, then "synced"; then the changes. Every event's id is an
// etcd revision: a reconnect with Last-Event-ID N replays the changes after
// N (then "synced"), or — N compacted or unknown — starts again with the
// whole state. Host, pool and alert events are recomputed from the records
// (the capacity overview) at most every hostsEvery when records they read
// changed, and sent when they differ from what the stream sent last.

// Stream timings; fields of the Server so that tests may shorten them.
const (
	defaultPingEvery   = 15 * time.Second
	defaultHostsEvery  = time.Second
	defaultStreamLimit = 10 * time.Minute
	// eventWriteTimeout bounds one event's write: a client that stops
	// reading loses its stream instead of holding it open.
	eventWriteTimeout = 30 * time.Second
	// resumeSyncWait bounds how long a resumed stream waits for the
	// replayed changes before it says synced.
	resumeSyncWait = 10 * time.Second
)

// eventStream is one client's stream.
type eventStream struct {
	s   *Server
	req *http.Request // the stream's request: its credential is checked again (reauth)
	ctx context.Context
	w   http.ResponseWriter
	rc  *http.ResponseController
	rev int64 // last revision sent or seen

	pool    bool            // the caller may read the pool
	visible map[string]bool // VMs sent (vm-deleted goes only to those who saw them)
	hosts   map[string][]byte
	poolDoc []byte
	alerts  map[string]v1.Alert // pool and host alerts sent
	vmAlrt  map[string]v1.Alert // VM alerts sent
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	last, err := lastEventID(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	es := &eventStream{s: s, req: r, ctx: ctx, w: w, rc: http.NewResponseController(w), pool: mayReadPool(ctx),
		visible: map[string]bool{}, hosts: map[string][]byte{}, alerts: map[string]v1.Alert{}, vmAlrt: map[string]v1.Alert{}}
	// The answer is a stream: no write deadline but the one per event.
	_ = es.rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no") // proxies: do not buffer the stream
	start, now, err := es.begin(last)
	if err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
	if start == now {
		if err := es.fullState(start); err != nil {
			s.cfg.Log.Debug("events: initial state", "err", err)
			return
		}
		if err := es.send(v1.EventSynced, start, v1.Synced{Full: true}); err != nil {
			return
		}
	} else if err := es.resumeState(start); err != nil {
		s.cfg.Log.Debug("events: resume", "err", err)
		return
	}
	es.follow(start, now)
}

// lastEventID is the revision a reconnecting client saw last (0: none).
func lastEventID(r *http.Request) (int64, error) {
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = r.URL.Query().Get("lastEventId")
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0, &v1.Error{Code: v1.CodeInvalidArgument, Field: "Last-Event-ID", Message: fmt.Sprintf("Last-Event-ID: %q is not a revision", truncate(v, 40))}
	}
	return n, nil
}

// begin picks the revision the stream starts from and reads the store's
// revision now: start is the client's last one when etcd still has the
// changes after it and some came since (a resume), else now (the whole
// state).
func (es *eventStream) begin(last int64) (start, now int64, err error) {
	_, now, err = es.s.cfg.Store.List(es.ctx, inventory.PoolRecord)
	if err != nil {
		return 0, 0, fmt.Errorf("events: read revision: %w", err)
	}
	if last <= 0 || last >= now {
		return now, now, nil
	}
	ec, ok := es.s.cfg.Store.(interface{ Client() *clientv3.Client })
	if !ok {
		return now, now, nil
	}
	_, err = ec.Client().Get(es.ctx, inventory.PoolRecord, clientv3.WithRev(last), clientv3.WithCountOnly())
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return now, now, nil
	case err != nil:
		return 0, 0, fmt.Errorf("events: check revision %d: %w", last, err)
	}
	return last, now, nil
}

// send writes one event and flushes it.
func (es *eventStream) send(event string, id int64, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "id: %d\nevent: %s\ndata: %s\n\n", id, event, b)
	return es.write(buf.Bytes())
}

func (es *eventStream) write(b []byte) error {
	_ = es.rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
	if _, err := es.w.Write(b); err != nil {
		return err
	}
	return es.rc.Flush()
}

// fullState sends everything the caller may read, as of revision rev or
// later (the changes after rev follow, so a record read later than rev is
// sent again with the same content: harmless), and deletes the VMs it was
// sent and may no longer read.
func (es *eventStream) fullState(rev int64) error {
	vms, err := es.s.inv.VMList(es.ctx)
	if err != nil {
		return err
	}
	for _, v := range vms {
		var err error
		if es.visible[v.Spec.Name] && !mayRead(es.ctx, access.VMRef{Name: v.Spec.Name, Tags: v.Spec.Tags}) {
			err = es.vmGone(v.Spec.Name, rev) // sent before, no longer readable: the caller's grants changed
		} else {
			err = es.sendVM(v, rev)
		}
		if err != nil {
			return err
		}
	}
	ops, _, _, err := es.s.inv.Ops(es.ctx)
	if err != nil {
		return err
	}
	for _, o := range ops {
		if err := es.sendOp(o, rev); err != nil {
			return err
		}
	}
	return es.refreshPool(rev)
}

// resumeState learns, from the records as they were at the client's
// revision, what the client has: the VMs it saw (for vm-deleted), the VM
// and host alerts active then and the hosts it knew (so that those gone
// since are cleared and deleted). The current hosts, pool and alerts are
// sent again (refreshPool); storage-low alerts are not recorded, so that
// of every storage pool there is now is cleared unless it is active.
func (es *eventStream) resumeState(at int64) error {
	ec := es.s.cfg.Store.(interface{ Client() *clientv3.Client }) // begin resumes only on etcd
	listAt := func(prefix string, f func(name string, value []byte)) error {
		resp, err := ec.Client().Get(es.ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(at))
		if err != nil {
			return fmt.Errorf("events: list %s at revision %d: %w", prefix, at, err)
		}
		for _, kv := range resp.Kvs {
			if name := strings.TrimPrefix(string(kv.Key), prefix); vm.ValidateName("name", name) == nil {
				f(name, kv.Value)
			}
		}
		return nil
	}
	specs := map[string]v1.VMSpec{}
	err := listAt(inventory.VMs, func(name string, b []byte) {
		var sp v1.VMSpec
		if json.Unmarshal(b, &sp) == nil && sp.Name == name {
			specs[name] = sp
			if mayRead(es.ctx, access.VMRef{Name: sp.Name, Tags: sp.Tags}) {
				es.visible[name] = true
			}
		}
	})
	if err != nil || !es.pool {
		return err
	}
	err = listAt(inventory.Statuses, func(name string, b []byte) {
		var st v1.VMStatus
		if sp, ok := specs[name]; ok && json.Unmarshal(b, &st) == nil {
			if a := vmAlert(v1.VM{Spec: sp, Status: st}); a != nil {
				es.vmAlrt[a.ID] = v1.Alert{ID: a.ID} // differs from any current one: sent again
			}
		}
	})
	if err != nil {
		return err
	}
	if err := listAt(inventory.HostInfos, func(name string, _ []byte) { es.hosts[name] = nil }); err != nil {
		return err
	}
	err = listAt(inventory.Liveness, func(name string, _ []byte) {
		id := v1.AlertHostDown + "/" + name
		es.alerts[id] = v1.Alert{ID: id}
	})
	if err != nil {
		return err
	}
	// Storage-low alerts are not recorded: every storage pool's is cleared
	// (or sent again), whatever the client had.
	view, err := es.s.poolView(es.ctx, at)
	if err != nil {
		return err
	}
	for _, u := range view.capa.Pool.Storage {
		id := v1.AlertStorageLow + "/" + u.Pool
		es.alerts[id] = v1.Alert{ID: id}
	}
	return es.refreshPool(at)
}

func (es *eventStream) sendVM(v v1.VM, rev int64) error {
	if !mayRead(es.ctx, access.VMRef{Name: v.Spec.Name, Tags: v.Spec.Tags}) {
		return nil
	}
	es.visible[v.Spec.Name] = true
	if err := es.send(v1.EventVM, rev, redactVM(v)); err != nil {
		return err
	}
	if !es.pool {
		return nil
	}
	a := vmAlert(v)
	id := v1.AlertVMCrashed + "/" + v.Spec.Name
	old, had := es.vmAlrt[id]
	switch {
	case a != nil && (!had || old != *a):
		es.vmAlrt[id] = *a
		return es.send(v1.EventAlert, rev, a)
	case a == nil && had:
		delete(es.vmAlrt, id)
		return es.send(v1.EventAlertCleared, rev, v1.AlertCleared{ID: id})
	}
	return nil
}

func (es *eventStream) sendOp(o v1.Operation, rev int64) error {
	if !es.pool {
		if vm.OpTarget(o.Kind) != vm.TargetVM {
			return nil
		}
		ref, err := es.s.vmRef(es.ctx, o.Target)
		if err != nil {
			return err
		}
		if !mayRead(es.ctx, ref) {
			return nil
		}
	}
	return es.send(v1.EventOperation, rev, o)
}

// refreshPool sends the hosts, the pool record and the pool's alerts that
// changed since the stream sent them (pool readers only).
func (es *eventStream) refreshPool(rev int64) error {
	if !es.pool {
		return nil
	}
	view, err := es.s.poolView(es.ctx, rev)
	if err != nil {
		return err
	}
	capa, active := view.capa, view.alerts
	seen := map[string]bool{}
	for _, h := range capa.Hosts {
		seen[h.Name] = true
		b, err := json.Marshal(h)
		if err != nil {
			return err
		}
		if bytes.Equal(es.hosts[h.Name], b) {
			continue
		}
		es.hosts[h.Name] = b
		if err := es.send(v1.EventHost, rev, json.RawMessage(b)); err != nil {
			return err
		}
	}
	for name := range es.hosts {
		if !seen[name] {
			delete(es.hosts, name)
			if err := es.send(v1.EventHostDeleted, rev, v1.Deleted{Name: name}); err != nil {
				return err
			}
		}
	}
	if b := view.pool; b != nil && !bytes.Equal(es.poolDoc, b) {
		es.poolDoc = b
		if err := es.send(v1.EventPool, rev, json.RawMessage(b)); err != nil {
			return err
		}
	}
	for _, a := range sortedAlerts(active) {
		if old, ok := es.alerts[a.ID]; ok && old == a {
			continue
		}
		es.alerts[a.ID] = a
		if err := es.send(v1.EventAlert, rev, a); err != nil {
			return err
		}
	}
	for id := range es.alerts {
		if _, ok := active[id]; !ok {
			delete(es.alerts, id)
			if err := es.send(v1.EventAlertCleared, rev, v1.AlertCleared{ID: id}); err != nil {
				return err
			}
		}
	}
	return nil
}

// poolView is the capacity overview and the pool's alerts as of revision
// rev or later, shared by the streams: computed once for all those that
// ask for a revision it covers (it reads every VM record: with many
// streams and hosts publishing their facts every few seconds, one read
// each would multiply).
func (s *Server) poolView(ctx context.Context, rev int64) (*poolSnapshot, error) {
	s.view.mu.Lock()
	defer s.view.mu.Unlock()
	if v := s.view.last; v != nil && v.rev >= rev {
		return v, nil
	}
	_, now, err := s.cfg.Store.List(ctx, inventory.PoolRecord) // the revision before the reads
	if err != nil {
		return nil, err
	}
	p, err := s.readPool(ctx)
	if err != nil {
		return nil, err
	}
	v := &poolSnapshot{rev: now, capa: p.capa, alerts: s.poolAlerts(p)}
	if p := s.cfg.PoolAdmin; p != nil {
		// The member list may not answer for a moment: no pool event then,
		// the next change tries again.
		if info, err := p.PoolInfo(ctx); err != nil {
			s.cfg.Log.Debug("events: pool info", "err", err)
		} else if v.pool, err = json.Marshal(info); err != nil {
			return nil, err
		}
	}
	s.view.last = v
	return v, nil
}

// poolSnapshot is what the streams' host, pool and alert events are made
// of, read at revision rev or later; read-only once made.
type poolSnapshot struct {
	rev    int64
	capa   v1.Capacity
	alerts map[string]v1.Alert
	pool   []byte // GET /pool's answer (nil without a PoolAdmin)
}

// sharedView holds the last poolSnapshot.
type sharedView struct {
	mu   sync.Mutex
	last *poolSnapshot
}

// poolKeys are the records the hosts, the pool record and their alerts
// are computed from.
var poolKeys = []string{inventory.Hosts, inventory.HostInfos, inventory.Liveness, inventory.Maintenance,
	inventory.Allocs, inventory.PoolRecord, inventory.Election, inventory.Settings, inventory.Pools, inventory.Statuses, inventory.VMs}

func touchesPool(key string) bool {
	for _, p := range poolKeys {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// follow sends the changes after rev until the client goes, the watch
// ends (the client reconnects with its Last-Event-ID), the caller's
// credential no longer holds (checked again when a user, API token or
// session record changes and at every ping: a revoked, expired or deleted
// one ends the stream, and the reconnect gets 401) or the stream's time is
// up.
// A resumed stream (rev < now) sends synced once the replayed changes
// reached now — or after resumeSyncWait, should revision now be a key the
// watch does not see.
func (es *eventStream) follow(rev, now int64) {
	ctx, cancel := context.WithTimeout(es.ctx, es.s.streamLimit)
	defer cancel()
	es.rev = rev
	events := es.s.cfg.Store.Watch(ctx, inventory.Root, rev+1)
	ping := time.NewTicker(es.s.pingEvery)
	defer ping.Stop()
	var refresh <-chan time.Time // set while a refresh is due
	var synced <-chan time.Time  // set while a resumed stream has not said synced
	if rev < now {
		synced = time.After(resumeSyncWait)
	}
	sync := func() error {
		synced = nil
		return es.send(v1.EventSynced, es.rev, v1.Synced{})
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-es.s.streams.Done():
			return
		case <-ping.C:
			if es.reauth(es.rev) != nil || es.write([]byte(": ping\n\n")) != nil {
				return
			}
		case <-synced:
			if sync() != nil {
				return
			}
		case ev, ok := <-events:
			if !ok {
				return
			}
			es.rev = ev.KV.Revision
			var err error
			if isAccessRecord(ev.KV.Key) {
				err = es.reauth(es.rev)
			} else {
				err = es.change(ev)
			}
			if err == nil && synced != nil && es.rev >= now {
				err = sync()
			}
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, io.ErrClosedPipe) {
					es.s.cfg.Log.Debug("events: change", "key", ev.KV.Key, "err", err)
				}
				return
			}
			if es.pool && refresh == nil && touchesPool(ev.KV.Key) {
				refresh = time.After(es.s.hostsEvery)
			}
		case <-refresh:
			refresh = nil
			if err := es.refreshPool(es.rev); err != nil {
				return
			}
		}
	}
}

// isAccessRecord: a change of key may change who a stream's caller is or
// what it may read.
func isAccessRecord(key string) bool {
	return strings.HasPrefix(key, access.UsersPrefix) || strings.HasPrefix(key, access.TokensPrefix) ||
		strings.HasPrefix(key, access.SessionsPrefix)
}

// errCredentialGone ends a stream whose caller's credential no longer
// holds.
var errCredentialGone = errors.New("events: the caller's credential no longer holds")

// reauth checks the caller's credential again. One that no longer holds
// ends the stream (errCredentialGone). Changed grants are sent (whoami)
// and apply from here on, as of revision rev: hosts and alerts are cleared
// when it lost pool read, and fullState deletes the VMs it may no longer
// read and sends what it may read now (again: harmless).
func (es *eventStream) reauth(rev int64) error {
	old, _ := identity(es.ctx)
	id, renewable, err := es.s.reauthenticate(es.req)
	switch {
	case !renewable:
		return nil
	case errors.Is(err, errdefs.ErrUnauthenticated):
		es.s.cfg.Log.Info("events: stream ended, credential no longer accepted", "user", old.User, "err", err)
		return errCredentialGone
	case err != nil:
		return nil // the store did not answer: the next change or ping asks again
	}
	if slices.Equal(old.Grants, id.Grants) && slices.Equal(old.Limit, id.Limit) && (old.Limit == nil) == (id.Limit == nil) {
		return nil
	}
	es.ctx = authn.WithIdentity(es.ctx, id)
	if err := es.send(v1.EventWhoami, rev, whoamiOf(id)); err != nil {
		return err
	}
	pool := mayReadPool(es.ctx)
	if es.pool && !pool {
		es.pool = false
		if err := es.forgetPool(rev); err != nil {
			return err
		}
	}
	es.pool = pool
	return es.fullState(rev) // deletes what it may no longer read, too
}

// forgetPool deletes and clears, for a caller that lost pool read, the
// hosts and alerts it was sent.
func (es *eventStream) forgetPool(rev int64) error {
	for name := range es.hosts {
		if err := es.send(v1.EventHostDeleted, rev, v1.Deleted{Name: name}); err != nil {
			return err
		}
	}
	for _, m := range []map[string]v1.Alert{es.alerts, es.vmAlrt} {
		for id := range m {
			if err := es.send(v1.EventAlertCleared, rev, v1.AlertCleared{ID: id}); err != nil {
				return err
			}
		}
	}
	es.hosts, es.alerts, es.vmAlrt, es.poolDoc = map[string][]byte{}, map[string]v1.Alert{}, map[string]v1.Alert{}, nil
	return nil
}

// change sends what one record change means for the caller.
func (es *eventStream) change(ev store.Event) error {
	key, rev := ev.KV.Key, ev.KV.Revision
	switch {
	case strings.HasPrefix(key, inventory.VMs):
		name := strings.TrimPrefix(key, inventory.VMs)
		if vm.ValidateName("name", name) != nil {
			return nil
		}
		if ev.Type == store.EventDelete {
			return es.vmGone(name, rev)
		}
		var spec v1.VMSpec
		if json.Unmarshal(ev.KV.Value, &spec) != nil || spec.Name != name {
			return nil // not a record the API would answer either
		}
		st, err := es.s.inv.Status(es.ctx, name)
		if err != nil {
			return nil
		}
		return es.sendVM(v1.VM{Spec: spec, Status: st, Revision: ev.KV.Revision}, rev)
	case strings.HasPrefix(key, inventory.Statuses):
		name := strings.TrimPrefix(key, inventory.Statuses)
		if vm.ValidateName("name", name) != nil || ev.Type == store.EventDelete {
			return nil
		}
		var st v1.VMStatus
		if json.Unmarshal(ev.KV.Value, &st) != nil {
			return nil
		}
		spec, specRev, err := es.s.inv.Spec(es.ctx, name)
		if err != nil {
			return nil // the VM went meanwhile: its deletion follows
		}
		return es.sendVM(v1.VM{Spec: spec, Status: st, Revision: specRev}, rev)
	case strings.HasPrefix(key, inventory.Ops):
		if ev.Type == store.EventDelete {
			return nil
		}
		var o v1.Operation
		if json.Unmarshal(ev.KV.Value, &o) != nil || validOpID(o.ID) != nil || inventory.OpKey(o.ID) != key {
			return nil
		}
		return es.sendOp(o, rev)
	}
	return nil
}

func (es *eventStream) vmGone(name string, rev int64) error {
	if !es.visible[name] && !(es.pool || mayRead(es.ctx, access.VMRef{Name: name})) {
		return nil
	}
	delete(es.visible, name)
	if err := es.send(v1.EventVMDeleted, rev, v1.Deleted{Name: name}); err != nil {
		return err
	}
	id := v1.AlertVMCrashed + "/" + name
	if _, had := es.vmAlrt[id]; had && es.pool {
		delete(es.vmAlrt, id)
		return es.send(v1.EventAlertCleared, rev, v1.AlertCleared{ID: id})
	}
	return nil
}
