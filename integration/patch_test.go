package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/qemu/config"
)

// TestPatchVMRoundTrip: PATCH /vms/{name} through client.PatchVM. A running
// guest's CPUs cannot change (412 naming the field) but its restart policy
// can; once stopped, CPUs and memory change, and the next start runs QEMU
// with them and the guest boots.
func TestPatchVMRoundTrip(t *testing.T) {
	s := newServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s.createGuest("pvm", nil)
	_, off := s.waitReady("pvm", 0)

	_, err := s.c.PatchVM(ctx, "pvm", v1.VMPatch{CPUs: ptr(2)})
	var e *v1.Error
	if !asAPI(err, &e) || e.Code != v1.CodeFailedPrecondition || e.Field != "cpus" ||
		e.Message != `vm "pvm" is running: cpus can change only while it is stopped` {
		t.Fatalf("cpus of a running vm: %v", err)
	}
	v, err := s.c.PatchVM(ctx, "pvm", v1.VMPatch{RestartPolicy: ptr(v1.RestartNever)})
	if err != nil || v.Spec.RestartPolicy != v1.RestartNever || v.Spec.CPUs != 1 {
		t.Fatalf("restart policy of a running vm: %+v %v", v.Spec, err)
	}

	s.action("pvm", "stop", nil)
	s.waitState("pvm", 30*time.Second, v1.StateStopped)
	v, err = s.c.PatchVM(ctx, "pvm", v1.VMPatch{CPUs: ptr(2), MemoryMiB: ptr(384)})
	if err != nil || v.Spec.CPUs != 2 || v.Spec.MemoryMiB != 384 {
		t.Fatalf("patch of a stopped vm: %+v %v", v.Spec, err)
	}
	if got, err := s.c.VM(ctx, "pvm"); err != nil || got.Spec.CPUs != 2 || got.Revision != v.Revision {
		t.Fatalf("vm after patch: %+v rev %d (patch answered %d) %v", got.Spec, got.Revision, v.Revision, err)
	}
	if _, err := s.c.PatchVM(ctx, "pvm", v1.VMPatch{MemoryMiB: ptr(8)}); !isCode(err, v1.CodeInvalidArgument) {
		t.Fatalf("memory 8: %v", err)
	}

	s.action("pvm", "start", nil)
	s.waitReady("pvm", off)
	run := s.waitState("pvm", 30*time.Second, v1.StateRunning)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", run.Status.PID))
	if err != nil {
		t.Fatal(err)
	}
	argv := " " + strings.ReplaceAll(string(b), "\x00", " ")
	// Under TCG the guest gets config.TCGRAMPadKiB more (a QEMU < 9.0 bug).
	mem := fmt.Sprintf(" -m %dk ", 384<<10+config.TCGRAMPadKiB)
	if run.Status.Accelerator == "kvm" {
		mem = " -m 384 "
	}
	if !strings.Contains(argv, " -smp 2 ") || !strings.Contains(argv, mem) {
		t.Fatalf("qemu does not run with the patched cpus and memory: %s", argv)
	}
}
