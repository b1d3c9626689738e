package netlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Proc is a process the lab started in a namespace.
type Proc struct {
	Name string   // base of argv[0]
	Argv []string // as run, after ip netns exec NS
	Log  string   // where its stdout and stderr go

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// start runs argv in ns via `ip netns exec` (which execs it: the pid is
// the program's own) and records it for Close.
func (l *Lab) start(ctx context.Context, ns, logPath string, argv, env []string) (*Proc, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return nil, errors.New("netlab: lab is closed")
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== netlab %s: start in %s: %v\n", time.Now().UTC().Format(time.RFC3339Nano), ns, argv)
	// Not CommandContext: ctx bounds the start, not the process's life.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("netlab: start %s in %s: %w", argv[0], ns, err)
	}
	p := &Proc{Name: filepath.Base(argv[0]), Argv: argv, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	closed = l.closed
	l.mu.Unlock()
	if closed { // Close ran meanwhile and did not see p
		p.kill()
		<-p.done
		return nil, errors.New("netlab: lab is closed")
	}
	l.log.Info("process started", "ns", ns, "name", p.Name, "pid", p.Pid())
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited (and was reaped).
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is how the process ended (nil while it runs or after exit 0).
func (p *Proc) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Signal sends sig to the process if it still runs.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	return p.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM and waits for the exit, SIGKILL after timeout.
func (p *Proc) Stop(timeout time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("netlab: stop %s: %w", p.Name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
	}
	p.kill()
	<-p.done
	return fmt.Errorf("netlab: %s (pid %d) ignored SIGTERM for %s: killed", p.Name, p.Pid(), timeout)
}

func (p *Proc) kill() {
	if !p.Exited() {
		_ = p.cmd.Process.Kill()
	}
}

// nsPids are the live processes whose network namespace is ns, never this
// process (a thread of it may be in ns for a moment: see Dialer).
func nsPids(ns string) ([]int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/run/netns", ns), &want); err != nil {
		return nil, fmt.Errorf("netlab: namespace %s: %w", ns, err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid <= 1 {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) != nil {
			continue // gone, or a zombie
		}
		if st.Ino == want.Ino && st.Dev == want.Dev {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killNS sends SIGKILL to every process in ns until none is left (a
// process forking meanwhile is caught in the next round).
func killNS(ns string, timeout time.Duration) (int, error) {
	seen := map[int]bool{}
	deadline := time.Now().Add(timeout)
	for {
		pids, err := nsPids(ns)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return len(seen), nil
			}
			return len(seen), err
		}
		if len(pids) == 0 {
			return len(seen), nil
		}
		for _, pid := range pids {
			seen[pid] = true
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return len(seen), fmt.Errorf("netlab: processes %v in %s outlive SIGKILL", pids, ns)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
