// Package qemu starts, adopts and stops QEMU processes and tells what the
// host's QEMU can do.
package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"hangar/internal/qemu/config"
	"hangar/internal/qemu/qmp"
)

// Capabilities of this host's QEMU.
type Capabilities struct {
	Binary  string
	Version string
	// Accel is "kvm" when /dev/kvm can be opened, else "tcg".
	Accel string
	// Setpriv is util-linux's setpriv, which starts QEMU unprivileged
	// (StartAs); "" when it is not installed.
	Setpriv string
}

// Detect finds qemu-system-x86_64 (or $HANGAR_QEMU) and the accelerator:
// accel "auto" (or "") uses KVM when /dev/kvm works and TCG otherwise;
// "kvm" fails without KVM; "tcg" never uses KVM.
func Detect(ctx context.Context, accel string) (Capabilities, error) {
	var c Capabilities
	bin := os.Getenv("HANGAR_QEMU")
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return c, fmt.Errorf("find qemu: %w (apt-get install qemu-system-x86)", err)
	}
	c.Binary = path
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return c, fmt.Errorf("qemu --version: %w", err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	c.Version = strings.TrimSpace(strings.TrimPrefix(first, "QEMU emulator version "))
	if p, err := exec.LookPath("setpriv"); err == nil {
		c.Setpriv = p
	}
	switch accel {
	case "", "auto":
		c.Accel = "tcg"
		if KVMUsable() {
			c.Accel = "kvm"
		}
	case "kvm":
		if !KVMUsable() {
			return c, errors.New("accelerator kvm: /dev/kvm cannot be opened or is not hardware virtualization (kvm_intel/kvm_amd)")
		}
		c.Accel = "kvm"
	case "tcg":
		c.Accel = "tcg"
	default:
		return c, fmt.Errorf("accelerator %q: want auto, kvm or tcg", accel)
	}
	return c, nil
}

// KVMUsable reports whether /dev/kvm can be opened read-write and is
// backed by hardware virtualization (kvm_intel or kvm_amd). Other KVM
// back-ends, such as kvm_pvm in nested sandboxes, run only guests built for
// them: an ordinary BIOS-booted guest fails there with "emulation failure".
func KVMUsable() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	for _, m := range []string{"/sys/module/kvm_intel", "/sys/module/kvm_amd"} {
		if _, err := os.Stat(m); err == nil {
			return true
		}
	}
	return false
}

// Shutdown is QEMU's SHUTDOWN event: why the guest stopped.
type Shutdown struct {
	Guest  bool   `json:"guest"`
	Reason string `json:"reason"`
}

// Instance is one running QEMU process.
type Instance struct {
	Name   string
	RunDir string
	PID    int
	Mon    *qmp.Client
	// Execed is when StartAs had the process started (before connecting
	// its monitor); zero for an adopted QEMU.
	Execed time.Time

	exited chan struct{}
	mu     sync.Mutex
	sd     *Shutdown
	log    *slog.Logger
}

// Exited is closed once the QEMU process is gone.
func (i *Instance) Exited() <-chan struct{} { return i.exited }

// ShutdownEvent returns the SHUTDOWN event QEMU sent before exiting, or nil
// when it died without one (killed or crashed).
func (i *Instance) ShutdownEvent() *Shutdown {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.sd
}

// Sandbox is who a QEMU process runs as: an unprivileged uid and gid with
// supplementary groups, all capabilities dropped (effective, permitted,
// inheritable, ambient and the bounding set) and no_new_privs set, from
// before QEMU's first instruction.
type Sandbox struct {
	UID, GID int
	Groups   []int
	// Files are handed to QEMU as file descriptors 3, 4, … (for -add-fd);
	// Start closes nothing of them.
	Files []*os.File
}

// Start runs QEMU as root (tests, raw benchmark runs); see StartAs.
func Start(ctx context.Context, caps Capabilities, name, runDir string, argv []string, log *slog.Logger) (*Instance, error) {
	return StartAs(ctx, caps, name, runDir, argv, nil, log)
}

