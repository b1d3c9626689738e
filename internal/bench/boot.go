// Package bench measures Hangar against raw QEMU in the same run.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/qemu"
	"hangar/internal/qemu/config"
	"hangar/internal/serial"
	"hangar/internal/vm"
)

// BootConfig of a boot benchmark.
type BootConfig struct {
	Image     string
	Runs      int
	MemoryMiB int
	WorkDir   string // scratch space for raw runs
	// SerialLog returns where Hangar logs a VM's console.
	SerialLog func(name string) string
	Client    *client.Client
	Caps      qemu.Capabilities
	Out       io.Writer
}

// BootResult holds the samples of both sides.
type BootResult struct {
	Raw, Hangar, API []time.Duration
}

// Median of samples.
func Median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Boot alternates raw QEMU and Hangar boots to the guest's ready marker.
// Raw QEMU gets the very argv Hangar generates (minus -S, as nobody would
// resume it), with its overlay created inside the timed section too.
func Boot(ctx context.Context, cfg BootConfig) (BootResult, error) {
	var res BootResult
	for i := 0; i < cfg.Runs; i++ {
		raw, err := rawBoot(ctx, cfg, i)
		if err != nil {
			return res, fmt.Errorf("raw run %d: %w", i, err)
		}
		res.Raw = append(res.Raw, raw)
		total, api, err := hangarBoot(ctx, cfg, i)
		if err != nil {
			return res, fmt.Errorf("hangar run %d: %w", i, err)
		}
		res.Hangar = append(res.Hangar, total)
		res.API = append(res.API, api)
		fmt.Fprintf(cfg.Out, "run %d: raw %s  hangar %s  (api create+start %s)\n", i+1,
			raw.Round(time.Millisecond), total.Round(time.Millisecond), api.Round(time.Millisecond))
	}
	return res, nil
}

func spec(name string, cfg BootConfig) v1.VMSpec {
	s := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: cfg.MemoryMiB,
		// Limits on, as a production VM has them (a cgroup with shares, a
		// cap and the computed memory limit, disk throttling), but none
		// that binds a 1-vCPU boot: the cost measured is Hangar's, not the
		// caps'. (No pinning: the raw side runs unpinned.)
		Disks:     []v1.Disk{{Image: cfg.Image, Limits: &v1.DiskLimits{IOPS: 1 << 20, BPS: 1 << 40}}},
		NICs:      []v1.NIC{{Mode: v1.NICUser}},
		Resources: &v1.Resources{CPUShares: 1024, CPULimit: 2}}
	vm.Defaults(&s, cfg.Caps.Accel)
	return s
}

func rawBoot(ctx context.Context, cfg BootConfig, i int) (time.Duration, error) {
	name := fmt.Sprintf("raw%d", i)
	dir := filepath.Join(cfg.WorkDir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	s := spec(name, cfg)
	disk := filepath.Join(dir, "disk0.qcow2")
	argv, err := config.Argv(config.Params{Spec: s, Accel: cfg.Caps.Accel, RunDir: dir, LogDir: dir,
		Disks: []config.DiskFile{{Path: disk, Format: "qcow2"}}, Taps: []string{""}})
	if err != nil {
		return 0, err
	}
	argv = slices.DeleteFunc(argv, func(a string) bool { return a == "-S" })
	start := time.Now()
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", cfg.Image, "-F", "qcow2", disk).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu-img: %s", out)
	}
	cmd := exec.Command(cfg.Caps.Binary, argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, _, err := serial.WaitFor(bctx, filepath.Join(dir, config.SerialLog), 0, serial.ReadyMarker); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func hangarBoot(ctx context.Context, cfg BootConfig, i int) (total, api time.Duration, err error) {
	name := fmt.Sprintf("bench%d", i)
	c := cfg.Client
	s := spec(name, cfg)
	s.UUID, s.Host, s.Power = "", "", ""
	start := time.Now()
	op, err := c.CreateVM(ctx, s, true, time.Minute)
	if err == nil {
		_, err = c.Wait(ctx, op, nil)
	}
	if err != nil {
		return 0, 0, err
	}
	api = time.Since(start)
	defer func() {
		op, derr := c.DeleteVM(context.Background(), name, true, time.Minute)
		if derr == nil {
			_, derr = c.Wait(context.Background(), op, nil)
		}
		if err == nil {
			err = derr
		}
	}()
	bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, _, err := serial.WaitFor(bctx, cfg.SerialLog(name), 0, serial.ReadyMarker); err != nil {
		return 0, 0, err
	}
	return time.Since(start), api, nil
}
