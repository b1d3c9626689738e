package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/daemon"
	"hangar/internal/qemu/config"
	"hangar/internal/serial"
)

func newDemo(g *globals) *cobra.Command {
	var cfg daemon.Config
	var image, name string
	var port int
	cmd := &cobra.Command{
		Use:         "demo",
		Annotations: map[string]string{serverAnnotation: "true"},
		Short:       "One-host demo: serve on the embedded defaults, boot a VM, keep serving until Ctrl-C",
		Long: `Run hangar serve in this process, create and boot a VM of the test guest with its port 80
forwarded to 127.0.0.1:--port, show what the guest answers, and keep serving until Ctrl-C.

Ctrl-C at any moment prints "stopping…", stops and removes the VM the demo made, stops the
server and exits 130; a second Ctrl-C while it cleans up forces the VM off at once. The
server's log goes to <data-dir>/demo.log.`,
		Example: "  make demo\n  hangar demo --image /var/cache/hangar/guest/hangar-guest.qcow2 --port 0\n" +
			"  hangar demo --data-dir /tmp/d --run-dir /tmp/r --socket /tmp/r/h.sock",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := atLeast(cmd, "port", int64(port), 0); err != nil {
				return err
			}
			if _, err := os.Stat(image); err != nil {
				return fmt.Errorf("--image: %w (build it with guest/build.sh)", err)
			}
			restore := takeTerminal()
			defer restore()
			dm := &demo{out: cmd.OutOrStdout(), name: name, image: image, port: port, cfg: cfg, restoreTerminal: restore}
			dm.cfg.Socket = g.serverSocket(cmd, cfg.RunDir)
			return dm.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&image, "image", "/var/cache/hangar/guest/hangar-guest.qcow2", "guest image (built by guest/build.sh)")
	f.StringVar(&name, "name", "demo", "VM name")
	f.IntVar(&port, "port", 8080, "host port on 127.0.0.1 forwarded to the guest's port 80 (0: a free one)")
	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/hangar", "state directory")
	f.StringVar(&cfg.RunDir, "run-dir", "/run/hangar", "runtime directory")
	f.StringVar(&cfg.Accel, "accel", envOr("HANGAR_ACCEL", "auto"), "accelerator: auto, kvm or tcg")
	return cmd
}

// demo is one run of hangar demo.
type demo struct {
	out   io.Writer
	name  string
	image string
	port  int
	cfg   daemon.Config

	mu          sync.Mutex
	interrupts  int
	guestUp     bool               // the guest reported ready: ask it to power off
	force       context.CancelFunc // a second Ctrl-C during cleanup calls it
	interrupted chan struct{}      // closed at the first Ctrl-C
	// restoreTerminal gives the terminal's foreground back (see takeTerminal).
	restoreTerminal func()
}

func (dm *demo) say(format string, a ...any) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	fmt.Fprintf(dm.out, format+"\n", a...)
}

// watchSignals turns the first Ctrl-C (or SIGTERM) into "stopping…" and a
// cancelled work context, a second one during cleanup into forcing it, and a
// third into leaving at once.
func (dm *demo) watchSignals(cancel context.CancelFunc) (stop func()) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-sigs:
			}
			dm.mu.Lock()
			dm.interrupts++
			n, force := dm.interrupts, dm.force
			switch {
			case n == 1:
				fmt.Fprintln(dm.out, "\nstopping…")
				close(dm.interrupted)
				cancel()
			case n == 2:
				fmt.Fprintf(dm.out, "still cleaning up (vm %s, hangar serve); forcing it: the VM is killed now. Ctrl-C once more leaves at once.\n", dm.name)
				if force != nil {
					force()
				}
			default:
				fmt.Fprintf(dm.out, "leaving without cleaning up: vm %s may still run (the next demo removes it)\n", dm.name)
				if dm.restoreTerminal != nil {
					dm.restoreTerminal()
				}
				os.Exit(exitInterrupted)
			}
			dm.mu.Unlock()
		}
	}()
	return func() { signal.Stop(sigs); close(done) }
}

func (dm *demo) wasInterrupted() bool {
	select {
	case <-dm.interrupted:
		return true
	default:
		return false
	}
}

