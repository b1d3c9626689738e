package qemu

import (
	"context"
	"os/exec"
	"slices"
	"testing"

	v1 "hangar/api/v1"
)

func TestPoolCPUModel(t *testing.T) {
	kvm := func(models ...string) v1.Host { return v1.Host{Accelerator: "kvm", UsableCPUModels: models} }
	tcg := v1.Host{Accelerator: "tcg"}
	cases := []struct {
		name  string
		hosts []v1.Host
		want  string
	}{
		{"no live host", nil, TCGCPUModel},
		{"one tcg host", []v1.Host{tcg}, TCGCPUModel},
		{"tcg host among kvm hosts", []v1.Host{kvm("qemu64", "Haswell"), tcg}, TCGCPUModel},
		{"one kvm host: its newest", []v1.Host{kvm("qemu64", "Nehalem", "Broadwell", "Haswell")}, "Broadwell"},
		{"newest common model", []v1.Host{kvm("qemu64", "Nehalem", "Haswell", "Skylake-Server"), kvm("qemu64", "Nehalem", "Haswell")}, "Haswell"},
		{"order is by generation, not by list order", []v1.Host{kvm("Icelake-Server", "Cascadelake-Server", "Nehalem"), kvm("Nehalem", "Cascadelake-Server", "Icelake-Server")}, "Icelake-Server"},
		{"intel and amd share only the generic", []v1.Host{kvm("qemu64", "kvm64", "Haswell"), kvm("qemu64", "kvm64", "EPYC-Rome")}, "kvm64"},
		{"nothing in common: baseline", []v1.Host{kvm("Haswell"), kvm("EPYC")}, BaselineCPUModel},
		{"a host that reported nothing: baseline", []v1.Host{kvm("Haswell"), kvm()}, BaselineCPUModel},
		{"unknown names are ignored", []v1.Host{kvm("Haswell", "Evil-Model;rm"), kvm("Haswell", "Evil-Model;rm")}, "Haswell"},
		{"a duplicate does not stand for another host", []v1.Host{kvm("Haswell", "Haswell"), kvm("Nehalem")}, BaselineCPUModel},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := PoolCPUModel(c.hosts); got != c.want {
				t.Fatalf("PoolCPUModel = %q, want %q", got, c.want)
			}
		})
	}
}

func TestCPUGenerationsAreDistinct(t *testing.T) {
	seen := map[string]bool{}
	for _, m := range cpuGenerations {
		if seen[m] {
			t.Fatalf("%s listed twice", m)
		}
		seen[m] = true
	}
	if CPUModelRank(TCGCPUModel) < 0 || CPUModelRank(BaselineCPUModel) < 0 {
		t.Fatal("the fixed models must be ranked")
	}
}

func TestParseCPUDefinitions(t *testing.T) {
	transcript := []byte(`{"QMP": {"version": {}}}
{"return": {}}
{"return": [{"name": "Haswell", "unavailable-features": ["pcid"]}, {"name": "Nehalem", "unavailable-features": []}, {"name": "max", "unavailable-features": []}, {"name": "qemu64", "unavailable-features": []}, {"name": "Westmere", "unavailable-features": []}], "id": "defs"}
{"return": {}}
`)
	got, err := parseCPUDefinitions(transcript)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"qemu64", "Nehalem", "Westmere"}; !slices.Equal(got, want) {
		t.Fatalf("usable = %v, want %v", got, want)
	}
	if _, err := parseCPUDefinitions([]byte(`{"error": {"class": "GenericError", "desc": "nope"}, "id": "defs"}`)); err == nil {
		t.Fatal("an error answer must be an error")
	}
	if _, err := parseCPUDefinitions([]byte(`{"return": {}}`)); err == nil {
		t.Fatal("no answer must be an error")
	}
}

// TestUsableCPUModelsTCG probes the installed QEMU: under TCG the pool's
// fixed model must be among the usable ones (it runs with no missing
// feature), and host-only models never appear.
func TestUsableCPUModelsTCG(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	got, err := UsableCPUModels(context.Background(), bin, "tcg")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, TCGCPUModel) || !slices.Contains(got, BaselineCPUModel) {
		t.Fatalf("usable under tcg = %v, want %s and %s among them", got, TCGCPUModel, BaselineCPUModel)
	}
	if slices.Contains(got, "host") || slices.Contains(got, "max") {
		t.Fatalf("usable = %v: host and max are never pool models", got)
	}
}
