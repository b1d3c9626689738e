package manager

import (
	"reflect"
	"strings"
	"testing"

	v1 "hangar/api/v1"
)

func TestUnknownFieldPath(t *testing.T) {
	ty := reflect.TypeOf(&v1.VMSpec{})
	cases := map[string][2]string{
		`{"name":"a","colour":1}`:                                      {"colour", ""},
		`{"name":"a","disks":[{"sizeMiB":1},{"shape":"round"}]}`:       {"disks[1].shape", ""},
		`{"nics":[{"forwards":[{"hostPort":1,"guestPort":2,"x":3}]}]}`: {"nics[0].forwards[0].x", ""},
		`{"nics":[{"forwards":[{"hostPort":1,"guestport":2}]}]}`:       {"nics[0].forwards[0].guestport", "guestPort"},
		`{"name":"a","MemoryMiB":1}`:                                   {"MemoryMiB", "memoryMiB"},
		`{"name":"a","memoryMiB":1}`:                                   {"", ""},
		`{"name":"a","cloudInit":{"userData":"x"}}`:                    {"", ""},
	}
	for body, want := range cases {
		if p, w := unknownFieldPath([]byte(body), ty); p != want[0] || w != want[1] {
			t.Errorf("%s: got %q %q, want %q %q", body, p, w, want[0], want[1])
		}
	}
}

func TestDuplicateKey(t *testing.T) {
	cases := map[string]string{
		`{"name":"a","cpus":1}`:                                 "",
		`{"name":"a","name":"b"}`:                               "name",
		`{"cpus":1,"CPUs":64}`:                                  "CPUs",
		`{"disks":[{"name":"a"},{"name":"b","name":"c"}]}`:      "disks[1].name",
		`{"nics":[{"forwards":[{"hostPort":1,"hostPort":2}]}]}`: "nics[0].forwards[0].hostPort",
		`{"a":{"x":1},"b":{"x":1}}`:                             "",
		`[{"a":1},{"a":1}]`:                                     "",
		`{"a":[1,2,{"b":[{"c":1,"c":2}]}]}`:                     "a[2].b[0].c",
		`{"name":`:                                              "", // a syntax error is the decoder's to report
	}
	for body, want := range cases {
		got, err := duplicateKey([]byte(body))
		if err != nil || got != want {
			t.Errorf("%s: got %q %v, want %q", body, got, err, want)
		}
	}
	deep := strings.Repeat("[", 100) + strings.Repeat("]", 100)
	if _, err := duplicateKey([]byte(deep)); err == nil {
		t.Errorf("100 levels of nesting: no error")
	}
}

func TestTypeErrorPath(t *testing.T) {
	ty := reflect.TypeOf(&v1.VMSpec{})
	cases := map[string]string{
		`{"nics":[{"mode":"user"},{"forwards":[{"hostPort":1},{"hostPort":"80"}]}]}`: "nics[1].forwards[1].hostPort",
		`{"memoryMiB":"lots"}`:                     "memoryMiB",
		`{"cpus":99999999999999999999}`:            "cpus",
		`{"disks":{"name":"x"}}`:                   "disks",
		`{"disks":[{"sizeMiB":1},{"name":false}]}`: "disks[1].name",
		`[1,2]`:         "",
		`{"name":"ok"}`: "",
	}
	for body, want := range cases {
		if got := typeErrorPath([]byte(body), ty); got != want {
			t.Errorf("%s: got %q, want %q", body, got, want)
		}
	}
}
