package master

import (
	"strings"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/inventory"
	"hangar/internal/qemu"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// TestAdmitHA: admission control reads the pool as the master does and
// refuses the HA VM that would leave a failed host's HA VMs without room.
func TestAdmitHA(t *testing.T) {
	c := etcdtest.Start(t).Client()
	s := store.NewEtcd(c)
	for _, h := range []string{"h1", "h2", "h3"} {
		addHost(t, s, h, 4, 2048)
	}
	on := &v1.HA{Enabled: true}
	putVM(t, s, "a1", "h1", 1536, v1.PowerRunning, on, 1)
	putVM(t, s, "b1", "h2", 1536, v1.PowerRunning, on, 1)
	newVM := func(h *v1.HA, power string) v1.VMSpec {
		sp := v1.VMSpec{Name: "c1", CPUs: 1, MemoryMiB: 1536, Power: power, CPUModel: qemu.TCGCPUModel, Host: "h3", HA: h}
		vm.Defaults(&sp, "tcg")
		return sp
	}
	setFailures := func(n int) {
		t.Helper()
		if _, err := store.PutJSON(t.Context(), s, inventory.Settings, v1.PoolSettings{HAFailures: &n}, store.AnyRevision); err != nil {
			t.Fatal(err)
		}
	}
	log := testLog(t)
	// h1 failing leaves a1 room on h3 today; with c1 there, no host could
	// take the 1536 MiB of whichever host failed.
	err := AdmitHA(t.Context(), s, log, newVM(on, v1.PowerRunning))
	if e := errdefs.ToAPI(err); e == nil || e.Code != v1.CodeFailedPrecondition || e.Field != "ha" ||
		!strings.Contains(e.Message, "if host h") || !strings.Contains(e.Message, "short of memory") {
		t.Fatalf("c1 with HA on h3: %+v", e)
	}
	for what, sp := range map[string]v1.VMSpec{
		"without HA": newVM(nil, v1.PowerRunning),
		"stopped":    newVM(on, v1.PowerStopped),
		"not placed": func() v1.VMSpec { sp := newVM(on, v1.PowerRunning); sp.Host = ""; return sp }(),
	} {
		if err := AdmitHA(t.Context(), s, log, sp); err != nil {
			t.Errorf("c1 %s: %v", what, err)
		}
	}
	// An existing booking is the change's own: a1 resized on h1 keeps room.
	a1 := newVM(on, v1.PowerRunning)
	a1.Name, a1.Host, a1.MemoryMiB = "a1", "h1", 1024
	if err := AdmitHA(t.Context(), s, log, a1); err != nil {
		t.Errorf("a1 as it is booked: %v", err)
	}
	setFailures(0)
	if err := AdmitHA(t.Context(), s, log, newVM(on, v1.PowerRunning)); err != nil {
		t.Errorf("admission control off: %v", err)
	}
	// Three failures of three live hosts: nowhere to keep room; admitted.
	setFailures(3)
	if err := AdmitHA(t.Context(), s, log, newVM(on, v1.PowerRunning)); err != nil {
		t.Errorf("as many failures as hosts: %v", err)
	}
	setFailures(99) // state is input
	if err := AdmitHA(t.Context(), s, log, newVM(on, v1.PowerRunning)); err == nil {
		t.Error("a settings record of 99 failures was taken")
	}
}
