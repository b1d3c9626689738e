package agent

import (
	"maps"
	"slices"
	"testing"

	"hangar/internal/vm"
)

// TestEveryOpKindHasAHandler: the kinds vm.ValidateOp admits and the kinds
// the agent runs are the same set, so a new kind cannot be accepted by the
// API and then fail on the host (or be run without being validated).
func TestEveryOpKindHasAHandler(t *testing.T) {
	handled := slices.Sorted(maps.Keys(opHandlers()))
	if known := vm.OpKinds(); !slices.Equal(known, handled) {
		t.Fatalf("operation kinds:\nvalidated %v\nhandled   %v", known, handled)
	}
}
