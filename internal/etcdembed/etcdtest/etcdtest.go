// Package etcdtest starts an embedded etcd member for tests: a fresh pool
// CA and host certificate, a data dir and a unix client socket in
// temporary directories.
package etcdtest

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"hangar/internal/etcdembed"
	"hangar/internal/pki"
)

// Config returns a member configuration named name with its own CA, a
// host certificate for 127.0.0.1, a data dir and a socket path short enough
// for a unix socket. The directories are removed when t ends.
func Config(t testing.TB, name string) etcdembed.Config {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := etcdembed.TLSFiles{CertFile: filepath.Join(dir, "host.crt"), KeyFile: filepath.Join(dir, "host.key"), CAFile: ca.CertFile()}
	if _, err := ca.EnsureHost(f.CertFile, f.KeyFile, name, []net.IP{net.IPv4(127, 0, 0, 1)}, nil); err != nil {
		t.Fatal(err)
	}
	// t.TempDir paths carry the test name and can exceed the 107 bytes of
	// a unix socket path.
	sock, err := os.MkdirTemp("", "et")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	return etcdembed.Config{Name: name, DataDir: t.TempDir(), ClientSocket: filepath.Join(sock, "etcd", "client.sock"),
		TLS: f, Logger: slog.New(slog.DiscardHandler)}
}

// Start starts a single member (see Config) and closes it when t ends.
func Start(t testing.TB) *etcdembed.Member {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := etcdembed.Start(ctx, Config(t, "test"))
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close etcd: %v", err)
		}
	})
	return m
}
