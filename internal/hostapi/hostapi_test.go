package hostapi

import (
	"errors"
	"testing"
)

func TestCheckAddress(t *testing.T) {
	for addr, ok := range map[string]bool{
		"10.99.0.1:8443":      true,
		"[fd00::1]:8443":      true,
		"h1.example.org:8443": true,
		"":                    false,
		"10.99.0.1":           false,
		"10.99.0.1:0":         false,
		"10.99.0.1:70000":     false,
		"10.99.0.1:https":     false,
		"evil/path:8443":      false,
		"a@b:8443":            false,
		"h1..x:8443":          false,
	} {
		err := CheckAddress(addr)
		if (err == nil) != ok {
			t.Errorf("CheckAddress(%q) = %v, want ok %v", addr, err, ok)
		}
		if err != nil && !errors.Is(err, ErrNotForwardable) {
			t.Errorf("CheckAddress(%q): %v is not ErrNotForwardable", addr, err)
		}
	}
}
