package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// TestIOErrorFlags: vm set --io-error/--disk-io-error send a patch of the
// VM's and the named disks' policies; vm show prints them and each disk's
// errors.
func TestIOErrorFlags(t *testing.T) {
	vm := v1.VM{Spec: v1.VMSpec{Name: "db1", IOErrorPolicy: "stop",
		Disks: []v1.Disk{{Name: "disk0"}, {Name: "scratch", IOErrorPolicy: "report"}}},
		Status: v1.VMStatus{State: v1.StatePaused, Reason: "io-error: disk disk0: write: No space left on device (no space); resumes when the storage answers",
			IOErrors: []v1.DiskIOError{{Disk: "disk0", Action: "stop", Operation: "write", NoSpace: true, Message: "No space left on device",
				Count: 3, Pauses: 2, Last: time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC)}}}}
	var patch map[string]any
	sock := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "PATCH" {
			if err := json.NewDecoder(r.Body).Decode(&patch); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(vm)
	})
	out, err := runCLI(sock, "vm", "set", "db1", "--io-error", "report", "--disk-io-error", "scratch=ignore", "--disk-io-error", "disk0=")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	b, _ := json.Marshal(patch)
	if string(b) != `{"disks":{"disk0":{"ioErrorPolicy":""},"scratch":{"ioErrorPolicy":"ignore"}},"ioErrorPolicy":"report"}` {
		t.Fatalf("patch sent: %s", b)
	}
	if !strings.Contains(out, "I/O errors stop; scratch: report") {
		t.Fatalf("vm set printed %q", out)
	}
	if out, err := runCLI(sock, "vm", "set", "db1", "--disk-io-error", "scratch"); err == nil || !strings.Contains(err.Error(), "DISK=POLICY") {
		t.Fatalf("--disk-io-error without =: %v %s", err, out)
	}
	out, err = runCLI(sock, "vm", "show", "db1")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"I/O error policy:", "stop; scratch: report", "Reason:", "io-error: disk disk0",
		"I/O errors disk0:", "3 errors, last write", "No space left on device (no space), paused; 2 pauses"} {
		if !strings.Contains(out, want) {
			t.Errorf("vm show lacks %q:\n%s", want, out)
		}
	}
}
