// Package network manages the host side of VM networking: tap devices on
// bridges, through netlink.
package network

import (
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// ErrNoBridge is returned when a NIC names a bridge that does not exist.
var ErrNoBridge = errors.New("no such bridge")

// TapName is the stable tap name of a VM's NIC (at most 15 bytes).
func TapName(vm string, nic int) string {
	h := sha256.Sum256([]byte(vm))
	return fmt.Sprintf("hg%x.%d", h[:4], nic)
}

// EnsureTap creates (or reuses) a persistent tap named name, attaches it to
// bridge and brings it up. Only root may attach to it.
func EnsureTap(name, bridge string) error { return EnsureTapFor(name, bridge, 0, 0) }

// EnsureTapFor is EnsureTap for a tap that a process running as uid (with
// group gid) attaches to by name, as QEMU does with ifname= when it runs
// unprivileged. A tap left over with another owner is recreated.
func EnsureTapFor(name, bridge string, uid, gid int) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("tap %s: bridge %q: %w", name, bridge, ErrNoBridge)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return fmt.Errorf("tap %s: %q is a %s, not a bridge: %w", name, bridge, br.Type(), ErrNoBridge)
	}
	if uid < 0 || gid < 0 {
		return fmt.Errorf("tap %s: bad owner %d:%d", name, uid, gid)
	}
	link, err := netlink.LinkByName(name)
	if err == nil {
		if t, ok := link.(*netlink.Tuntap); !ok || int(t.Owner) != uid || int(t.Group) != gid {
			if err := netlink.LinkDel(link); err != nil {
				return fmt.Errorf("replace tap %s of another owner: %w", name, err)
			}
			link, err = nil, errors.New("replaced")
		}
	}
	if err != nil {
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_DEFAULTS | netlink.TUNTAP_VNET_HDR,
			Queues:    1,
			Owner:     uint32(uid),
			Group:     uint32(gid),
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		// LinkAdd of a tuntap opens fds to create it; they are closed so QEMU
		// can attach; the device persists.
		for _, f := range tap.Fds {
			f.Close()
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("find tap %s: %w", name, err)
		}
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("attach tap %s to %s: %w", name, bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set tap %s up: %w", name, err)
	}
	return nil
}

// DeleteTap removes a tap; a missing tap is not an error.
func DeleteTap(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}