func (dm *demo) run(parent context.Context) error {
	dm.interrupted = make(chan struct{})
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	stop := dm.watchSignals(cancel)
	defer stop()

	logPath := filepath.Join(dm.cfg.DataDir, "demo.log")
	if err := os.MkdirAll(dm.cfg.DataDir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	dm.cfg.Log = slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if dm.port == 0 {
		if dm.port, err = freePort(); err != nil {
			return err
		}
	}

	dm.say("starting hangar serve (data in %s, log in %s)…", dm.cfg.DataDir, logPath)
	dm.cfg.ImportDirs = append(dm.cfg.ImportDirs, filepath.Dir(dm.image)) // the guest image lives outside the pools
	d, err := daemon.Start(ctx, dm.cfg)
	if err != nil {
		if dm.wasInterrupted() {
			dm.say("hangar stopped before it served; nothing to clean up")
			return errInterrupted
		}
		return err
	}
	dm.say("hangar is serving on %s", d.Socket)
	err = dm.boot(ctx, d)
	if dm.wasInterrupted() {
		err = nil // what failed failed because of Ctrl-C
	}
	if err == nil && !dm.wasInterrupted() {
		select {
		case <-ctx.Done():
		case err = <-d.Err():
			dm.say("hangar serve failed: %v", err)
		}
	}
	if cerr := dm.cleanup(d); cerr != nil && err == nil {
		err = cerr
	}
	if err == nil && dm.wasInterrupted() {
		return errInterrupted
	}
	return err
}

// boot creates the demo VM and waits until its guest is up and serving.
func (dm *demo) boot(ctx context.Context, d *daemon.Daemon) error {
	c := client.New(d.Socket)
	if _, err := c.VM(ctx, dm.name); err == nil {
		dm.say("removing the %s VM left by an earlier demo", dm.name)
		op, err := c.DeleteVM(ctx, dm.name, true, 0)
		if err == nil {
			_, err = c.Wait(ctx, op, nil)
		}
		if err != nil {
			return fmt.Errorf("remove the earlier demo vm: %w", err)
		}
	}
	spec := v1.VMSpec{Name: dm.name, CPUs: 1, MemoryMiB: 256,
		Disks: []v1.Disk{{Image: dm.image}},
		NICs:  []v1.NIC{{Mode: v1.NICUser, Forwards: []v1.Forward{{HostPort: dm.port, GuestPort: 80}}}}}
	if err := ctx.Err(); err != nil {
		return err // interrupted: create nothing
	}
	dm.say("creating vm %s…", dm.name)
	t0 := time.Now()
	// The request itself is not cut by Ctrl-C: once sent, the VM exists
	// when it returns, and cleanup finds it and removes it.
	cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
	op, err := c.CreateVM(cctx, spec, true, 0)
	ccancel()
	if err == nil {
		_, err = c.Wait(ctx, op, nil)
	}
	if err != nil {
		return fmt.Errorf("create the demo vm: %w", err)
	}
	dm.say("vm %s created and started in %s; waiting for the guest to boot...", dm.name, time.Since(t0).Round(time.Millisecond))
	bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	m, _, err := serial.WaitFor(bctx, d.Agent.SerialLogPath(dm.name), 0, serial.ReadyMarker)
	cancel()
	if err != nil {
		return fmt.Errorf("guest did not report ready: %w", err)
	}
	dm.mu.Lock()
	dm.guestUp = true
	dm.mu.Unlock()
	dm.say("guest %s is up after %s: boot_id=%s", m[2], time.Since(t0).Round(time.Millisecond), m[1])
	if body, err := httpGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/status", dm.port)); err == nil {
		dm.say("the guest's web server answers through the forward:\n  %s", strings.ReplaceAll(strings.TrimSpace(body), "\n", "\n  "))
	} else if ctx.Err() == nil {
		dm.say("the guest's web server did not answer yet: %v", err)
	}
	bin := os.Args[0]
	if d.Socket != client.SocketFromEnv() {
		bin += " --socket " + d.Socket
	}
	dm.say("\nTry, in another shell:\n  curl http://127.0.0.1:%d/cgi-bin/status\n  %[2]s vm list\n  %[2]s vm show %[3]s\n  %[2]s vm console %[3]s   (Ctrl-] detaches)\n  %[2]s host info\n\nPress Ctrl-C to stop the demo.", dm.port, bin, dm.name)
	return nil
}

