package agent

import (
	"context"
	"errors"
	"fmt"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/qemu/config"
	"hangar/internal/qemu/qmp"
)

// balloonInfo is query-balloon's answer.
type balloonInfo struct {
	Actual int64 `json:"actual"`
}

// noBalloon tells a QMP error of a QEMU without a balloon device.
func noBalloon(err error) bool {
	var qe *qmp.Error
	return errors.As(err, &qe) && qe.Class == "DeviceNotActive"
}

// setBalloon sets the guest's memory target (resources.balloonMiB) on the
// VM's balloon device; with all (a live change), also a target of 0,
// which gives the guest all its memory back. A target on a QEMU started
// without the device is refused naming the field.
func setBalloon(ctx context.Context, mon *qmp.Client, spec v1.VMSpec, all bool) error {
	const field = "resources.balloonMiB"
	target := 0
	if spec.Resources != nil {
		target = spec.Resources.BalloonMiB
	}
	if target == 0 && !all {
		return nil
	}
	// QEMU clamps a target past the guest's RAM to it: the whole of it,
	// pad included (config.TCGRAMPadKiB).
	bytes := int64(target) << 20
	if target == 0 {
		bytes = int64(spec.MemoryMiB)<<20 + config.TCGRAMPadKiB<<10
	}
	err := mon.Execute(ctx, "balloon", map[string]int64{"value": bytes}, nil)
	switch {
	case err == nil:
		return nil
	case noBalloon(err) && target == 0:
		return nil // nothing to give back
	case noBalloon(err):
		return errdefs.Field(field, errdefs.Precondition("vm %q was started without a balloon device: a target set while it is stopped applies at its next start", spec.Name))
	}
	return fmt.Errorf("balloon target of %s: %w", spec.Name, err)
}

// balloonBytes is the guest's memory as its balloon leaves it; 0 without
// a balloon device. A value past the bounds QEMU can report is an error.
func balloonBytes(ctx context.Context, mon *qmp.Client) (int64, error) {
	var b balloonInfo
	if err := mon.Execute(ctx, "query-balloon", nil, &b); err != nil {
		if noBalloon(err) {
			return 0, nil
		}
		return 0, err
	}
	if b.Actual <= 0 || b.Actual > 1<<50 {
		return 0, fmt.Errorf("query-balloon: actual %d bytes", b.Actual)
	}
	return b.Actual, nil
}
