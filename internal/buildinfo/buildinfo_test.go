package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestFrom(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "v1.2.3"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}}
	b := from("", info)
	if b.Version != "v1.2.3" || b.Commit != "0123456789abcdef0123" || !b.Modified || b.GoVersion != "go1.99" {
		t.Fatalf("from build info: %+v", b)
	}
	if got, want := b.String(), "v1.2.3 (commit 0123456789ab, modified) go1.99"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if b := from("v9", info); b.Version != "v9" {
		t.Errorf("the link-time version does not win: %+v", b)
	}
	if b := from("", nil); b.Version != "(devel)" || b.Commit != "" || b.GoVersion == "" {
		t.Errorf("without build info: %+v", b)
	}
}
