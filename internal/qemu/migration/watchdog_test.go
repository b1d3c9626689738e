package migration

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWatchdog(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	ram := func(remaining int64) Progress {
		return Progress{Phase: PhaseRAM, RAMTotal: 1000, RAMRemaining: remaining}
	}
	disk := func(done int64) Progress { return Progress{Phase: PhaseMirror, DiskTotal: 1000, DiskTransferred: done} }
	type sample struct {
		at    time.Duration
		p     Progress
		abort bool
	}
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		max     time.Duration
		samples []sample
	}{
		{"steady progress never aborts", 2 * time.Second, 0, []sample{
			{0, ram(900), false}, {1500 * time.Millisecond, ram(800), false}, {3 * time.Second, ram(700), false}, {4500 * time.Millisecond, ram(10), false}}},
		{"no new low for the timeout aborts", 2 * time.Second, 0, []sample{
			{0, ram(500), false}, {1 * time.Second, ram(600), false}, {2 * time.Second, ram(500), false}, {2100 * time.Millisecond, ram(550), true}}},
		{"dirtying guest: up and down above the floor", 3 * time.Second, 0, []sample{
			{0, ram(400), false}, {1 * time.Second, ram(300), false}, {2 * time.Second, ram(700), false}, {3 * time.Second, ram(350), false},
			{4 * time.Second, ram(301), false}, {4100 * time.Millisecond, ram(800), true}}},
		{"nothing known yet does not count as stalled", 1 * time.Second, 0, []sample{
			{0, Progress{Phase: PhaseRAM}, false}, {5 * time.Second, Progress{Phase: PhaseRAM}, false}, {6 * time.Second, ram(900), false}}},
		{"a new phase starts its own count", 2 * time.Second, 0, []sample{
			{0, disk(100), false}, {1 * time.Second, disk(1000), false}, {2500 * time.Millisecond, ram(900), false}, {4 * time.Second, ram(900), false},
			{4600 * time.Millisecond, ram(900), true}}},
		{"mirror stalled", 2 * time.Second, 0, []sample{
			{0, disk(100), false}, {1 * time.Second, disk(100), false}, {2100 * time.Millisecond, disk(100), true}}},
		{"total bound", 0, 5 * time.Second, []sample{
			{0, ram(900), false}, {4 * time.Second, ram(10), false}, {5100 * time.Millisecond, ram(5), true}}},
		{"zero disables both", 0, 0, []sample{
			{0, ram(900), false}, {time.Hour, ram(900), false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := Watchdog{Timeout: tc.timeout, Max: tc.max}
			w.Start(t0)
			for i, s := range tc.samples {
				err := w.Observe(t0.Add(s.at), s.p)
				if (err != nil) != s.abort {
					t.Fatalf("sample %d (%v, remaining %d): err %v, want abort %v", i, s.at, s.p.Remaining(), err, s.abort)
				}
				if err != nil && !errors.Is(err, ErrAborted) {
					t.Fatalf("sample %d: %v does not wrap ErrAborted", i, err)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	good := Target{IP: "10.99.0.2", Port: 49152, NBDPort: 49153, Exports: []string{"drive-disk0"}}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]Target{
		"no ip":          {Port: 1},
		"any address":    {IP: "0.0.0.0", Port: 1},
		"name not ip":    {IP: "h2", Port: 1},
		"port":           {IP: "10.0.0.1", Port: 70000},
		"exports no nbd": {IP: "10.0.0.1", Port: 5, Exports: []string{"x"}},
		"same ports":     {IP: "10.0.0.1", Port: 5, NBDPort: 5, Exports: []string{"x"}},
		"multifd 0":      {IP: "10.0.0.1", Port: 5, Multifd: true},
	} {
		if err := tt.validate(); err == nil {
			t.Errorf("%s: %+v accepted", name, tt)
		}
	}
	if err := (Source{IP: "10.0.0.1", Port: 5, TLS: &TLS{}}).validate(); err == nil {
		t.Error("tls without a target host name accepted")
	}
	if err := (Source{IP: "10.0.0.1", Port: 5, Disks: []Disk{{Node: "a", Export: "a"}}}).validate(); err == nil {
		t.Error("disks without an nbd port accepted")
	}
}

func TestWriteCreds(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if err := WriteCreds(dir, []byte("ca"), []byte("cert"), []byte("key"), os.Getuid(), os.Getgid()); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir %v %v", st.Mode(), err)
	}
	for f, want := range map[string]string{caCertFile: "ca", serverCertFile: "cert", clientCertFile: "cert", serverKeyFile: "key", clientKeyFile: "key"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || string(b) != want {
			t.Errorf("%s: %q %v", f, b, err)
		}
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v %v", f, st.Mode(), err)
		}
	}
	// A symlink planted where a key goes is replaced, not followed.
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("host file"), 0o644)
	os.Remove(filepath.Join(dir, serverKeyFile))
	os.Symlink(victim, filepath.Join(dir, serverKeyFile))
	if err := WriteCreds(dir, []byte("ca"), []byte("cert"), []byte("key2"), os.Getuid(), os.Getgid()); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "host file" {
		t.Errorf("symlink followed: victim now %q", b)
	}
	if err := WriteCreds(dir, nil, []byte("c"), []byte("k"), 0, 0); err == nil {
		t.Error("empty ca accepted")
	}
}
