package manager

import (
	"encoding/json"
	"testing"

	v1 "hangar/api/v1"
)

// TestIOErrorPolicyCreateAndPatch: the I/O error policy is set on create
// (stop by default, per disk too), checked (400 naming the field, disks by
// index on create and by name on a patch), and changed at any time.
func TestIOErrorPolicyCreateAndPatch(t *testing.T) {
	ts := newTestServer(t)
	ts.createVM(`{"name":"io1","memoryMiB":128,"disks":[{"sizeMiB":16},{"name":"data","sizeMiB":16,"ioErrorPolicy":"report"},{"name":"cd0","media":"cdrom"}]}`)
	spec, _, err := ts.s.inv.Spec(t.Context(), "io1")
	if err != nil || spec.IOErrorPolicy != v1.IOErrorStop || spec.Disks[0].IOErrorPolicy != "" || spec.Disks[1].IOErrorPolicy != v1.IOErrorReport {
		t.Fatalf("created: %+v %v", spec, err)
	}
	for body, field := range map[string]string{
		`{"name":"io2","memoryMiB":128,"ioErrorPolicy":"pause"}`:                                           "ioErrorPolicy",
		`{"name":"io2","memoryMiB":128,"disks":[{"sizeMiB":16,"ioErrorPolicy":"enospc"}]}`:                 "disks[0].ioErrorPolicy",
		`{"name":"io2","memoryMiB":128,"disks":[{"sizeMiB":16},{"media":"cdrom","ioErrorPolicy":"stop"}]}`: "disks[1].ioErrorPolicy",
	} {
		code, _, b := ts.do("POST", "/api/v1/vms", "application/json", body)
		if e := apiErr(t, code, b); code != 400 || e.Field != field {
			t.Errorf("create %s: %d %+v, want 400 field %s", body, code, e, field)
		}
	}

	ts.setState("io1", v1.StateRunning)
	code, _, b := ts.do("PATCH", "/api/v1/vms/io1", "application/merge-patch+json", `{"ioErrorPolicy":"report","disks":{"data":{"ioErrorPolicy":""},"disk0":{"ioErrorPolicy":"ignore"}}}`)
	var v v1.VM
	if code != 200 || json.Unmarshal(b, &v) != nil || v.Spec.IOErrorPolicy != v1.IOErrorReport ||
		v.Spec.Disks[0].IOErrorPolicy != v1.IOErrorIgnore || v.Spec.Disks[1].IOErrorPolicy != "" {
		t.Fatalf("patch of a running vm: %d %s", code, b)
	}
	if spec, _, _ := ts.s.inv.Spec(t.Context(), "io1"); spec.IOErrorPolicy != v1.IOErrorReport || spec.Disks[0].IOErrorPolicy != v1.IOErrorIgnore {
		t.Fatalf("stored: %+v", spec)
	}
	for body, field := range map[string]string{
		`{"ioErrorPolicy":""}`:                                     "ioErrorPolicy",
		`{"ioErrorPolicy":"halt"}`:                                 "ioErrorPolicy",
		`{"disks":{"data":{"ioErrorPolicy":"x"}}}`:                 "disks.data.ioErrorPolicy",
		`{"disks":{"nope":{"ioErrorPolicy":"stop"}}}`:              "disks.nope",
		`{"disks":{"cd0":{"ioErrorPolicy":"stop"}}}`:               "disks.cd0.ioErrorPolicy",
		`{"disks":{"data":{"ioErrorPolicy":1}}}`:                   "disks.data.ioErrorPolicy",
		`{"disks":{"data":{"ioErrorPolicy":"stop","bus":"sata"}}}`: "disks.data.bus",
	} {
		code, _, b := ts.do("PATCH", "/api/v1/vms/io1", "application/json", body)
		if e := apiErr(t, code, b); code != 400 || e.Field != field {
			t.Errorf("patch %s: %d %+v, want 400 field %s", body, code, e, field)
		}
	}
}
