package img

import (
	"context"
	"slices"
	"strings"
	"testing"
)

func TestProgressWriter(t *testing.T) {
	var got []float64
	w := ProgressWriter(func(f float64) { got = append(got, f) }, 0.99)
	for _, chunk := range []string{"    (0.00/100%)\r    (12.", "50/100%)\r    (12.50/100%)\r", "noise\n    (100.00/100%)\r"} {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if want := []float64{0, 0.125, 0.99}; !slices.Equal(got, want) {
		t.Fatalf("progress %v, want %v", got, want)
	}
}

func TestRunReportsQemuImgMessage(t *testing.T) {
	err := Run(context.Background(), nil, "info", "/nonexistent/disk.qcow2")
	if err == nil || !strings.Contains(err.Error(), "qemu-img info: ") || !strings.Contains(err.Error(), "nonexistent") {
		t.Fatalf("err = %v", err)
	}
}
