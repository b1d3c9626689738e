package qemu

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSetprivArgs(t *testing.T) {
	got := setprivArgs(Sandbox{UID: 200001, GID: 200001, Groups: []int{200002, 107}}, "/usr/bin/qemu-system-x86_64")
	want := []string{"--reuid=200001", "--regid=200001", "--groups=200002,107", "--inh-caps=-all", "--ambient-caps=-all",
		"--bounding-set=-all", "--no-new-privs", "--", "/usr/bin/qemu-system-x86_64"}
	if !slices.Equal(got, want) {
		t.Fatalf("setpriv args\n got %q\nwant %q", got, want)
	}
	if got := setprivArgs(Sandbox{UID: 5000, GID: 5000}, "q"); !slices.Contains(got, "--clear-groups") {
		t.Fatalf("no groups must clear the supplementary groups: %q", got)
	}
}

func TestStartAsRefusesRoot(t *testing.T) {
	caps := Capabilities{Binary: "/bin/false", Setpriv: "/usr/bin/setpriv"}
	for _, sb := range []Sandbox{{UID: 0, GID: 5000}, {UID: 5000, GID: 0}, {UID: -1, GID: 5000}} {
		_, err := StartAs(context.Background(), caps, "vm", filepath.Join(t.TempDir(), "run"), nil, &sb, slog.Default())
		if err == nil || !strings.Contains(err.Error(), "must not be root") {
			t.Errorf("sandbox %+v: %v, want a refusal", sb, err)
		}
	}
	caps.Setpriv = ""
	_, err := StartAs(context.Background(), caps, "vm", filepath.Join(t.TempDir(), "run"), nil, &Sandbox{UID: 5000, GID: 5000}, slog.Default())
	if err == nil || !strings.Contains(err.Error(), "setpriv") {
		t.Errorf("without setpriv: %v, want an error naming it", err)
	}
}
