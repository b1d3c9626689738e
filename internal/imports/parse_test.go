package imports

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func sha1hex(b []byte) string {
	s := sha1.Sum(b)
	return hex.EncodeToString(s[:])
}

func TestDNSLabel(t *testing.T) {
	for in, want := range map[string]string{
		"Web_01":                            "web-01",
		"  My VM (copy) ":                   "my-vm-copy",
		"ubuntu-22.04.3-server":             "ubuntu-22-04-3-server",
		"---":                               "imported",
		"":                                  "imported",
		"Ünïcode":                           "n-code",
		strings.Repeat("ab-", 40):           strings.TrimRight(strings.Repeat("ab-", 21), "-"),
		"x" + strings.Repeat("-", 70) + "y": "x-y",
	} {
		if got := dnsLabel(in); got != want {
			t.Errorf("dnsLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestQuantityBytes(t *testing.T) {
	cases := []struct {
		q, units string
		want     int64
	}{
		{"1024", "byte * 2^20", 1 << 30},
		{"1024", "byte*2^20", 1 << 30},
		{"2", "byte * 2^30", 2 << 30},
		{"512", "MegaBytes", 512 << 20},
		{"4", "GB", 4 << 30},
		{"3", "byte * 10^6", 3000000},
		{"5", "byte * 1024", 5120},
		{"7", "", 7 << 20}, // default
		{"8388608", "byte", 8388608},
	}
	for _, c := range cases {
		got, err := quantityBytes(c.q, c.units, "byte * 2^20")
		if err != nil || got != c.want {
			t.Errorf("quantityBytes(%q, %q) = %d, %v; want %d", c.q, c.units, got, err, c.want)
		}
	}
	for _, bad := range [][2]string{{"1", "hertz * 10^6"}, {"x", "byte"}, {"-1", "byte"}, {"1", "byte * 2^99"}, {"99999999999", "byte * 2^40"}} {
		if _, err := quantityBytes(bad[0], bad[1], "byte"); err == nil {
			t.Errorf("quantityBytes(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

// TestScanExtent pins the descriptor parsing to qemu's sscanf behaviour.
func TestScanExtent(t *testing.T) {
	cases := []struct {
		line string
		use  bool
		bad  bool
		file string
	}{
		{`RW 2048 FLAT "x-flat.vmdk" 0`, true, false, "x-flat.vmdk"},
		{`RW 2048 SPARSE "x-s001.vmdk"`, true, false, "x-s001.vmdk"},
		{`  RW   2048   FLAT "x.vmdk"0`, true, false, "x.vmdk"},
		{`RW 2048 FLAT"x.vmdk" 0`, false, false, ""},             // %10s swallows the quote
		{"RW\n2048\nFLAT\n\"x.vmdk\"\n0", true, false, "x.vmdk"}, // sscanf crosses lines
		{`RDONLY 2048 FLAT "x.vmdk" 0`, false, false, ""},
		{`RW 2048 ZERO`, false, false, ""},
		{`RW 0 FLAT "x.vmdk" 0`, false, false, ""},
		{`RW 2048 FLAT "x.vmdk"`, false, true, ""},
		{`RW 2048 SPARSE "x.vmdk" 5`, false, true, ""},
		{`RW 2048 FLAT "x.vmdk`, false, true, ""}, // 4 matches: no offset
		{`RW 2048 SPARSE "` + strings.Repeat("a", 600) + `"`, true, false, strings.Repeat("a", 511)},
		{`RW 99999999999999999999 FLAT "x" 0`, false, true, ""},
		{`# RW 2048 FLAT "x" 0`, false, false, ""},
	}
	for _, c := range cases {
		e, use, err := scanExtent(c.line)
		if use != c.use || (err != nil) != c.bad || use && e.file != c.file {
			t.Errorf("scanExtent(%q) = %+v, %v, %v", c.line, e, use, err)
		}
	}
}

func TestParseManifest(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	m, err := parseManifest("x.mf", []byte("SHA256(a.ovf)= "+sum+"\r\nSHA1(disk (1).vmdk)="+strings.Repeat("cd", 20)+
		"\n\nSHA1 (vbox-disk001.vmdk) = "+strings.Repeat("ef", 20)+"\n"))
	if err != nil || len(m) != 3 || m["disk (1).vmdk"].alg != "SHA1" || m["vbox-disk001.vmdk"].alg != "SHA1" {
		t.Fatalf("parseManifest: %v %v", m, err)
	}
	for _, bad := range []string{
		"SHA256(a)= " + sum[:10],
		"MD5(a)= " + strings.Repeat("ab", 16),
		"SHA256(../a)= " + sum,
		"SHA256(a)= " + sum + "\nSHA256(a)= " + sum,
		"garbage",
	} {
		if _, err := parseManifest("x.mf", []byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("parseManifest(%q): %v", bad, err)
		}
	}
}

func TestCheckHref(t *testing.T) {
	for _, ok := range []string{"disk1.vmdk", "disks/a.vmdk", "My Disk.vmdk"} {
		if err := checkHref(ok); err != nil {
			t.Errorf("checkHref(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/etc/passwd", "../x", "a/../../x", "./x", "a//b", "http://h/x", "file:x", `a\b`, "..", "x\n"} {
		if err := checkHref(bad); err == nil {
			t.Errorf("checkHref(%q) accepted", bad)
		}
	}
}
