package etcdembed_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"hangar/internal/etcdembed"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Logf("%s", p)
	return len(p), nil
}

func TestRestartKeepsData(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	cfg := etcdembed.Config{Name: "h1", DataDir: dir, Logger: testLogger(t)}

	start := time.Now()
	m, err := etcdembed.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Logf("first start ready in %v, client urls %v", time.Since(start), m.ClientURLs())
	if _, err := m.Client().Put(ctx, "/hangar/test", "v1"); err != nil {
		t.Fatalf("put: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}

	start = time.Now()
	m, err = etcdembed.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer m.Close()
	t.Logf("restart ready in %v, client urls %v", time.Since(start), m.ClientURLs())
	resp, err := m.Client().Get(ctx, "/hangar/test")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("get after restart = %v, want v1", resp.Kvs)
	}
	// The restarted member still accepts writes.
	if _, err := m.Client().Put(ctx, "/hangar/test", "v2"); err != nil {
		t.Fatalf("put after restart: %v", err)
	}
}

func TestFixedURLs(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// Pick URLs by starting once with automatic ports, then reuse them.
	dir := t.TempDir()
	m, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	urls := m.ClientURLs()
	if err := m.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	m, err = etcdembed.Start(ctx, etcdembed.Config{DataDir: t.TempDir(), ClientURLs: urls, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("start with fixed client urls %v: %v", urls, err)
	}
	defer m.Close()
	if got := m.ClientURLs(); len(got) != 1 || got[0] != urls[0] {
		t.Fatalf("client urls = %v, want %v", got, urls)
	}
	if _, err := m.Client().Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
}

func TestStartErrors(t *testing.T) {
	ctx := t.Context()
	if _, err := etcdembed.Start(ctx, etcdembed.Config{}); err == nil {
		t.Fatal("start without data dir: want error")
	}
	if _, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: t.TempDir(), ClusterState: "bogus"}); err == nil {
		t.Fatal("start with bad cluster state: want error")
	}
	if _, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: t.TempDir(), ClientURLs: []string{"tcp://127.0.0.1:1"}}); err == nil {
		t.Fatal("start with bad url scheme: want error")
	}
}

// TestStartNotReady starts one member of a two-member cluster whose other
// member never comes up: it cannot get quorum, so Start must give up when
// ctx ends and clean up.
func TestStartNotReady(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peer := "http://" + l.Addr().String()
	l.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	m, err := etcdembed.Start(ctx, etcdembed.Config{
		Name:           "a",
		DataDir:        t.TempDir(),
		PeerURLs:       []string{peer},
		InitialCluster: "a=" + peer + ",b=http://127.0.0.1:1",
		Logger:         slog.New(slog.DiscardHandler),
	})
	if err == nil {
		m.Close()
		t.Fatal("start without quorum: want error")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start without quorum: err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("start took %v to give up", d)
	}
	t.Logf("gave up after %v: %v", time.Since(start), err)
}
