// Package buildinfo says which build of Hangar this binary is: the version
// set at link time (-ldflags "-X hangar/internal/buildinfo.Version=…", as the
// Makefile does) or the module version, and the git commit Go recorded.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Version is set at build time; empty means: take the module's version.
var Version = ""

// Info is what a binary knows about its own build.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"goVersion"`
}

// String is "VERSION (commit ABCDEF123456[, modified]) GOVERSION".
func (b Info) String() string {
	s := b.Version
	if b.Commit != "" {
		c := b.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		s += " (commit " + c
		if b.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return s + " " + b.GoVersion
}

// Get returns this binary's build information.
func Get() Info {
	info, _ := debug.ReadBuildInfo()
	return from(Version, info)
}

// from is Get on given inputs (info may be nil: built without module
// support).
func from(version string, info *debug.BuildInfo) Info {
	b := Info{Version: version, GoVersion: runtime.Version()}
	if info != nil {
		if info.GoVersion != "" {
			b.GoVersion = info.GoVersion
		}
		if b.Version == "" && info.Main.Version != "" {
			b.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Commit = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Version == "" {
		b.Version = "(devel)"
	}
	return b
}
