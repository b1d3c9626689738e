package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// cliResult is what one run of the hangar binary printed and returned.
type cliResult struct {
	stdout, stderr string
	code           int
}

// hangar runs the real hangar binary against this server (--socket) with
// no terminal, as a script would.
func (s *server) hangar(args ...string) cliResult {
	s.t.Helper()
	return runHangar(s.t, append([]string{"--socket", s.socket}, args...)...)
}

func runHangar(t *testing.T, args ...string) cliResult {
	t.Helper()
	return runHangarWith(t, nil, "", args...)
}

// runHangarWith is runHangar with more environment and stdin.
func runHangarWith(t *testing.T, env []string, stdin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, hangarBin, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliResult{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("hangar %v: %v", args, err)
	}
	return r
}

// ok runs hangar and fails the test unless it exits 0.
func (s *server) ok(args ...string) cliResult {
	s.t.Helper()
	r := s.hangar(args...)
	if r.code != 0 {
		s.t.Fatalf("hangar %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// fails runs hangar and fails the test unless it exits non-zero with want
// in its stderr.
func (s *server) fails(want string, args ...string) cliResult {
	s.t.Helper()
	r := s.hangar(args...)
	if r.code == 0 || !strings.Contains(r.stderr, want) {
		s.t.Fatalf("hangar %s: exit %d, want non-zero with %q in stderr\nstdout:\n%s\nstderr:\n%s",
			strings.Join(args, " "), r.code, want, r.stdout, r.stderr)
	}
	return r
}

// TestCLIUnknownCommands: unknown subcommands of every group exit non-zero
// with cobra's message and a suggestion; the aliases people type work.
func TestCLIUnknownCommands(t *testing.T) {
	s := newServer(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "lst"}, `unknown command "lst" for "hangar vm"`},
		{[]string{"vm", "frobnicate"}, `unknown command "frobnicate" for "hangar vm"`},
		{[]string{"vm", "snapshot", "craete", "x", "y"}, `unknown command "craete" for "hangar vm snapshot"`},
		{[]string{"volume", "lsit"}, `unknown command "lsit" for "hangar volume"`},
		{[]string{"pool", "nope"}, `unknown command "nope" for "hangar pool"`},
		{[]string{"op", "nope"}, `unknown command "nope" for "hangar op"`},
		{[]string{"host", "nope"}, `unknown command "nope" for "hangar host"`},
		{[]string{"template", "nope"}, `unknown command "nope" for "hangar template"`},
		{[]string{"bench", "nope"}, `unknown command "nope" for "hangar bench"`},
		{[]string{"nope"}, `unknown command "nope" for "hangar"`},
	} {
		s.fails(c.want, c.args...)
	}
	if r := s.fails("Did you mean this?", "vm", "lst"); !strings.Contains(r.stderr, "list") {
		t.Fatalf("no suggestion of list for lst: %s", r.stderr)
	}
	// A group alone prints its help and succeeds.
	if r := s.ok("vm"); !strings.Contains(r.stdout, "Available Commands") {
		t.Fatalf("hangar vm printed no help: %s", r.stdout)
	}
	s.ok("vm", "create", "al1")
	if r := s.ok("vm", "ls", "--no-headers"); !strings.HasPrefix(r.stdout, "al1 ") {
		t.Fatalf("vm ls --no-headers: %q", r.stdout)
	}
	s.ok("vm", "rm", "al1")
	if r := s.ok("vm", "ls"); strings.Contains(r.stdout, "al1") || !strings.HasPrefix(r.stdout, "NAME") {
		t.Fatalf("vm rm did not delete, or ls has no header: %q", r.stdout)
	}
	for _, g := range []string{"volume", "pool", "template", "op", "host"} {
		s.ok(g, "ls")
	}
}

// TestCLIFlagValues: explicit zero or negative sizes are errors that name
// the flag, and nothing is created.
func TestCLIFlagValues(t *testing.T) {
	s := newServer(t)
	s.fails("--cpus: must be at least 1", "vm", "create", "bad", "--cpus", "0")
	s.fails("--memory: must be at least 1", "vm", "create", "bad", "--memory", "-5")
	s.fails("--disk-size: must be at least 1", "vm", "create", "bad", "--disk-size", "0")
	s.fails("--cpus: must be at least 1", "import", "/nonexistent.vmdk", "--cpus", "0")
	s.fails("--size: must be at least 1", "volume", "create", "local-testhost/x.qcow2", "--size", "0")
	s.fails("--timeout: must not be negative", "vm", "stop", "bad", "--timeout", "-1s")
	if vms, err := s.c.VMs(context.Background()); err != nil || len(vms) != 0 {
		t.Fatalf("VMs after refused creates: %+v %v", vms, err)
	}
}

// TestCLISpecErrors: a YAML spec's mistakes are reported with the file, the
// line and the nearest field name, in YAML's terms.
func TestCLISpecErrors(t *testing.T) {
	s := newServer(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := write("spec.yaml", "name: db1\ncpus: 2\nmemory: 1024\n")
	r := s.fails(`spec.yaml:3: unknown field "memory" (did you mean "memoryMiB"?)`, "vm", "create", "-f", p)
	if strings.Contains(r.stderr, "JSON") {
		t.Fatalf("spec error talks about JSON: %s", r.stderr)
	}
	p = write("nested.yaml", "name: db1\ncpus: 2\nmemoryMiB: 256\ndisks:\n  - sizeMiB: 64\n    imgae: /x.qcow2\n")
	s.fails(`nested.yaml:6: unknown field "disks[0].imgae" (did you mean "image"?)`, "vm", "create", "-f", p)
	p = write("type.yaml", "name: db1\ncpus: two\n")
	s.fails(`type.yaml:2: cpus: want a whole number`, "vm", "create", "-f", p)
	p = write("good.yaml", "name: db1\ncpus: 2\nmemoryMiB: 256\nrestartPolicy: never\n")
	s.ok("vm", "create", "-f", p)
	v, err := s.c.VM(context.Background(), "db1")
	if err != nil || v.Spec.CPUs != 2 || v.Spec.MemoryMiB != 256 || v.Spec.RestartPolicy != "never" {
		t.Fatalf("vm from a good spec: %+v %v", v.Spec, err)
	}
	// vm set round trip on the stopped VM.
	if r := s.ok("vm", "set", "db1", "--cpus", "3", "--memory", "384", "--restart", "always"); !strings.Contains(r.stdout, "3 CPUs, 384 MiB") {
		t.Fatalf("vm set says %q", r.stdout)
	}
	var got v1.VM
	if r := s.ok("vm", "show", "db1", "-o", "json"); json.Unmarshal([]byte(r.stdout), &got) != nil ||
		got.Spec.CPUs != 3 || got.Spec.MemoryMiB != 384 || got.Spec.RestartPolicy != "always" {
		t.Fatalf("vm show after vm set: %q", r.stdout)
	}
	s.fails("nothing to change", "vm", "set", "db1")
}

// TestCLIOutputFormats: every show and list takes -o json|yaml|table (wide
// where there are more columns) and --no-headers; host info and version
// name the server they asked.
func TestCLIOutputFormats(t *testing.T) {
	s := newServer(t)
	s.ok("vm", "create", "fmt1", "--wait=true")
	ops, err := s.c.Operations(context.Background())
	if err != nil || len(ops) == 0 {
		t.Fatalf("operations: %v %v", ops, err)
	}
	id := ops[0].ID
	var op v1.Operation
	if r := s.ok("op", "show", id, "-o", "json"); json.Unmarshal([]byte(r.stdout), &op) != nil || op.ID != id {
		t.Fatalf("op show -o json: %q", r.stdout)
	}
	if r := s.ok("op", "show", id); !strings.Contains(r.stdout, "State:") || !strings.Contains(r.stdout, id) {
		t.Fatalf("op show table: %q", r.stdout)
	}
	if r := s.ok("op", "wait", id); !strings.Contains(r.stdout, "succeeded") {
		t.Fatalf("op wait: %q", r.stdout)
	}
	if r := s.ok("op", "list", "-o", "wide"); !strings.Contains(r.stdout, "ATTEMPTS") {
		t.Fatalf("op list -o wide: %q", r.stdout)
	}
	if r := s.ok("op", "list", "--no-headers"); strings.Contains(r.stdout, "KIND") || !strings.Contains(r.stdout, id) {
		t.Fatalf("op list --no-headers: %q", r.stdout)
	}
	// host list: the capacity overview, hosts then the pool's lines; -o
	// json the whole object; --no-headers the host rows alone.
	var capa v1.Capacity
	if r := s.ok("host", "list", "-o", "json"); json.Unmarshal([]byte(r.stdout), &capa) != nil || len(capa.Hosts) != 1 ||
		capa.Hosts[0].Name != "testhost" || capa.Hosts[0].State != v1.HostAlive || capa.Pool.Hosts != 1 || capa.Pool.CPUModel == "" ||
		capa.Pool.CPUOvercommit != 4 || len(capa.Pool.Storage) == 0 || capa.Pool.Storage[0].TotalBytes <= 0 {
		t.Fatalf("host list -o json: %q", r.stdout)
	}
	if r := s.ok("host", "list"); !strings.Contains(r.stdout, "STATE") || !strings.Contains(r.stdout, "testhost  alive") ||
		!strings.Contains(r.stdout, "CPU model:  "+capa.Pool.CPUModel) || !strings.Contains(r.stdout, "Pool:") {
		t.Fatalf("host list: %q", r.stdout)
	}
	if r := s.ok("host", "list", "--no-headers"); len(strings.Split(strings.TrimSpace(r.stdout), "\n")) != 1 || !strings.HasPrefix(r.stdout, "testhost ") {
		t.Fatalf("host list --no-headers: %q", r.stdout)
	}
	if r := s.ok("host", "list", "-o", "wide"); !strings.Contains(r.stdout, "STORAGE") || !strings.Contains(r.stdout, "local-testhost ") {
		t.Fatalf("host list -o wide: %q", r.stdout)
	}
	// fmt1 names no CPU model: it gets the pool's.
	if v, err := s.c.VM(context.Background(), "fmt1"); err != nil || v.Spec.CPUModel != capa.Pool.CPUModel {
		t.Fatalf("fmt1 cpu model %q (%v), want the pool's %q", v.Spec.CPUModel, err, capa.Pool.CPUModel)
	}
	var vms []v1.VM
	if r := s.ok("vm", "list", "-o", "json"); json.Unmarshal([]byte(r.stdout), &vms) != nil || len(vms) != 1 {
		t.Fatalf("vm list -o json: %q", r.stdout)
	}
	if r := s.ok("vm", "list", "-o", "wide"); !strings.Contains(r.stdout, "RESTARTS") {
		t.Fatalf("vm list -o wide: %q", r.stdout)
	}
	if r := s.ok("vm", "show", "fmt1", "-o", "yaml"); !strings.Contains(r.stdout, "name: fmt1") {
		t.Fatalf("vm show -o yaml: %q", r.stdout)
	}
	s.fails(`--output: "wide"`, "vm", "show", "fmt1", "-o", "wide")
	s.fails(`--output: "xml"`, "vm", "list", "-o", "xml")
	for _, args := range [][]string{{"pool", "list"}, {"volume", "list"}, {"template", "list"}, {"host", "info"}, {"host", "list"},
		{"vm", "snapshot", "list", "fmt1"}, {"version"}} {
		r := s.ok(append(args, "-o", "json")...)
		if !json.Valid([]byte(r.stdout)) {
			t.Fatalf("%v -o json is not JSON: %q", args, r.stdout)
		}
	}
	// Shell completion asks the server for names.
	if r := s.ok("__complete", "vm", "show", "fm"); !strings.Contains(r.stdout, "fmt1\n") {
		t.Fatalf("completion of vm names: %q", r.stdout)
	}
	if r := s.ok("__complete", "vm", "snapshot", "commit", "fmt1", ""); strings.Contains(r.stdout, "fmt1") {
		t.Fatalf("completion of a snapshot name offers vm names: %q", r.stdout)
	}
	if r := s.ok("__complete", "volume", "list", ""); !strings.Contains(r.stdout, "local-testhost\n") {
		t.Fatalf("completion of pool names: %q", r.stdout)
	}
	if r := s.ok("__complete", "host", "info", ""); !strings.Contains(r.stdout, "testhost\n") {
		t.Fatalf("completion of host names: %q", r.stdout)
	}
	if r := s.ok("host", "info"); !strings.Contains(r.stdout, "unix://"+s.socket) {
		t.Fatalf("host info does not name the server %s: %q", s.socket, r.stdout)
	}
	r := s.ok("version")
	if !strings.Contains(r.stdout, "unix://"+s.socket) || !strings.Contains(r.stdout, "testhost") || !strings.Contains(r.stdout, "QEMU") {
		t.Fatalf("version does not name the server, its host and QEMU: %q", r.stdout)
	}
	// The server is this same binary: it reports the same build.
	var vr struct {
		Client struct{ Version, Commit, GoVersion string }
		Server struct{ Version, Commit, GoVersion, Error string }
	}
	if err := json.Unmarshal([]byte(s.ok("version", "-o", "json").stdout), &vr); err != nil {
		t.Fatal(err)
	}
	if vr.Server.Error != "" || vr.Server.Version == "" || vr.Server.GoVersion == "" ||
		vr.Server.Version != vr.Client.Version || vr.Server.Commit != vr.Client.Commit || vr.Server.GoVersion != vr.Client.GoVersion {
		t.Fatalf("version -o json: the server's build %+v, want the client's %+v", vr.Server, vr.Client)
	}
	if strings.Count(r.stdout, "hangar "+vr.Client.Version) != 2 {
		t.Fatalf("version does not print the server's build next to the client's: %q", r.stdout)
	}
	if r := s.ok("--version"); !strings.HasPrefix(r.stdout, "hangar ") {
		t.Fatalf("--version: %q", r.stdout)
	}
}

// TestCLIVolumeNames: the names volume list prints are what the verbs take
// back; upload and copy report progress (bytes for the upload) when not on
// a terminal.
func TestCLIVolumeNames(t *testing.T) {
	s := newServer(t)
	src := filepath.Join(t.TempDir(), "big.raw")
	if err := os.WriteFile(src, bytes.Repeat([]byte("hangar!\n"), 8<<20/8*6), 0o600); err != nil { // 48 MiB
		t.Fatal(err)
	}
	r := s.ok("volume", "upload", src, "local-testhost/images/big.raw")
	if !strings.Contains(r.stderr, "upload local-testhost/images/big.raw") || !strings.Contains(r.stderr, "48.0 MiB of 48.0 MiB") ||
		!strings.Contains(r.stderr, "MiB/s") {
		t.Fatalf("upload shows no progress with bytes and rate:\n%s", r.stderr)
	}
	r = s.ok("volume", "list", "--no-headers")
	var name string
	for _, l := range strings.Split(r.stdout, "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasSuffix(f[0], "big.raw") {
			name = f[0]
		}
	}
	if name != "local-testhost/images/big.raw" {
		t.Fatalf("volume list names the upload %q, want local-testhost/images/big.raw:\n%s", name, r.stdout)
	}
	r = s.ok("volume", "copy", name, "local-testhost/images/big.qcow2")
	for _, l := range strings.Split(r.stderr, "\n") {
		if strings.Contains(l, "queued") && !strings.Contains(l, " 0%") {
			t.Fatalf("copy progress says queued at more than 0%%: %q", l)
		}
	}
	if !strings.Contains(r.stderr, "100%") && !strings.Contains(r.stderr, "done in") {
		t.Fatalf("copy shows no progress:\n%s", r.stderr)
	}
	// The server counts the bytes a copy moves; the CLI shows them and a rate.
	if !strings.Contains(r.stderr, "of 48.0 MiB") || !strings.Contains(r.stderr, "MiB/s") {
		t.Fatalf("copy progress shows no bytes and rate:\n%s", r.stderr)
	}
	r = s.ok("volume", "show", "local-testhost/images/big.qcow2", "-o", "json")
	var v v1.Volume
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Format != "qcow2" || v.VirtualSize != 48<<20 {
		t.Fatalf("copied volume: %+v %v", v, err)
	}
	// On a terminal (script(1) gives it one) the same verbs draw a bar with
	// bytes and rate.
	if scriptBin, err := exec.LookPath("script"); err == nil {
		line := strings.Join([]string{hangarBin, "--socket", s.socket, "volume", "upload", src, "local-testhost/images/tty.raw"}, " ")
		out, err := exec.Command(scriptBin, "-qec", line, "/dev/null").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "█") || !strings.Contains(string(out), "MiB/s") || !strings.Contains(string(out), "48/48 MiB") {
			t.Fatalf("upload on a terminal draws no bar with bytes and rate (%v):\n%q", err, out)
		}
		s.ok("volume", "rm", "local-testhost/images/tty.raw")
	} else {
		t.Log("script(1) is not installed: the progress bar on a terminal is not checked")
	}
	s.ok("volume", "rm", "local-testhost/images/big.qcow2")
	s.ok("volume", "delete", name)
	s.fails("want POOL/VOLUME", "volume", "delete", "big.raw")
}

