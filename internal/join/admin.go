package join

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/inventory"
	"hangar/internal/master"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// PoolInfo describes the pool: its record and its etcd members.
func (s *Server) PoolInfo(ctx context.Context) (v1.PoolInfo, error) {
	p, err := ReadPool(ctx, s.Store)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return v1.PoolInfo{}, err
	}
	info := v1.PoolInfo{Name: p.Name, CAFingerprint: s.CA.FingerprintHex(), Created: p.Created, External: s.External, Members: []v1.PoolMember{}}
	if info.Master, err = master.LeaderOf(ctx, s.Store); err != nil {
		return v1.PoolInfo{}, err
	}
	if s.Cluster == nil {
		return info, nil
	}
	ms, err := s.Cluster.Members(ctx)
	if err != nil {
		return v1.PoolInfo{}, err
	}
	for _, m := range ms {
		role := v1.RoleMember
		if m.Learner {
			role = v1.RoleLearner
		}
		info.Members = append(info.Members, v1.PoolMember{Name: m.Name, ID: strconv.FormatUint(m.ID, 16), Role: role,
			PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs})
	}
	return info, nil
}

// EvacuateBeforeRemove is the last check before a host leaves the pool:
// no VM may be placed on it any more. The API evacuates a live host first
// (DELETE /hosts/{name} records the evacuation and answers with it), so
// what is left here are the VMs the evacuation does not move: stopped ones
// (they stay with their disks) and parked ones waiting for their disks'
// host.
func EvacuateBeforeRemove(ctx context.Context, st store.Store, host string) error {
	specs, _, _, err := inventory.Inventory{S: st}.Specs(ctx)
	if err != nil {
		return fmt.Errorf("remove host %s: list VMs: %w", host, err)
	}
	var on []string
	for _, sp := range specs {
		if sp.Host == host {
			on = append(on, sp.Name)
		}
	}
	if len(on) > 0 {
		slices.Sort(on)
		return errdefs.Precondition("host %q still has %d VM(s) placed on it (%s): stopped and parked VMs stay with their host; delete them or move their disks, then remove the host again",
			host, len(on), strings.Join(on, ", "))
	}
	return nil
}

// CheckRemove is what refuses a removal before anything is done (the API
// checks it before it evacuates): a bad name, the host answering (it
// cannot remove itself: it would cut its own etcd), a host the pool does
// not know, and the pool's only etcd member.
func (s *Server) CheckRemove(ctx context.Context, host string) error {
	_, err := s.checkRemove(ctx, host)
	return err
}

// checkRemove is CheckRemove; it returns the host's etcd member (nil for
// none).
func (s *Server) checkRemove(ctx context.Context, host string) (*Member, error) {
	if err := vm.ValidateName("name", host); err != nil {
		return nil, err
	}
	if host == s.Host {
		return nil, errdefs.Precondition("host %q answers this request and cannot remove itself: ask another host of the pool (hangar --server https://OTHER:8443 host remove %s)", host, host)
	}
	known := false
	var addrIP string // of a host whose learner never started (no name in etcd yet)
	if kv, err := s.Store.Get(ctx, inventory.HostInfoKey(host)); err == nil {
		known = true
		var h v1.Host
		if json.Unmarshal(kv.Value, &h) == nil {
			addrIP, _, _ = net.SplitHostPort(h.Address)
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	var member *Member
	if s.Cluster != nil {
		ms, err := s.Cluster.Members(ctx)
		if err != nil {
			return nil, err
		}
		voting := 0
		for i, m := range ms {
			if !m.Learner {
				voting++
			}
			if m.Name == host || (m.Name == "" && addrIP != "" && peerHost(m) == addrIP) {
				member = &ms[i]
			}
		}
		if member != nil {
			known = true
			if !member.Learner && voting <= 1 {
				return nil, errdefs.Precondition("host %q is the pool's only etcd member", host)
			}
		}
	}
	if !known {
		return nil, fmt.Errorf("host %q: %w", host, errdefs.ErrNotFound)
	}
	return member, nil
}

// RemoveHost takes a stopped host out of the pool: CheckRemove, then no
// VM may be placed on it (EvacuateBeforeRemove), then its etcd membership,
// then its records. A host that is alive is refused: it would publish its
// facts again (and a live member keep serving).
func (s *Server) RemoveHost(ctx context.Context, host string) error {
	member, err := s.checkRemove(ctx, host)
	if err != nil {
		return err
	}
	if _, err := s.Store.Get(ctx, inventory.HostKey(host)); err == nil {
		return errdefs.Precondition("host %q is alive: stop hangar serve on it, then remove it again (its liveness lease ends within seconds)", host)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if err := EvacuateBeforeRemove(ctx, s.Store, host); err != nil {
		return err
	}
	if member != nil {
		if err := s.Cluster.Remove(ctx, member.ID); err != nil {
			return err
		}
		s.log().Info("etcd member removed", "host", host, "member", strconv.FormatUint(member.ID, 16))
	}
	if _, err := s.Store.Txn(ctx, nil, store.DeleteOp(inventory.HostInfoKey(host), store.AnyRevision),
		store.DeleteOp(inventory.HostKey(host), store.AnyRevision), store.DeleteOp(inventory.MaintenanceKey(host), store.AnyRevision)); err != nil {
		return fmt.Errorf("remove host %s: records: %w", host, err)
	}
	s.log().Info("host removed", "host", host)
	return nil
}

// peerHost is the host of a member's first peer URL.
func peerHost(m Member) string {
	if len(m.PeerURLs) == 0 {
		return ""
	}
	u, err := url.Parse(m.PeerURLs[0])
	if err != nil {
		return ""
	}
	return u.Hostname()
}
