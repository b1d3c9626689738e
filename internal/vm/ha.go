package vm

import (
	"time"

	v1 "hangar/api/v1"
)

// Bounds and defaults of the HA settings (v1.HA).
const (
	MinHAPriority        = -1000
	MaxHAPriority        = 1000
	MaxHARestartOrder    = 1000
	MaxHARestarts        = 100
	DefaultHAMaxRestarts = 3
	DefaultHAWindow      = "1h"
	MinHAWindow          = time.Minute
	MaxHAWindow          = 7 * 24 * time.Hour
)

// HADefaults fills the HA settings a user may leave out (nil: no HA).
func HADefaults(h *v1.HA) {
	if h == nil {
		return
	}
	if h.MaxRestarts == 0 {
		h.MaxRestarts = DefaultHAMaxRestarts
	}
	if h.RestartWindow == "" {
		h.RestartWindow = DefaultHAWindow
	}
}

// ValidateHA checks HA settings after HADefaults; disabled settings are
// checked too (they are kept for the next enable).
func ValidateHA(h *v1.HA) error {
	if h == nil {
		return nil
	}
	if h.Priority < MinHAPriority || h.Priority > MaxHAPriority {
		return invalid("ha.priority", "must be between %d and %d, got %d", MinHAPriority, MaxHAPriority, h.Priority)
	}
	if h.RestartOrder < 0 || h.RestartOrder > MaxHARestartOrder {
		return invalid("ha.restartOrder", "must be between 0 and %d, got %d", MaxHARestartOrder, h.RestartOrder)
	}
	if h.MaxRestarts < 1 || h.MaxRestarts > MaxHARestarts {
		return invalid("ha.maxRestarts", "must be between 1 and %d, got %d", MaxHARestarts, h.MaxRestarts)
	}
	if _, err := HAWindow(h); err != nil {
		return err
	}
	return nil
}

// HAWindow is the parsed RestartWindow of h (after HADefaults).
func HAWindow(h *v1.HA) (time.Duration, error) {
	d, err := time.ParseDuration(h.RestartWindow)
	if err != nil {
		return 0, invalid("ha.restartWindow", "%q is not a duration (like 30m or 1h)", h.RestartWindow)
	}
	if d < MinHAWindow || d > MaxHAWindow {
		return 0, invalid("ha.restartWindow", "must be between %v and %v, got %v", MinHAWindow, MaxHAWindow, d)
	}
	return d, nil
}
