package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
	"hangar/client"
	"hangar/internal/daemon"
	"hangar/internal/serial"
)

func newDemo(g *globals) *cobra.Command {
	var cfg daemon.Config
	var image, name string
	var port int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "One-host demo: serve on the embedded defaults, boot a VM, keep serving until Ctrl-C",
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			log, err := newLogger("warn")
			if err != nil {
				return err
			}
			cfg.Log = log
			cfg.Socket = g.serverSocket(cmd, cfg.RunDir)
			if _, err := os.Stat(image); err != nil {
				return fmt.Errorf("--image: %w (build it with guest/build.sh)", err)
			}
			if port == 0 {
				if port, err = freePort(); err != nil {
					return err
				}
			}
			d, err := daemon.Start(ctx, cfg)
			if err != nil {
				return err
			}
			defer d.Close()
			c := client.New(d.Socket)
			fmt.Fprintf(out, "hangar is serving on %s (data in %s)\n", d.Socket, cfg.DataDir)
			if _, err := c.VM(ctx, name); err == nil {
				fmt.Fprintf(out, "removing the %s VM left by an earlier demo\n", name)
				op, err := c.DeleteVM(ctx, name, true, 0)
				if _, err = c.Wait(ctx, op, nil); err != nil {
					return err
				}
			}
			spec := v1.VMSpec{Name: name, CPUs: 1, MemoryMiB: 256,
				Disks: []v1.Disk{{Image: image}},
				NICs:  []v1.NIC{{Mode: v1.NICUser, Forwards: []v1.Forward{{HostPort: port, GuestPort: 80}}}}}
			t0 := time.Now()
			op, err := c.CreateVM(ctx, spec, true, 0)
			if err != nil {
				return err
			}
			if _, err := c.Wait(ctx, op, nil); err != nil {
				return err
			}
			fmt.Fprintf(out, "vm %s created and started in %s; waiting for the guest to boot...\n", name, time.Since(t0).Round(time.Millisecond))
			bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			m, _, err := serial.WaitFor(bctx, d.Agent.SerialLogPath(name), 0, serial.ReadyMarker)
			cancel()
			if err != nil {
				return fmt.Errorf("guest did not report ready: %w", err)
			}
			fmt.Fprintf(out, "guest %s is up after %s: boot_id=%s\n", m[2], time.Since(t0).Round(time.Millisecond), m[1])
			if body, err := httpGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/status", port)); err == nil {
				fmt.Fprintf(out, "the guest's web server answers through the forward:\n  %s\n", strings.ReplaceAll(strings.TrimSpace(body), "\n", "\n  "))
			} else {
				fmt.Fprintf(out, "the guest's web server did not answer yet: %v\n", err)
			}
			bin := os.Args[0]
			fmt.Fprintf(out, "\nTry, in another shell:\n  curl http://127.0.0.1:%d/cgi-bin/status\n  %[2]s vm list\n  %[2]s vm show %[3]s\n  %[2]s vm console %[3]s   (Ctrl-] detaches)\n  %[2]s host info\n\nPress Ctrl-C to stop the demo.\n", port, bin, name)
			select {
			case <-ctx.Done():
			case err := <-d.Err():
				return err
			}
			fmt.Fprintf(out, "\nstopping vm %s...\n", name)
			sctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			op, err = c.Action(sctx, name, "stop", v1.StopArgs{TimeoutSeconds: 30}, 0)
			if err == nil {
				_, err = c.Wait(sctx, op, nil)
			}
			if err == nil {
				op, err = c.DeleteVM(sctx, name, false, 0)
				if err == nil {
					_, err = c.Wait(sctx, op, nil)
				}
			}
			if err != nil {
				return fmt.Errorf("stop demo vm: %w", err)
			}
			fmt.Fprintln(out, "demo vm stopped and removed; hangar stopped")
			return nil
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
