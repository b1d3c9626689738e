package vm

import (
	"encoding/json"
	"testing"

	v1 "hangar/api/v1"
)

// TestLimitsRoundTrip: a spec's limits, through an operation record's
// JSON, compare equal to themselves and put back on another spec give it
// exactly those limits, leaving the rest of it alone.
func TestLimitsRoundTrip(t *testing.T) {
	spec := v1.VMSpec{Name: "web1", CPUs: 2, MemoryMiB: 256,
		Resources: &v1.Resources{CPUShares: 512, CPULimit: 0.5},
		Disks:     []v1.Disk{{Name: "d0", Limits: &v1.DiskLimits{IOPS: 100}}, {Name: "d1"}},
		NICs:      []v1.NIC{{Bridge: "a"}, {Bridge: "b", Limits: &v1.NICLimits{Mbps: 10}}}}
	l := LimitsOf(spec)
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	var back v1.VMLimits
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !EqualLimits(l, back) {
		t.Fatalf("limits %s not equal after a round trip", b)
	}
	bare := spec
	bare.Resources, bare.Disks, bare.NICs = nil, []v1.Disk{{Name: "d0"}, {Name: "d1"}}, []v1.NIC{{Bridge: "a"}, {Bridge: "b"}}
	if EqualLimits(LimitsOf(bare), l) {
		t.Fatal("a spec without limits has the same limits")
	}
	got := WithLimits(bare, back)
	if !EqualLimits(LimitsOf(got), l) || got.Disks[1].Limits != nil || got.NICs[0].Limits != nil || got.NICs[1].Bridge != "b" {
		t.Fatalf("WithLimits: %+v", got)
	}
	if bare.Disks[0].Limits != nil || bare.NICs[1].Limits != nil {
		t.Fatal("WithLimits changed the spec it was given")
	}
	*got.Resources = v1.Resources{}
	if spec.Resources.CPUShares != 512 || back.Resources.CPUShares != 512 {
		t.Fatal("WithLimits shares the limits it was given")
	}
	if !EqualLimits(LimitsOf(WithLimits(spec, v1.VMLimits{})), LimitsOf(bare)) {
		t.Fatal("WithLimits of no limits leaves some")
	}
}