// cleanup stops and removes the demo VM and stops the server, with fresh
// contexts (the work context is cancelled by then). The guest is asked to
// power off first when it got as far as booting; a second Ctrl-C (or a
// guest that does not stop) kills it instead.
func (dm *demo) cleanup(d *daemon.Daemon) error {
	fctx, force := context.WithCancel(context.Background())
	defer force()
	dm.mu.Lock()
	dm.force = force
	if dm.interrupts >= 2 {
		force()
	}
	graceful := dm.guestUp
	dm.mu.Unlock()

	c := client.New(d.Socket)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var err error
	if v, verr := c.VM(ctx, dm.name); verr == nil {
		if graceful && v.Status.State == v1.StateRunning && fctx.Err() == nil {
			dm.say("stopping vm %s (Ctrl-C again kills it)…", dm.name)
			gctx, gcancel := context.WithTimeout(fctx, 45*time.Second)
			op, serr := c.Action(gctx, dm.name, "stop", v1.StopArgs{TimeoutSeconds: 30}, 0)
			if serr == nil {
				_, serr = c.Wait(gctx, op, nil)
			}
			gcancel()
			if serr != nil {
				dm.say("vm %s did not stop by itself (%v); killing it", dm.name, shortErr(serr, fctx))
			}
		}
		op, derr := c.DeleteVM(ctx, dm.name, true, 0)
		if derr == nil {
			_, derr = c.Wait(ctx, op, nil)
		}
		if derr != nil {
			err = fmt.Errorf("remove the demo vm: %w", derr)
		} else {
			dm.say("vm %s stopped and removed", dm.name)
		}
	} else if !isNotFound(verr) {
		err = fmt.Errorf("look up the demo vm: %w", verr)
	}
	if cerr := d.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("stop hangar serve: %w", cerr)
	}
	// QEMU runs in its own session: whatever the API could not stop must
	// not outlive the demo.
	if pid := killLeftoverQEMU(dm.cfg.RunDir, dm.name); pid > 0 {
		dm.say("killed the demo vm's QEMU (pid %d) that outlived hangar serve", pid)
	}
	dm.say("hangar stopped")
	return err
}

func shortErr(err error, fctx context.Context) string {
	if fctx.Err() != nil {
		return "Ctrl-C"
	}
	return err.Error()
}

func isNotFound(err error) bool {
	var e *v1.Error
	return errors.As(err, &e) && e.Code == v1.CodeNotFound
}

// killLeftoverQEMU kills the QEMU of vm whose pidfile is under runDir, when
// that process still runs with runDir on its command line; it returns the
// pid it killed (0: none).
func killLeftoverQEMU(runDir, vm string) int {
	b, err := os.ReadFile(filepath.Join(runDir, "vms", vm, config.PIDFile))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), runDir) {
		return 0
	}
	if syscall.Kill(pid, syscall.SIGKILL) != nil {
		return 0
	}
	return pid
}

// takeTerminal puts the demo in its own process group in the foreground of
// its terminal, as a shell does for a job, so that Ctrl-C reaches the demo
// alone and not a make that runs it (make would report the interrupt as an
// error of its own). It returns the function that gives the terminal back.
func takeTerminal() (restore func()) {
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return func() {}
	}
	orig, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	if err != nil || orig != syscall.Getpgrp() {
		return func() {} // not in the foreground: leave the terminal alone
	}
	if syscall.Setpgid(0, 0) != nil {
		return func() {}
	}
	signal.Ignore(syscall.SIGTTOU) // setting the foreground group from a background one raises it
	if unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, syscall.Getpgrp()) != nil {
		return func() {}
	}
	return func() { _ = unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, orig) }
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == 200 {
				return string(b), nil
			}
			err = errors.Join(rerr, fmt.Errorf("status %s", resp.Status))
		}
		select {
		case <-ctx.Done():
			return "", err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
