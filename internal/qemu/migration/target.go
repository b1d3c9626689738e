package migration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"hangar/internal/qemu/qmp"
)

// pollInterval is how often migration and job state is read (events wake
// the loops earlier).
const pollInterval = 50 * time.Millisecond

// cleanupTimeout bounds clean-up steps that run after ctx has ended.
const cleanupTimeout = 30 * time.Second

// TLS is what both ends need for an encrypted migration: the pool CA and
// this host's certificate and key (PEM), written for the VM's QEMU into Dir
// (inside its run directory) only while the object is created.
type TLS struct {
	Dir       string
	CA        []byte
	Cert, Key []byte
	UID, GID  int
}

// Target describes the listening side of a migration.
type Target struct {
	// IP is the target host's address: both listeners bind to it only.
	IP string
	// Port is the migration stream's port.
	Port int
	// NBDPort is the NBD server's port; 0 when no disk is local.
	NBDPort int
	// Exports are the node names of the target's (empty) disks exported
	// writable over NBD, each under its node name.
	Exports []string
	// TLS nil means a plaintext migration, only when asked explicitly.
	TLS *TLS
	// Multifd streams RAM over MultifdChannels connections (both ends must
	// agree; QEMU 7.2 supports multifd with TLS).
	Multifd         bool
	MultifdChannels int
}

func (t Target) validate() error {
	if ip := net.ParseIP(t.IP); ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("target ip %q: want one address of the host", t.IP)
	}
	if t.Port <= 0 || t.Port > 65535 {
		return fmt.Errorf("target port %d", t.Port)
	}
	if len(t.Exports) > 0 && (t.NBDPort <= 0 || t.NBDPort > 65535 || t.NBDPort == t.Port) {
		return fmt.Errorf("nbd port %d", t.NBDPort)
	}
	if t.Multifd && (t.MultifdChannels < 1 || t.MultifdChannels > 16) {
		return fmt.Errorf("multifd channels %d: want 1..16", t.MultifdChannels)
	}
	return nil
}

// inet is QEMU's SocketAddress of type inet.
func inet(ip string, port int) map[string]any {
	return map[string]any{"type": "inet", "host": ip, "port": strconv.Itoa(port)}
}

// uri is the migration URI of ip:port.
func uri(ip string, port int) string { return "tcp:" + net.JoinHostPort(ip, strconv.Itoa(port)) }

// exportID is the block export id of a node.
func exportID(node string) string { return "mig-" + node }

// PrepareTarget makes a QEMU started with -incoming defer (and the source's
// device argv, its disks on empty volumes of the source's sizes) ready to
// receive: TLS credentials (server endpoint), capabilities and parameters,
// the NBD server with one writable export per local disk, then
// migrate-incoming on t.IP:t.Port. A failure leaves the QEMU useless: the
// caller kills it and removes its volumes (it never ran the guest).
func PrepareTarget(ctx context.Context, mon *qmp.Client, t Target) error {
	if err := t.validate(); err != nil {
		return fmt.Errorf("prepare migration target: %w", err)
	}
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return fmt.Errorf("prepare migration target: %w", err)
	}
	if st.Status != "inmigrate" {
		return fmt.Errorf("prepare migration target: vm is %s, not waiting for an incoming migration (-incoming defer)", st.Status)
	}
	creds := ""
	if t.TLS != nil {
		if err := InstallCreds(ctx, mon, t.TLS.Dir, t.TLS.CA, t.TLS.Cert, t.TLS.Key, t.TLS.UID, t.TLS.GID, Server); err != nil {
			return fmt.Errorf("prepare migration target: %w", err)
		}
		creds = CredsID
	}
	if err := setCapabilities(ctx, mon, map[string]bool{"events": true, "multifd": t.Multifd}); err != nil {
		return fmt.Errorf("prepare migration target: %w", err)
	}
	params := map[string]any{"tls-creds": creds, "tls-hostname": ""}
	if t.Multifd {
		params["multifd-channels"] = t.MultifdChannels
	}
	if err := mon.Execute(ctx, "migrate-set-parameters", params, nil); err != nil {
		return fmt.Errorf("prepare migration target: set parameters: %w", err)
	}
	if len(t.Exports) > 0 {
		args := map[string]any{"addr": map[string]any{"type": "inet", "data": map[string]any{"host": t.IP, "port": strconv.Itoa(t.NBDPort)}}}
		if creds != "" {
			args["tls-creds"] = creds
		}
		if err := mon.Execute(ctx, "nbd-server-start", args, nil); err != nil {
			return fmt.Errorf("prepare migration target: nbd server on %s:%d: %w", t.IP, t.NBDPort, err)
		}
		for _, node := range t.Exports {
			// block-export-add also activates the node, which -incoming
			// opened inactive: the mirror writes before the handover.
			exp := map[string]any{"type": "nbd", "id": exportID(node), "node-name": node, "name": node, "writable": true}
			if err := mon.Execute(ctx, "block-export-add", exp, nil); err != nil {
				return fmt.Errorf("prepare migration target: export %s: %w", node, err)
			}
		}
	}
	if err := mon.Execute(ctx, "migrate-incoming", map[string]string{"uri": uri(t.IP, t.Port)}, nil); err != nil {
		return fmt.Errorf("prepare migration target: listen on %s:%d: %w", t.IP, t.Port, err)
	}
	return nil
}

