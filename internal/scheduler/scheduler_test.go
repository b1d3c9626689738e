package scheduler

import (
	"errors"
	"testing"

	v1 "hangar/api/v1"
)

func TestPlace(t *testing.T) {
	h := func(name string, mem, alloc int, alive bool) v1.Host {
		return v1.Host{Name: name, MemoryMiB: mem, AllocatedMemoryMiB: alloc, Alive: alive}
	}
	cases := []struct {
		name  string
		hosts []v1.Host
		mem   int
		want  string
		err   bool
	}{
		{"single host", []v1.Host{h("a", 1024, 0, true)}, 512, "a", false},
		{"most free wins", []v1.Host{h("a", 4096, 3000, true), h("b", 2048, 0, true)}, 512, "b", false},
		{"dead host skipped", []v1.Host{h("a", 8192, 0, false), h("b", 1024, 0, true)}, 512, "b", false},
		{"tie broken by name", []v1.Host{h("b", 1024, 0, true), h("a", 1024, 0, true)}, 512, "a", false},
		{"nothing fits", []v1.Host{h("a", 1024, 800, true)}, 512, "", true},
		{"no live host", []v1.Host{h("a", 1024, 0, false)}, 512, "", true},
		{"no hosts", nil, 512, "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Place(c.hosts, v1.VMSpec{MemoryMiB: c.mem})
			if c.err {
				if !errors.Is(err, ErrNoHost) {
					t.Fatalf("err = %v, want ErrNoHost", err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("Place = %q, %v; want %q", got, err, c.want)
			}
		})
	}
}
