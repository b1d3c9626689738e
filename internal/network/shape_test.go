package network

import (
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNetns runs the test's body on a thread in a fresh network namespace.
func inNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("shaping a tap needs root (a network namespace of its own)")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		t.Skipf("no network namespace: %v", err)
	}
	t.Cleanup(func() {
		_ = netns.Set(orig)
		ns.Close()
		orig.Close()
		runtime.UnlockOSThread()
	})
}

// TestShapeTap: limits on a tap become a tbf on its egress and an IFB with
// a tbf that its ingress is redirected to; a change replaces them and a
// zero lifts them, the IFB too.
func TestShapeTap(t *testing.T) {
	inNetns(t)
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		t.Fatal(err)
	}
	tap := TapName("shaped", 0)
	if err := EnsureTap(tap, "br0"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []Shape{{RxBits: 8e6, TxBits: 2e6}, {RxBits: 8e6, TxBits: 2e6}, {RxBits: 1e6, TxBits: 50e6}, {TxBits: 3e6}, {RxBits: 4e6}, {}} {
		t0 := time.Now()
		if err := ShapeTap(tap, s); err != nil {
			t.Fatalf("shape %+v: %v", s, err)
		}
		t.Logf("shape %+v: %s", s, time.Since(t0))
		got, err := TapShape(tap)
		if err != nil {
			t.Fatal(err)
		}
		if got != s {
			t.Errorf("shaped %+v, read back %+v", s, got)
		}
		_, err = netlink.LinkByName(IFBName(tap))
		if (err == nil) != (s.TxBits > 0) {
			t.Errorf("shape %+v: ifb there: %v", s, err == nil)
		}
		if s.TxBits > 0 {
			link, _ := netlink.LinkByName(tap)
			fs, err := netlink.FilterList(link, ingressHandle)
			if err != nil || len(fs) != 1 {
				t.Errorf("shape %+v: ingress filters %v %v, want one redirect", s, fs, err)
			}
		}
	}
	if err := ShapeTap(tap, Shape{TxBits: 1e6}); err != nil {
		t.Fatal(err)
	}
	if err := DeleteTap(tap); err != nil {
		t.Fatal(err)
	}
	if err := DeleteIFB(tap); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(IFBName(tap)); err == nil {
		t.Error("ifb left after DeleteIFB")
	}
}
