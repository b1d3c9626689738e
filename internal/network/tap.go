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
// bridge and brings it up.
func EnsureTap(name, bridge string) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("tap %s: bridge %q: %w", name, bridge, ErrNoBridge)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return fmt.Errorf("tap %s: %q is a %s, not a bridge: %w", name, bridge, br.Type(), ErrNoBridge)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_DEFAULTS | netlink.TUNTAP_VNET_HDR,
			Queues:    1,
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
