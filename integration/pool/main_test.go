// Package pool_test runs multi-host tests: three `hangar serve` processes,
// each in its own network namespace (internal/netlab), booting real test
// guests under QEMU on bridges that share one L2, read from a client
// namespace. The hosts are started once per `go test` process and shared
// by the tests. A test starts with
//
//	p := sharedPool(t)                       // h1 h2 h3 (joined when serve has --join) + client c1
//	g := p.BootGuest(t, "h2", "web", nil)    // on h2 (OnHost), br0 NIC; ready marker + DHCP lease; deleted at the end
//	poller := p.Poll(t, g)                   // GET g.URL every 20 ms from c1
//	... p.CLI(t, "h1", "vm", "migrate", "web", "--to", "h3") ...
//	r := poller.Stop()                       // r.BootIDs, r.Decreases, r.LongestGap, r.Failures
//
// and has p.API(t, host) (client.Client on the host's socket), p.CLI /
// p.CLIErr, p.WaitReady (serial marker on a host), p.GuestIP (lease),
// p.GuestStatus, p.WaitVM (state on a host), p.QEMUs / p.QEMUOf (QEMU
// processes in a host's namespace, for leftover checks), p.PowerLoss and
// p.Restart (kill -9 everything of a host; start it again on its data),
// p.JoinToken, p.SharedGuests (one guest per host, booted once, for tests
// that only read). Tests that change a host (power loss) must leave it
// running again for the next test. On failure the hosts' serve logs and
// the guests' serial logs are printed; HANGAR_POOL_DIR keeps them.
package pool_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"testing"

	"hangar/internal/netlab"
)

var (
	hangarBin  string // built once in TestMain
	guestImage string // found (or built) once in TestMain
	skipReason string // why no multi-host test can run here

	poolOnce sync.Once
	pool     *Pool // the shared fixture; nil until a test asks for it
	poolErr  error
	poolMu   sync.Mutex // guards closing against starting
	closed   bool
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	flag.Parse()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skipReason = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86 qemu-utils): multi-host tests cannot boot guests"
	} else if err := netlab.Check(); err != nil {
		skipReason = fmt.Sprintf("multi-host tests need network namespaces: %v", err)
	}
	if skipReason != "" {
		fmt.Fprintln(os.Stderr, "WARNING:", skipReason)
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "hgpool")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	hangarBin = filepath.Join(tmp, "hangar")
	build := []string{"build", "-o", hangarBin}
	if os.Getenv("HANGAR_TEST_RACE") != "" {
		build = append(build, "-race") // hangar serve under the race detector; reports fail the test
	}
	if out, err := exec.Command("go", append(build, "../../cmd/hangar")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build hangar: %v\n%s", err, out)
		return 1
	}
	cmd := exec.Command("bash", "../../guest/build.sh") // honours HANGAR_GUEST_DIR; cached
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build test guest: %v\n", err)
		return 1
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	guestImage = lines[len(lines)-1]

	defer closePool()
	// A signal, or go test's -timeout (which kills the binary without
	// running defers), must not leave namespaces behind.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "pool: %v: removing the test pool\n", s)
		closePool()
		os.Exit(2)
	}()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			margin := min(d/10, time.Minute)
			t := time.AfterFunc(d-margin, func() {
				fmt.Fprintf(os.Stderr, "pool: -timeout %s nearly reached: removing the test pool first\n%s", d, dumpPool())
				closePool()
				os.RemoveAll(tmp) // the binary's panic skips run's defers
			})
			defer t.Stop()
		}
	}
	code := m.Run()
	closePool()
	if left := leftNamespaces(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: network namespaces of this test process left behind: %v\n", left)
		return 1
	}
	return code
}

// leftNamespaces are the namespaces of this process's labs still present
// (netlab names them hg<pid>-… and hg<pid>l<n>-…).
func leftNamespaces() []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return []string{fmt.Sprintf("(ip netns list: %v)", err)}
	}
	re := regexp.MustCompile(fmt.Sprintf(`^hg%d(l[0-9]+)?-`, os.Getpid()))
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && re.MatchString(f[0]) {
			left = append(left, f[0])
		}
	}
	return left
}

// closePool stops the shared pool, if it was started, exactly once.
func closePool() {
	poolMu.Lock()
	defer poolMu.Unlock()
	if closed {
		return
	}
	closed = true
	if pool != nil {
		if err := pool.close(); err != nil {
			fmt.Fprintln(os.Stderr, "pool: close:", err)
		}
	}
}

// dumpPool is every host's log tail (for a failure outside any test).
func dumpPool() string {
	poolMu.Lock()
	p := pool
	poolMu.Unlock()
	if p == nil {
		return ""
	}
	return p.dump(4000)
}

// sharedPool is the package's pool of three hosts h1–h3 and a client,
// started at the first call; a test that cannot have it is skipped (no
// QEMU, no namespaces) or failed (it did not start). It registers a
// cleanup that dumps the hosts' logs and guests' serial logs when the
// test fails.
func sharedPool(t testing.TB) *Pool {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	poolOnce.Do(func() {
		poolMu.Lock()
		defer poolMu.Unlock()
		if closed {
			poolErr = fmt.Errorf("the test pool is closed")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		pool, poolErr = startPool(ctx, 3)
	})
	if poolErr != nil {
		t.Fatalf("start the test pool: %v", poolErr)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pool state at failure:\n%s", pool.dump(6000))
		}
	})
	return pool
}
