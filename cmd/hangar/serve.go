package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"hangar/internal/daemon"
)

func newServe(g *globals) *cobra.Command {
	var cfg daemon.Config
	var level string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the host agent, the manager and the embedded etcd member",
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(level)
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
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
