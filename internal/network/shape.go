package network

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Shape is a tap's bandwidth limits in bits per second, as the guest sees
// them (0: none).
//
// What the guest receives leaves the host through the tap (its egress): a
// token bucket filter (tbf) as the tap's root qdisc queues it to the rate.
// What the guest sends enters the host through the tap (its ingress),
// where Linux can only police (drop what is over the rate, which TCP
// answers with a saw-tooth well below the rate and bursts above it): the
// tap's ingress redirects every packet to an IFB device of its own, whose
// root tbf queues them to the rate like the other direction. Both hold a
// TCP stream at the rate because packets wait instead of being dropped.
type Shape struct {
	RxBits uint64 // what the guest receives: the tap's egress
	TxBits uint64 // what the guest sends: the tap's ingress, through its IFB
}

// IFBName is the IFB device that shapes what the guest sends through tap
// (at most 15 bytes, like the tap's name).
func IFBName(tap string) string {
	h := sha256.Sum256([]byte(tap))
	return fmt.Sprintf("hb%x", h[:6])
}

// ingressHandle is the handle of a device's ingress qdisc (ffff:).
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// ShapeTap sets tap's bandwidth limits (both directions; a zero lifts that
// direction's limit). It is idempotent: a start, a live change and a
// re-adoption all call it with the spec's limits.
func ShapeTap(tap string, s Shape) error {
	link, err := netlink.LinkByName(tap)
	if err != nil {
		return fmt.Errorf("shape tap %s: %w", tap, err)
	}
	if err := setTbf(link, s.RxBits); err != nil {
		return fmt.Errorf("shape tap %s (guest receive): %w", tap, err)
	}
	if s.TxBits == 0 {
		if err := delIngress(link); err != nil {
			return fmt.Errorf("unshape tap %s (guest send): %w", tap, err)
		}
		return DeleteIFB(tap)
	}
	ifb, err := ensureIFB(IFBName(tap))
	if err != nil {
		return fmt.Errorf("shape tap %s (guest send): %w", tap, err)
	}
	if err := setTbf(ifb, s.TxBits); err != nil {
		return fmt.Errorf("shape tap %s (guest send, %s): %w", tap, ifb.Attrs().Name, err)
	}
	if err := redirectIngress(link, ifb); err != nil {
		return fmt.Errorf("shape tap %s (guest send): %w", tap, err)
	}
	return nil
}

// DeleteIFB removes tap's IFB device (a tap's own qdiscs go with the tap);
// a missing one is not an error.
func DeleteIFB(tap string) error {
	name := IFBName(tap)
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil
	}
	if _, ok := link.(*netlink.Ifb); !ok {
		return fmt.Errorf("delete ifb %s of tap %s: it is a %s", name, tap, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete ifb %s of tap %s: %w", name, tap, err)
	}
	return nil
}

// TapShape reads back the limits ShapeTap set on tap (0: none), for tests
// and reports.
func TapShape(tap string) (Shape, error) {
	var s Shape
	link, err := netlink.LinkByName(tap)
	if err != nil {
		return s, fmt.Errorf("tap %s: %w", tap, err)
	}
	if s.RxBits, err = tbfRate(link); err != nil {
		return s, fmt.Errorf("tap %s: %w", tap, err)
	}
	ifb, err := netlink.LinkByName(IFBName(tap))
	if err != nil {
		return s, nil
	}
	if s.TxBits, err = tbfRate(ifb); err != nil {
		return s, fmt.Errorf("tap %s: %w", tap, err)
	}
	return s, nil
}

func tbfRate(link netlink.Link) (uint64, error) {
	qs, err := netlink.QdiscList(link)
	if err != nil {
		return 0, fmt.Errorf("qdiscs of %s: %w", link.Attrs().Name, err)
	}
	for _, q := range qs {
		if t, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT {
			return t.Rate * 8, nil
		}
	}
	return 0, nil
}

// tbf is the token bucket of a rate in bits/s: a burst of 20 ms at the
// rate and at least 64 KiB (a segmentation-offloaded packet from the
// guest is up to 64 KiB: a smaller bucket would have tbf split it), and a
// queue of 100 ms at the rate beyond the burst.
func tbf(link netlink.Link, bits uint64) *netlink.Tbf {
	rate := bits / 8
	burst := max(rate/50, 64<<10)
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       rate,
		Limit:      uint32(min(rate/10+burst, 1<<30)),
		Buffer:     netlink.Xmittime(rate, uint32(burst)),
	}
}

// setTbf makes link's root qdisc a tbf at bits/s, or with 0 gives the
// link its default root qdisc back.
func setTbf(link netlink.Link, bits uint64) error {
	if bits > 0 {
		if err := netlink.QdiscReplace(tbf(link, bits)); err != nil {
			return fmt.Errorf("tbf at %d bit/s on %s: %w", bits, link.Attrs().Name, err)
		}
		return nil
	}
	rate, err := tbfRate(link)
	if err != nil || rate == 0 {
		return err
	}
	root := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT}, QdiscType: "tbf"}
	if err := netlink.QdiscDel(root); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove tbf of %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// ensureIFB creates (or reuses) the IFB device name and brings it up.
func ensureIFB(name string) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err == nil {
		if _, ok := link.(*netlink.Ifb); !ok {
			return nil, fmt.Errorf("%s is a %s, not an ifb device", name, link.Type())
		}
	} else {
		if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, TxQLen: 1000}}); err != nil {
			return nil, fmt.Errorf("create ifb %s (is the ifb kernel module there?): %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("find ifb %s: %w", name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set ifb %s up: %w", name, err)
	}
	return link, nil
}

// redirectIngress sends every packet that enters link to ifb's egress: an
// ingress qdisc with one u32 filter that matches all (matchall is not in
// every kernel; u32 is) whose action is a mirred redirect. A redirect
// already there is kept: a live change only retunes the IFB's tbf.
func redirectIngress(link, ifb netlink.Link) error {
	idx := link.Attrs().Index
	if fs, err := netlink.FilterList(link, ingressHandle); err == nil && len(fs) == 1 && redirectsTo(fs[0], ifb) {
		return nil
	}
	if err := delIngress(link); err != nil {
		return err
	}
	ing := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
	if err := netlink.QdiscAdd(ing); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", link.Attrs().Name, err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: ingressHandle, Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions:     []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
	}
	if err := netlink.FilterAdd(f); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", link.Attrs().Name, ifb.Attrs().Name, err)
	}
	return nil
}

// redirectsTo tells whether f is redirectIngress's filter to ifb.
func redirectsTo(f netlink.Filter, ifb netlink.Link) bool {
	u, ok := f.(*netlink.U32)
	if !ok || len(u.Actions) != 1 {
		return false
	}
	m, ok := u.Actions[0].(*netlink.MirredAction)
	return ok && m.Ifindex == ifb.Attrs().Index && m.MirredAction == netlink.TCA_EGRESS_REDIR
}

// delIngress removes link's ingress qdisc and with it its filters.
func delIngress(link netlink.Link) error {
	qs, err := netlink.QdiscList(link)
	if err != nil {
		return fmt.Errorf("qdiscs of %s: %w", link.Attrs().Name, err)
	}
	for _, q := range qs {
		if _, ok := q.(*netlink.Ingress); ok {
			if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove ingress qdisc of %s: %w", link.Attrs().Name, err)
			}
		}
	}
	return nil
}
