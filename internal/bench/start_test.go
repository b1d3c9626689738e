package bench

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		in   []time.Duration
		want time.Duration
	}{
		{nil, 0},
		{[]time.Duration{5 * ms}, 5 * ms},
		{[]time.Duration{9 * ms, 1 * ms, 5 * ms}, 5 * ms},
		{[]time.Duration{4 * ms, 1 * ms, 2 * ms, 100 * ms}, 3 * ms},
	} {
		in := append([]time.Duration(nil), c.in...)
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
		for i := range in {
			if in[i] != c.in[i] {
				t.Fatalf("Median reordered its input: %v", c.in)
			}
		}
	}
}

func TestSplit(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	phases := []Phase{{"a", "x"}, {"b", "y"}, {"c", "z"}}
	marks := map[string]time.Time{"x": t0.Add(2 * time.Millisecond), "y": t0.Add(2 * time.Millisecond), "z": t0.Add(10 * time.Millisecond), "extra": t0}
	got, err := Split(phases, t0, marks)
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{2 * time.Millisecond, 0, 8 * time.Millisecond}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Split = %v, want %v", got, want)
		}
	}
	delete(marks, "y")
	if _, err := Split(phases, t0, marks); err == nil || !strings.Contains(err.Error(), `no "y" mark`) {
		t.Fatalf("missing mark: %v", err)
	}
	marks["y"] = t0.Add(time.Millisecond) // before x
	if _, err := Split(phases, t0, marks); err == nil || !strings.Contains(err.Error(), `"y"`) {
		t.Fatalf("mark out of order: %v", err)
	}
	if _, err := Split(phases, t0.Add(time.Hour), map[string]time.Time{"x": t0, "y": t0, "z": t0}); err == nil {
		t.Fatal("marks before the start accepted")
	}
}

func TestMediansAndReport(t *testing.T) {
	ms := time.Millisecond
	row := func(base time.Duration, n int) []time.Duration {
		r := make([]time.Duration, n)
		for i := range r {
			r[i] = base
		}
		return r
	}
	s := Samples{{1 * ms, 10 * ms}, {3 * ms, 30 * ms}, {2 * ms, 500 * ms}}
	per, tot := s.Medians(2)
	if per[0] != 2*ms || per[1] != 30*ms {
		t.Fatalf("per-phase medians %v", per)
	}
	// Totals 11, 33, 502: the median run, not the sum of medians (32).
	if tot != 33*ms {
		t.Fatalf("total median %v, want 33ms", tot)
	}
	res := StartResult{
		Hangar: Samples{row(10*ms, len(HangarPhases)), row(20*ms, len(HangarPhases)), row(30*ms, len(HangarPhases))},
		Raw:    Samples{row(40*ms, len(RawPhases)), row(50*ms, len(RawPhases)), row(90*ms, len(RawPhases))},
	}
	var out bytes.Buffer
	if err := res.Report(&out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := float64(len(HangarPhases)*20) / float64(len(RawPhases)*50)
	if last := lines[len(lines)-1]; last != fmt.Sprintf("start ratio Hangar/raw %.2f", want) {
		t.Fatalf("last line %q, want ratio %.2f", last, want)
	}
	for _, p := range append(append([]Phase(nil), HangarPhases...), RawPhases...) {
		if !strings.Contains(out.String(), p.Label) {
			t.Errorf("table lacks phase %q:\n%s", p.Label, out.String())
		}
	}
	if !strings.Contains(out.String(), "qmp connect + setup") || !strings.Contains(out.String(), "20.0") {
		t.Errorf("table lacks a median:\n%s", out.String())
	}
	if err := (StartResult{Hangar: res.Hangar, Raw: Samples{row(0, len(RawPhases))}}).Report(&out); err == nil {
		t.Error("a zero raw start gave a ratio")
	}
}