// TestCLIDeployAndSnapshotDiscard: deploy through the CLI boots the VM at
// once (the --start default), the guest answers over its forward; discarding
// a snapshot without memory on the running guest is refused without --yes
// and, with it, says so and restarts the guest from the snapshot's disks.
func TestCLIDeployAndSnapshotDiscard(t *testing.T) {
	s := newServer(t)
	s.ok("vm", "create", "golden", "--image", guestImage, "--memory", "256")
	s.ok("vm", "template", "golden", "base")
	port := freePort(t)
	s.ok("vm", "deploy", "base", "web2", "--linked", "--forward", strconv.Itoa(port)+":80")
	bootID, _ := s.waitReady("web2", 0)
	st := mustGuestStatus(t, port)
	if st["hostname"] != "web2" || st["boot_id"] != bootID {
		t.Fatalf("deployed guest says %v (serial boot id %s)", st, bootID)
	}

	// vm set: the restart policy changes while it runs, CPUs do not.
	s.ok("vm", "set", "web2", "--restart", "never")
	s.fails(`vm "web2" is running: cpus can change only while it is stopped`, "vm", "set", "web2", "--cpus", "2")
	s.fails("--memory: must be at least 1", "vm", "set", "web2", "--memory", "0")
	if v, err := s.c.VM(context.Background(), "web2"); err != nil || v.Spec.RestartPolicy != "never" || v.Spec.CPUs != 1 {
		t.Fatalf("after vm set: %+v %v", v.Spec, err)
	}

	s.ok("vm", "snapshot", "create", "web2", "disk-only")
	r := s.fails("has no memory", "vm", "snapshot", "discard", "web2", "disk-only")
	if !strings.Contains(r.stderr, "--yes") || !strings.Contains(r.stderr, "restart") {
		t.Fatalf("refusal does not say what happens and how to go ahead: %s", r.stderr)
	}
	if r := s.ok("vm", "snapshot", "discard", "--help"); !strings.Contains(r.stdout, "RESTARTED") {
		t.Fatalf("discard --help does not say the guest restarts: %s", r.stdout)
	}
	if st := mustGuestStatus(t, port); st["boot_id"] != bootID {
		t.Fatalf("a refused discard restarted the guest: boot id %s → %s", bootID, st["boot_id"])
	}
	r = s.ok("vm", "snapshot", "discard", "web2", "disk-only", "--yes")
	if !strings.Contains(r.stderr, "restarted from the snapshot's disks") {
		t.Fatalf("discard --yes did not say it restarts the guest: %s", r.stderr)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		st, err := guestStatus(t, port, 5*time.Second)
		if err == nil && st["boot_id"] != "" && st["boot_id"] != bootID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest did not come back with a new boot id after discard --yes: %v %v", st, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestServeConfig: hangar serve takes its settings from a YAML file (flags
// override it), logs JSON with --log-format json, and refuses an unknown
// key with the file and line.
func TestServeConfig(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("log-level: debug\ndta-dir: /tmp/x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runHangar(t, "serve", "--config", bad)
	if r.code == 0 || !strings.Contains(r.stderr, `bad.yaml:2: unknown setting "dta-dir" (did you mean "data-dir"?)`) {
		t.Fatalf("serve with a bad config: exit %d\n%s", r.code, r.stderr)
	}
	if r := runHangar(t, "serve", "--config", filepath.Join(dir, "missing.yaml")); r.code == 0 || !strings.Contains(r.stderr, "--config") {
		t.Fatalf("serve with a missing --config: exit %d\n%s", r.code, r.stderr)
	}
	run, err := os.MkdirTemp("", "hgc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(run)
	sock := filepath.Join(run, "h.sock")
	cfg := filepath.Join(dir, "hangar.yaml")
	body := "data-dir: " + filepath.Join(dir, "data") + "\nrun-dir: " + run + "\nsocket: " + sock +
		"\nhost: from-file\nlog-format: json\nlog-level: info\naccel: tcg\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(hangarBin, "serve", "--config", cfg, "--host", "from-flag")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := runHangar(t, "--socket", sock, "host", "list", "--no-headers")
		if r.code == 0 {
			if !strings.HasPrefix(r.stdout, "from-flag ") {
				t.Fatalf("the --host flag did not override the file: %q", r.stdout)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve from a config file did not come up: %s\nlog:\n%s", r.stderr, logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait()
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	var rec map[string]any
	if len(lines) == 0 || json.Unmarshal([]byte(lines[0]), &rec) != nil || rec["msg"] == nil || rec["level"] == nil {
		t.Fatalf("--log-format json from the file: the log is not JSON lines:\n%s", logs.String())
	}
}

// TestCLIURL: --url (HANGAR_URL) selects a TCP server, over TLS only, and
// version names it.
func TestCLIURL(t *testing.T) {
	needQEMU(t)
	if r := runHangar(t, "--url", "http://127.0.0.1:1", "vm", "ls"); r.code == 0 || !strings.Contains(r.stderr, "want https://host:port") {
		t.Fatalf("--url http: exit %d %s", r.code, r.stderr)
	}
	r := runHangar(t, "--url", "https://127.0.0.1:1", "version")
	if r.code != 0 || !strings.Contains(r.stdout, "Server:  https://127.0.0.1:1") || !strings.Contains(r.stdout, "not reachable") {
		t.Fatalf("version with an unreachable --url: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestBenchStartSmoke: `hangar bench start --runs 2` measures both sides
// and prints every phase's median and, last, the start ratio.
func TestBenchStartSmoke(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, hangarBin, "bench", "start", "--runs", "2", "--image", guestImage)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench start: %v\n%s%s", err, out, stderr.String())
	}
	text := string(out)
	for _, want := range []string{"run 2: raw qemu", "spec+op txn + watch delivery to the worker", "disk provisioning",
		"qmp connect + setup", "status write (running)", "op record + waiter sees running", "qmp greeting + qmp_capabilities"} {
		if !strings.Contains(text, want) {
			t.Errorf("bench start output lacks %q:\n%s", want, text)
		}
	}
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if !regexp.MustCompile(`^start ratio Hangar/raw [0-9]+\.[0-9]{2}$`).MatchString(lines[len(lines)-1]) {
		t.Fatalf("last line is not the ratio:\n%s", text)
	}
}
