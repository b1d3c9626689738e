package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func testFlags() (*pflag.FlagSet, *string, *time.Duration, *[]string) {
	f := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	dir := f.String("data-dir", "/var/lib/hangar", "")
	to := f.Duration("stop-timeout", time.Minute, "")
	arr := f.StringArray("peer", nil, "")
	f.String("config", "", "")
	return f, dir, to, arr
}

func TestApplyConfig(t *testing.T) {
	f, dir, to, arr := testFlags()
	if err := f.Parse([]string{"--stop-timeout", "5s"}); err != nil {
		t.Fatal(err)
	}
	in := "# settings\ndata-dir: /srv/h\nstop-timeout: 2m\npeer: [a, b]\n"
	if err := applyConfig(f, "h.yaml", []byte(in)); err != nil {
		t.Fatal(err)
	}
	if *dir != "/srv/h" || *to != 5*time.Second || strings.Join(*arr, ",") != "a,b" {
		t.Fatalf("data-dir %q stop-timeout %s (the flag wins) peer %v", *dir, *to, *arr)
	}
	for _, c := range []struct{ in, want string }{
		{"data-dir: /x\ndta-dir: /y\n", `h.yaml:2: unknown setting "dta-dir" (did you mean "data-dir"?)`},
		{"config: /x\n", `h.yaml:1: unknown setting "config"`},
		{"stop-timeout: forever\n", `h.yaml:1: stop-timeout: invalid argument "forever"`},
		{"data-dir: [a]\n", `h.yaml:1: data-dir: want one value, got a list`},
		{"data-dir: {a: b}\n", `h.yaml:1: data-dir: want a value, got a mapping`},
		{"data-dir: /a\ndata-dir: /b\n", `h.yaml:2: setting "data-dir" given twice`},
		{"- a\n", `h.yaml:1: want a mapping`},
	} {
		f, _, _, _ := testFlags()
		err := applyConfig(f, "h.yaml", []byte(c.in))
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.in, err, c.want)
		}
	}
	f, _, _, _ = testFlags()
	if err := applyConfig(f, "h.yaml", []byte("")); err != nil {
		t.Errorf("empty file: %v", err)
	}
}

// TestShippedConfig: contrib/hangar.yaml is a valid config of the real
// serve command, commented keys included.
func TestShippedConfig(t *testing.T) {
	b, err := os.ReadFile("../../contrib/hangar.yaml")
	if err != nil {
		t.Fatal(err)
	}
	uncommented := regexp.MustCompile(`(?m)^# ([a-z-]+: )`).ReplaceAll(b, []byte("$1"))
	for _, in := range [][]byte{b, uncommented} {
		serve := newServe(&globals{})
		if err := applyConfig(serve.Flags(), "contrib/hangar.yaml", in); err != nil {
			t.Fatalf("%v\n%s", err, in)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "100MiB": 100 << 20, "1GiB/s": 1 << 30, "1.5M": 3 << 19, "500KB": 500000, "4096": 4096} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"-1MiB", "fast", "0", "1PiB"} {
		if _, err := parseRate(in); err == nil {
			t.Errorf("parseRate(%q) accepted", in)
		}
	}
}
