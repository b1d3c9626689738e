package main

import (
	"strings"
	"testing"

	v1 "hangar/api/v1"
)

func TestDecodeYAMLStrict(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"name: a\ncpus: 1\nmemory: 5\n", `s.yaml:3: unknown field "memory" (did you mean "memoryMiB"?)`},
		{"name: a\nCPUS: 1\n", `s.yaml:2: unknown field "CPUS" (did you mean "cpus"?)`},
		{"name: a\nzzzzzz: 1\n", `s.yaml:2: unknown field "zzzzzz"`},
		{"name: a\nnics:\n  - mode: user\n    forwards:\n      - hostPort: 80\n        guestprot: 8\n", `s.yaml:6: unknown field "nics[0].forwards[0].guestprot" (did you mean "guestPort"?)`},
		{"name: a\ncpus: [1]\n", `s.yaml:2: cpus: want a whole number, got a list`},
		{"name: 12\n", `s.yaml:1: name: want a string, got "12" (quote it)`},
		{"name: a\ndisks: {}\n", `s.yaml:2: disks: want a list, got a mapping`},
		{"- a\n", `s.yaml:1: the spec: want a mapping of fields, got a list`},
		{"name: a\nname: b\n", `s.yaml:2: field "name" given twice`},
		{"name: a\n---\nname: b\n", `s.yaml:2: a second YAML document`},
		{"name: [\n", `s.yaml: `},
		{"name: a\nha:\n  enabled: true\n  prio: 5\n", `s.yaml:4: unknown field "ha.prio" (did you mean "priority"?)`},
		{"name: a\nha:\n  restartWindow: 1\n", `s.yaml:3: ha.restartWindow: want a string`},
	} {
		var s v1.VMSpec
		err := decodeYAMLStrict("s.yaml", []byte(c.in), &s)
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.in, err, c.want)
		}
	}
	var s v1.VMSpec
	in := "name: db1\ncpus: 2\nmemoryMiB: 1024\ndisks:\n  - image: /x.qcow2\n  - name: data\n    sizeMiB: 4096\nnics:\n  - mode: user\n    forwards: [{hostPort: 8080, guestPort: 80}]\ncloudInit:\n  userData: |\n    #cloud-config\nha: {enabled: true, priority: 5, restartWindow: 30m}\n"
	if err := decodeYAMLStrict("s.yaml", []byte(in), &s); err != nil {
		t.Fatal(err)
	}
	if s.Name != "db1" || s.CPUs != 2 || s.MemoryMiB != 1024 || len(s.Disks) != 2 || s.Disks[1].SizeMiB != 4096 ||
		s.NICs[0].Forwards[0].GuestPort != 80 || s.CloudInit.UserData != "#cloud-config\n" ||
		s.HA == nil || !s.HA.Enabled || s.HA.Priority != 5 || s.HA.RestartWindow != "30m" {
		t.Fatalf("decoded %+v", s)
	}
}

func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"a", "", 1}, {"kitten", "sitting", 3}, {"memory", "memorymib", 3}} {
		if got := editDistance(c.a, c.b); got != c.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.d)
		}
	}
}