// StartAs runs QEMU with argv in its own session (so that the agent's
// death does not kill it), output to runDir/qemu.log, and connects QMP.
// The guest is left paused when argv has -S. With a sandbox, runDir (0700)
// is owned by its uid and QEMU is started through setpriv(1), which
// switches ids, empties every capability set and sets no_new_privs, then
// execs QEMU in the same process (the pid, pidfile and session stay
// QEMU's).
func StartAs(ctx context.Context, caps Capabilities, name, runDir string, argv []string, sb *Sandbox, log *slog.Logger) (*Instance, error) {
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if err := os.Chmod(runDir, 0o700); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	bin, args := caps.Binary, argv
	if sb != nil {
		if sb.UID <= 0 || sb.GID <= 0 {
			return nil, fmt.Errorf("start %s: sandbox uid %d gid %d: must not be root", name, sb.UID, sb.GID)
		}
		if caps.Setpriv == "" {
			return nil, fmt.Errorf("start %s: setpriv not found (apt-get install util-linux): qemu cannot be started unprivileged", name)
		}
		if err := os.Lchown(runDir, sb.UID, sb.GID); err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		bin, args = caps.Setpriv, append(setprivArgs(*sb, caps.Binary), argv...)
	}
	for _, f := range []string{config.QMPSocket, config.ConsoleSocket, config.PIDFile} {
		_ = os.Remove(filepath.Join(runDir, f))
	}
	// O_NOFOLLOW: an unprivileged QEMU owns runDir and could have left a
	// symlink to a host file in its place.
	logf, err := os.OpenFile(filepath.Join(runDir, "qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = runDir
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if sb != nil {
		cmd.ExtraFiles = sb.Files
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	inst := &Instance{Name: name, RunDir: runDir, PID: cmd.Process.Pid, Execed: time.Now(), exited: make(chan struct{}), log: log}
	go func() {
		_ = cmd.Wait()
		close(inst.exited)
	}()
	mon, err := dialWhileAlive(ctx, filepath.Join(runDir, config.QMPSocket), inst.exited)
	if err != nil {
		_ = syscall.Kill(inst.PID, syscall.SIGKILL)
		<-inst.exited
		return nil, fmt.Errorf("start %s: %w%s", name, err, logTail(runDir))
	}
	inst.attach(mon)
	return inst, nil
}

// setprivArgs runs qemu as sb: real, effective and saved ids switched,
// supplementary groups set (or cleared), the inheritable, ambient and
// bounding capability sets emptied (the kernel clears the effective and
// permitted sets when a process with no root uid execs), no_new_privs set.
func setprivArgs(sb Sandbox, qemu string) []string {
	groups := "--clear-groups"
	if len(sb.Groups) > 0 {
		gs := make([]string, len(sb.Groups))
		for i, g := range sb.Groups {
			gs[i] = strconv.Itoa(g)
		}
		groups = "--groups=" + strings.Join(gs, ",")
	}
	return []string{"--reuid=" + strconv.Itoa(sb.UID), "--regid=" + strconv.Itoa(sb.GID), groups,
		"--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", qemu}
}

// Adopt takes over a QEMU that an earlier agent started: it checks that the
// pid in runDir's pidfile is that VM's QEMU and connects its QMP socket.
func Adopt(ctx context.Context, name, runDir string, log *slog.Logger) (*Instance, error) {
	b, err := readNoFollow(filepath.Join(runDir, config.PIDFile), 32)
	if err != nil {
		return nil, fmt.Errorf("adopt %s: %w", name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return nil, fmt.Errorf("adopt %s: bad pidfile %q", name, b)
	}
	if !isOurQEMU(pid, name, runDir) {
		return nil, fmt.Errorf("adopt %s: pid %d is not its qemu: %w", name, pid, os.ErrProcessDone)
	}
	mon, err := qmp.Dial(ctx, filepath.Join(runDir, config.QMPSocket))
	if err != nil {
		return nil, fmt.Errorf("adopt %s: %w", name, err)
	}
	inst := &Instance{Name: name, RunDir: runDir, PID: pid, exited: make(chan struct{}), log: log}
	go func() {
		// Not our child: watch the monitor, then the pid.
		<-mon.Done()
		for alive(pid) && isOurQEMU(pid, name, runDir) {
			time.Sleep(50 * time.Millisecond)
		}
		close(inst.exited)
	}()
	inst.attach(mon)
	return inst, nil
}

func (i *Instance) attach(mon *qmp.Client) {
	i.Mon = mon
	events, cancel := mon.Subscribe()
	go func() {
		defer cancel()
		for ev := range events {
			if ev.Name != "SHUTDOWN" {
				continue
			}
			var sd Shutdown
			if err := json.Unmarshal(ev.Data, &sd); err != nil {
				i.log.Warn("bad SHUTDOWN event", "vm", i.Name, "err", err)
			}
			i.mu.Lock()
			i.sd = &sd
			i.mu.Unlock()
		}
	}()
}

// Kill ends QEMU with SIGKILL and waits until it is gone.
func (i *Instance) Kill(ctx context.Context) error {
	if err := syscall.Kill(i.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s (pid %d): %w", i.Name, i.PID, err)
	}
	return i.Wait(ctx)
}

// Wait waits until the process is gone.
func (i *Instance) Wait(ctx context.Context) error {
	select {
	case <-i.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for %s to exit: %w", i.Name, ctx.Err())
	}
}

// Quit asks QEMU to exit at once (no guest cooperation) and waits; it kills
// the process if QEMU does not go.
func (i *Instance) Quit(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := i.Mon.Quit(qctx); err == nil {
		if i.Wait(qctx) == nil {
			return nil
		}
	}
	return i.Kill(ctx)
}

// Powerdown presses the ACPI power button and waits up to timeout for the
// guest to power off; then it quits QEMU. It reports whether the guest
// shut down by itself.
func (i *Instance) Powerdown(ctx context.Context, timeout time.Duration) (bool, error) {
	if err := i.Mon.SystemPowerdown(ctx); err != nil && !errors.Is(err, qmp.ErrClosed) {
		return false, fmt.Errorf("powerdown %s: %w", i.Name, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-i.exited:
		return true, nil
	case <-t.C:
		i.log.Info("guest did not power off in time, quitting qemu", "vm", i.Name, "timeout", timeout)
		return false, i.Quit(ctx)
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

func dialWhileAlive(ctx context.Context, sock string, exited <-chan struct{}) (*qmp.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(sock); err == nil {
			mon, err := qmp.Dial(ctx, sock)
			if err == nil {
				return mon, nil
			}
		}
		select {
		case <-exited:
			return nil, errors.New("qemu exited during start")
		case <-ctx.Done():
			return nil, fmt.Errorf("connect qmp: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond): // a stat: cheap, and every start waits here for QEMU
		}
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// isOurQEMU guards against pid reuse: the process must be a live QEMU whose
// command line names this VM and its run directory.
func isOurQEMU(pid int, name, runDir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil {
		if _, rest, ok := bytes.Cut(stat, []byte(") ")); ok && len(rest) > 0 && rest[0] == 'Z' {
			return false
		}
	}
	args := strings.Split(string(b), "\x00")
	return containsArg(args, "guest="+name+",") && containsArg(args, filepath.Join(runDir, config.QMPSocket))
}

func containsArg(args []string, sub string) bool {
	for _, a := range args {
		if strings.Contains(a, sub) {
			return true
		}
	}
	return false
}

func logTail(runDir string) string {
	b, err := readNoFollow(filepath.Join(runDir, "qemu.log"), 1<<20)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return ": " + strings.TrimSpace(string(b))
}

// readNoFollow reads up to max bytes of a file in a run directory, which
// an unprivileged QEMU owns: a symlink there is not followed.
func readNoFollow(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	return io.ReadAll(io.LimitReader(f, max))
}
