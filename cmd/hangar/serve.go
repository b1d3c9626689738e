package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"hangar/internal/daemon"
	"hangar/internal/inventory"
)

func newServe(g *globals) *cobra.Command {
	var cfg daemon.Config
	var level, format, configFile string
	cmd := &cobra.Command{
		Use:         "serve",
		Annotations: map[string]string{serverAnnotation: "true"},
		Short:       "Run the host agent, the manager and the embedded etcd member",
		Long: `Run this host's agent, the API manager and the embedded etcd member in one process.
The API is served on a unix socket (--socket, default <run-dir>/hangar.sock) and, with
--listen, over TCP with TLS. VMs run in their own sessions: stopping serve leaves them
running, and the next start re-adopts them.

Settings come from flags and from a YAML config file (--config, default
` + defaultConfig + ` when it exists) whose keys are the flag names:

  data-dir: /var/lib/hangar
  log-format: json
  stop-timeout: 2m

Flags given on the command line override the file. Unknown keys are errors that name
the file and line.`,
		Example: `  hangar serve
  hangar serve --config /etc/hangar/hangar.yaml --log-format json
  hangar serve --data-dir /srv/hangar --run-dir /run/hangar --stop-timeout 2m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := loadConfig(cmd, configFile, cmd.Flags().Changed("config")); err != nil {
				return err
			}
			if err := notNegative(cmd, "stop-timeout", cfg.StopTimeout); err != nil {
				return err
			}
			log, err := newLogger(level, format)
			if err != nil {
				return err
			}
			cfg.Log = log
			cfg.Socket = g.serverSocket(cmd, cfg.RunDir)
			d, err := daemon.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			select {
			case <-cmd.Context().Done():
				log.Info("stopping; running VMs keep running and are re-adopted at the next start")
			case err = <-d.Err():
				log.Error("fatal", "err", err)
			}
			if cerr := d.Close(); cerr != nil && err == nil {
				err = cerr
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/hangar", "state: etcd data, storage pool, logs")
	f.StringVar(&cfg.RunDir, "run-dir", "/run/hangar", "runtime sockets (QMP, consoles)")
	f.StringVar(&cfg.Host, "host", "", "this host's name (default: hostname)")
	f.StringVar(&cfg.Listen, "listen", "", "also serve the API on this TCP address (TLS only; needs --client-ca or --tokens-file)")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "TLS certificate for --listen")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "TLS key for --listen")
	f.StringVar(&cfg.ClientCA, "client-ca", "", "PEM file of CAs whose client certificates --listen accepts")
	f.StringVar(&cfg.TokensFile, "tokens-file", "", "bearer tokens --listen accepts: one per line or name:token, file not readable by others")
	f.StringVar(&cfg.EtcdClientURL, "etcd-client-url", "", "also serve etcd clients of other hosts on this https URL (pool CA client certificates required); local clients use <run-dir>/etcd/client.sock")
	f.StringVar(&cfg.EtcdPeerURL, "etcd-peer-url", "", "embedded etcd peer URL, https only (mutual TLS with pool CA certificates; default: a free loopback port)")
	f.DurationVar(&cfg.StopTimeout, "stop-timeout", 60*time.Second, "how long a graceful stop waits for the guest")
	f.StringVar(&cfg.Accel, "accel", envOr("HANGAR_ACCEL", "auto"), "accelerator: auto (KVM when /dev/kvm works), kvm or tcg (env HANGAR_ACCEL)")
	f.StringArrayVar(&cfg.ImportDirs, "import-dir", nil, "a directory (or block device) requests may take images, ISOs and imports from outside the pools; repeatable")
	f.StringVar(&cfg.VMUIDRange, "vm-uid-range", inventory.DefaultIDRange.String(), "uids (= gids) QEMU processes run as, one per VM, and groups of shared images and volumes (first-last)")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&format, "log-format", "text", "text (key=value) or json (one object a line)")
	f.StringVar(&configFile, "config", defaultConfig, "YAML file of settings (keys are flag names; flags override it)")
	return cmd
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", format)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