func setCapabilities(ctx context.Context, mon *qmp.Client, caps map[string]bool) error {
	list := make([]map[string]any, 0, len(caps))
	for c, on := range caps {
		list = append(list, map[string]any{"capability": c, "state": on})
	}
	if err := mon.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil); err != nil {
		return fmt.Errorf("set capabilities: %w", err)
	}
	return nil
}

// TargetState is where an incoming migration is.
type TargetState struct {
	// Status is QEMU's migration status on the target: "setup" while
	// waiting, "active" while receiving, "completed", "failed".
	Status string
	// RunState is the VM's run state ("inmigrate" until the state is
	// loaded, then "paused": the guest waits for Resume).
	RunState string
}

// QueryTarget reads the target's migration and run state (an agent
// adopting a target mid-migration starts here).
func QueryTarget(ctx context.Context, mon *qmp.Client) (TargetState, error) {
	mi, err := queryMigrate(ctx, mon)
	if err != nil {
		return TargetState{}, err
	}
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return TargetState{}, err
	}
	return TargetState{Status: mi.Status, RunState: st.Status}, nil
}

// ErrIncomingFailed is returned when the target's incoming migration
// failed (QEMU 7.2 usually exits then, which shows as the monitor closing).
var ErrIncomingFailed = errors.New("incoming migration failed")

// WaitIncoming waits until the target has loaded the whole state and is
// paused, waiting for Resume.
func WaitIncoming(ctx context.Context, mon *qmp.Client) error {
	ev, stop := mon.Subscribe()
	defer stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		ts, err := QueryTarget(ctx, mon)
		if err != nil {
			if errors.Is(err, qmp.ErrClosed) {
				return fmt.Errorf("%w: target qemu exited: %v", ErrIncomingFailed, err)
			}
			return fmt.Errorf("wait for incoming migration: %w", err)
		}
		switch {
		case ts.Status == "failed" || ts.Status == "cancelled":
			return fmt.Errorf("%w: %s", ErrIncomingFailed, ts.Status)
		case ts.Status == "completed" && ts.RunState != "inmigrate":
			return nil
		}
		select {
		case _, ok := <-ev:
			if !ok {
				return fmt.Errorf("%w: target qemu exited", ErrIncomingFailed)
			}
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("wait for incoming migration: %w", ctx.Err())
		}
	}
}

// Resume ends the migration on the target once the owner record names it:
// it stops the NBD server (the source has finished its mirrors), resumes
// the guest and has it announce itself on its networks (gratuitous ARP and
// RARP), so switches learn its new port. It is idempotent: an agent that
// restarted after part of it calls it again.
func Resume(ctx context.Context, mon *qmp.Client) error {
	if err := mon.Execute(ctx, "nbd-server-stop", nil, nil); err != nil {
		var qe *qmp.Error
		if !errors.As(err, &qe) { // a QMP error: no server was running
			return fmt.Errorf("resume migrated vm: %w", err)
		}
	}
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return fmt.Errorf("resume migrated vm: %w", err)
	}
	if st.Status == "inmigrate" {
		return errors.New("resume migrated vm: the incoming migration has not completed")
	}
	if !st.Running {
		if err := mon.Cont(ctx); err != nil {
			return fmt.Errorf("resume migrated vm: %w", err)
		}
	}
	if err := Announce(ctx, mon); err != nil {
		return fmt.Errorf("resume migrated vm: %w", err)
	}
	// The VM may migrate on later, as a source: no stale server creds.
	_ = mon.Execute(ctx, "migrate-set-parameters", map[string]any{"tls-creds": "", "tls-hostname": ""}, nil)
	_ = DelCreds(ctx, mon)
	return nil
}

// Announce has the guest's NICs send QEMU's self-announcements (QEMU's
// default schedule: 5 rounds, 50 ms then +100 ms each).
func Announce(ctx context.Context, mon *qmp.Client) error {
	return mon.Execute(ctx, "announce-self", map[string]int{"initial": 50, "max": 550, "rounds": 5, "step": 100}, nil)
}
