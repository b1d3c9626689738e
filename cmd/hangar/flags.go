package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

// atLeast refuses a numeric flag given explicitly below min, naming the
// flag: defaults such as "0: from the OVF" stay reachable only by leaving the
// flag out.
func atLeast(cmd *cobra.Command, flag string, v, min int64) error {
	if cmd.Flags().Changed(flag) && v < min {
		return fmt.Errorf("--%s: must be at least %d (got %d)", flag, min, v)
	}
	return nil
}

// notNegative refuses a negative duration flag.
func notNegative(cmd *cobra.Command, flag string, d time.Duration) error {
	if cmd.Flags().Changed(flag) && d < 0 {
		return fmt.Errorf("--%s: must not be negative (got %s)", flag, d)
	}
	return nil
}

// firstErr returns the first non-nil error.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// ifGiven is v when flag was given, else nil: the field of a patch that
// changes only what the flags name.
func ifGiven[T any](cmd *cobra.Command, flag string, v *T) *T {
	if cmd.Flags().Changed(flag) {
		return v
	}
	return nil
}
