package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	v1 "hangar/api/v1"
	"hangar/internal/network"
)

// testNetns creates a network namespace for the test with a bridge br0
// (10.77.0.1/24) and a DHCP server on it that hands out 10.77.0.10.
func testNetns(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"ip", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (iproute2, busybox-static): cannot build a test network", tool)
		}
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	ns := "hgt" + hex.EncodeToString(b)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	in := func(args ...string) { run(append([]string{"ip", "netns", "exec", ns}, args...)...) }
	in("ip", "link", "set", "lo", "up")
	in("ip", "link", "add", "br0", "type", "bridge")
	in("ip", "addr", "add", "10.77.0.1/24", "dev", "br0")
	in("ip", "link", "set", "br0", "up")
	dir := t.TempDir()
	conf := filepath.Join(dir, "udhcpd.conf")
	if err := os.WriteFile(conf, []byte("interface br0\nstart 10.77.0.10\nend 10.77.0.10\noption subnet 255.255.255.0\noption router 10.77.0.1\nlease_file "+dir+"/leases\npidfile "+dir+"/udhcpd.pid\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "leases"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dhcpd := exec.Command("ip", "netns", "exec", ns, "busybox", "udhcpd", "-f", conf)
	if err := dhcpd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dhcpd.Process.Kill(); _ = dhcpd.Wait() })
	return ns
}

// bootBridged starts hangar serve in a test namespace (testNetns) and boots
// a VM name with one NIC on its bridge (mutate changes the spec first); it
// returns the server, the namespace and the guest's boot id.
func bootBridged(t *testing.T, name string, mutate ...func(*v1.VMSpec)) (*server, string, string) {
	t.Helper()
	needQEMU(t)
	ns := testNetns(t)
	s := newServerIn(t, ns)
	ctx := context.Background()
	spec := v1.VMSpec{Name: name, MemoryMiB: 256, Disks: []v1.Disk{{Image: guestImage}},
		NICs: []v1.NIC{{Mode: v1.NICBridge, Bridge: "br0"}}}
	for _, f := range mutate {
		f(&spec)
	}
	op, err := s.c.CreateVM(ctx, spec, true, time.Minute)
	if err == nil {
		_, err = s.c.Wait(ctx, op, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	bootID, _ := s.waitReady(name, 0)
	return s, ns, bootID
}

// guestStatusInNetns is the bridged guest's /cgi-bin/status (the address
// testNetns's DHCP server hands out), retried for a minute.
func guestStatusInNetns(t *testing.T, ns string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := httpGetInNetns(ns, "10.77.0.10:80", "/cgi-bin/status")
		if err == nil {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest on the bridge does not answer: %v", err)
		}
		time.Sleep(time.Second)
	}
}

// TestBridgeNIC: a VM on a bridge gets a tap, takes an address from the
// bridge's DHCP server and serves HTTP on it; the tap goes with the VM.
func TestBridgeNIC(t *testing.T) {
	s, ns, bootID := bootBridged(t, "bridged")
	ctx := context.Background()
	tap := network.TapName("bridged", 0)
	if out, err := exec.Command("ip", "netns", "exec", ns, "ip", "-o", "link", "show", tap).CombinedOutput(); err != nil || !strings.Contains(string(out), "master br0") {
		t.Fatalf("tap %s not on br0: %v %s", tap, err, out)
	}
	body := guestStatusInNetns(t, ns)
	if !strings.Contains(body, "boot_id="+bootID) || !strings.Contains(body, "hostname=bridged") {
		t.Fatalf("guest on the bridge answered %q, want its boot id %s", body, bootID)
	}
	// A bridge that does not exist: the start fails, naming the field.
	bad := v1.VMSpec{Name: "nobridge", MemoryMiB: 128, Disks: []v1.Disk{{SizeMiB: 16}}, NICs: []v1.NIC{{Mode: v1.NICBridge, Bridge: "br9"}}}
	op, err := s.c.CreateVM(ctx, bad, true, time.Minute)
	if err == nil {
		op, err = s.c.Wait(ctx, op, nil)
	}
	if err == nil || op.Error == nil || op.Error.Field != "nics[0].bridge" {
		t.Fatalf("start on a missing bridge: %+v %v", op.Error, err)
	}
	op, err = s.c.DeleteVM(ctx, "bridged", true, time.Minute)
	if err == nil {
		_, err = s.c.Wait(ctx, op, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "netns", "exec", ns, "ip", "link", "show", tap).Run(); err == nil {
		t.Fatalf("tap %s left after delete", tap)
	}
}

// inNetns runs f on a thread switched into the network namespace ns: a
// socket it opens stays there.
func inNetns(ns string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	defer netns.Set(orig)
	return f()
}

// dialInNetns opens a TCP connection from inside a network namespace.
func dialInNetns(ns, addr string) (conn net.Conn, err error) {
	err = inNetns(ns, func() error {
		conn, err = net.DialTimeout("tcp", addr, 3*time.Second)
		return err
	})
	return conn, err
}

// httpGetInNetns sends a GET from inside a network namespace.
func httpGetInNetns(ns, addr, path string) (string, error) {
	conn, err := dialInNetns(ns, addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: guest\r\n\r\n", path); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") && !strings.HasPrefix(string(b), "HTTP/1.0 200") {
		return "", fmt.Errorf("guest answered %q", b)
	}
	return string(b), nil
}
