package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"hangar/internal/access"
	"hangar/internal/audit"
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
--listen IP:PORT, over TCP with TLS. VMs run in their own sessions: stopping serve leaves
them running, and the next start re-adopts them.

Pools of hosts: the first host creates the pool and its CA (<data-dir>/pki). With --listen
it serves the API with its host certificate from that CA and accepts clients with a
certificate of the pool CA (other hosts, and remote CLIs with hangar pool credentials),
of --client-ca, a bearer token of --tokens-file (all of these are pool admins), or a
local user's API token (hangar login) or session cookie, with the user's grants. Its etcd member serves peers on
https://<listen IP>:2380 and other hosts' clients on https://<listen IP>:2379, both mutual
TLS with pool CA certificates (a loopback --listen keeps etcd off TCP unless
--etcd-peer-url/--etcd-client-url say otherwise).

Another host joins with --join HOST:PORT of a pool host and --token from
'hangar pool join-token' there: it checks the pool's CA against the token's fingerprint,
sends a certificate request (its key stays here) and gets its host certificate, the CA
and the secrets key. The first three hosts become etcd members (and hold the CA key:
they are the manager hosts), later ones — and any started with --manager=false — reach the
members' etcd as clients. The data dir
then holds pool.json, and a restart with the same flags does not join again.
--etcd-endpoints uses an external etcd cluster instead of embedded members.

Settings come from flags and from a YAML config file (--config, default
` + defaultConfig + ` when it exists) whose keys are the flag names:

  data-dir: /var/lib/hangar
  log-format: json
  stop-timeout: 2m

Flags given on the command line override the file. Unknown keys are errors that name
the file and line.`,
		Example: `  hangar serve
  hangar serve --config /etc/hangar/hangar.yaml --log-format json
  hangar serve --data-dir /srv/hangar --run-dir /run/hangar --stop-timeout 2m

  # a pool: the first host, then a token for the next one, then the join
  h1$ hangar serve --host-name h1 --listen 10.99.0.1:8443
  h1$ hangar pool join-token --ttl 10m
  h2$ hangar serve --host-name h2 --listen 10.99.0.2:8443 --join 10.99.0.1:8443 --token hgjoin1.…

  # an external etcd cluster instead of embedded members
  hangar serve --listen 10.0.0.5:8443 --etcd-endpoints https://10.0.0.10:2379 \
      --etcd-ca etcd-ca.crt --etcd-cert client.crt --etcd-key client.key`,
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
	f.StringVar(&cfg.Host, "host-name", "", "this host's name in the pool, a DNS label (default: hostname)")
	f.StringVar(&cfg.Host, "host", "", "alias of --host-name")
	f.StringVar(&cfg.Listen, "listen", "", "also serve the API on this IP:PORT with TLS (host certificate of the pool CA; clients: pool CA certificates, --client-ca, --tokens-file)")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "TLS certificate for --listen instead of the host certificate of the pool CA")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "TLS key for --tls-cert")
	f.StringVar(&cfg.ClientCA, "client-ca", "", "PEM file of further CAs whose client certificates --listen accepts (the pool CA's always are)")
	f.StringVar(&cfg.Join, "join", "", "join the pool of the host serving --listen at HOST:PORT (first start only; needs --token and --listen)")
	f.StringVar(&cfg.Token, "token", "", "join token from 'hangar pool join-token' (with --join)")
	f.Var(notFlag{&cfg.NotManager}, "manager", "manager-capable: may run an etcd member and hold the CA key when it joins (--manager=false: always an etcd client)")
	f.Lookup("manager").NoOptDefVal = "true"
	f.StringSliceVar(&cfg.EtcdEndpoints, "etcd-endpoints", nil, "use this external etcd cluster (client URLs, comma-separated) instead of an embedded member")
	f.StringVar(&cfg.EtcdCA, "etcd-ca", "", "CA of the external etcd cluster's server certificates (with --etcd-endpoints)")
	f.StringVar(&cfg.EtcdCert, "etcd-cert", "", "client certificate for the external etcd cluster (with --etcd-endpoints)")
	f.StringVar(&cfg.EtcdKey, "etcd-key", "", "client key for --etcd-cert")
	f.StringVar(&cfg.TokensFile, "tokens-file", "", "bearer tokens --listen accepts: one per line or name:token, file not readable by others")
	f.IntVar(&cfg.LoginMaxFailures, "login-max-failures", access.DefaultMaxFailures, "failed logins of one user from one address before its logins are locked")
	f.DurationVar(&cfg.LoginLockout, "login-lockout", access.DefaultLockout, "how long logins stay locked after --login-max-failures failures")
	f.IntVar(&cfg.AuditMaxRecords, "audit-max-records", audit.DefaultMaxRecords, "audit records kept in etcd (the oldest are pruned)")
	f.DurationVar(&cfg.AuditMaxAge, "audit-max-age", audit.DefaultMaxAge, "audit records older than this are pruned")
	f.StringVar(&cfg.EtcdClientURL, "etcd-client-url", "", "also serve etcd clients of other hosts on this https URL (pool CA client certificates required; default https://<listen IP>:2379); local clients use <run-dir>/etcd/client.sock")
	f.StringVar(&cfg.EtcdPeerURL, "etcd-peer-url", "", "embedded etcd peer URL, https only (mutual TLS with pool CA certificates; default https://<listen IP>:2380, without --listen a free loopback port)")
	f.DurationVar(&cfg.StopTimeout, "stop-timeout", 60*time.Second, "how long a graceful stop waits for the guest")
	f.StringVar(&cfg.Accel, "accel", envOr("HANGAR_ACCEL", "auto"), "accelerator: auto (KVM when /dev/kvm works), kvm or tcg (env HANGAR_ACCEL)")
	f.StringArrayVar(&cfg.ImportDirs, "import-dir", nil, "a directory (or block device) requests may take images, ISOs and imports from outside the pools; repeatable")
	f.StringVar(&cfg.VMUIDRange, "vm-uid-range", inventory.DefaultIDRange.String(), "uids (= gids) QEMU processes run as, one per VM, and groups of shared images and volumes (first-last)")
	f.StringVar(&cfg.FenceAgent, "fence-agent", "", "command the pool master runs, with a dead host's name as its argument, before restarting that host's HA VMs elsewhere (exit 0: fenced); a failure refuses the restarts")
	f.BoolVar(&cfg.TestFaults, "test-faults", false, "tests only: files in <data-dir>/test-faults switch faults on (heartbeat-cut)")
	_ = f.MarkHidden("test-faults")
	f.DurationVar(&cfg.HistoryInterval, "history-interval", 0, "time between usage history samples (default 10s; tests set it shorter)")
	_ = f.MarkHidden("history-interval")
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

// notFlag is a boolean flag that sets *v to its negation (--manager=false
// sets NotManager).
type notFlag struct{ v *bool }

func (f notFlag) String() string {
	if f.v == nil {
		return "true"
	}
	return strconv.FormatBool(!*f.v)
}

func (f notFlag) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*f.v = !b
	return nil
}

func (f notFlag) Type() string { return "bool" }
