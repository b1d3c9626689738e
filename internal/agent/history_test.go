package agent

import (
	"testing"
	"time"

	v1 "hangar/api/v1"
)

func TestRingKeepsTheLastSamplesOldestFirst(t *testing.T) {
	r := newRing(3)
	if got := r.samples(); len(got) != 0 {
		t.Fatalf("empty ring: %v", got)
	}
	if _, ok := r.last(); ok {
		t.Fatal("empty ring has a last sample")
	}
	for i := int64(1); i <= 5; i++ {
		r.push(v1.HistorySample{T: i})
		got := r.samples()
		want := i
		if want > 3 {
			want = 3
		}
		if int64(len(got)) != want || got[len(got)-1].T != i || got[0].T != i-want+1 {
			t.Fatalf("after %d pushes: %v", i, got)
		}
		if l, _ := r.last(); l.T != i {
			t.Fatalf("last after %d pushes: %v", i, l)
		}
	}
}

func TestRates(t *testing.T) {
	t0 := time.Unix(1000, 0)
	prev := reading{At: t0, CPUSeconds: 10, DiskRead: 1000, DiskWrite: 500, NetRx: 100, NetTx: 0}
	cur := reading{At: t0.Add(10 * time.Second), CPUSeconds: 15, MemoryBytes: 4096, DiskRead: 21000, DiskWrite: 500, NetRx: 1100, NetTx: 50}
	got, ok := rates(prev, cur)
	want := v1.HistorySample{T: 1010, CPUCores: 0.5, MemoryBytes: 4096, DiskReadBps: 2000, DiskWriteBps: 0, NetRxBps: 100, NetTxBps: 5}
	if !ok || got != want {
		t.Fatalf("rates = %+v %v, want %+v", got, ok, want)
	}
	// QEMU restarted: its counters start again from 0.
	restarted := reading{At: t0.Add(20 * time.Second), CPUSeconds: 2, DiskRead: 100}
	got, _ = rates(cur, restarted)
	if got.CPUCores != 0.2 || got.DiskReadBps != 10 {
		t.Fatalf("after a restart: %+v", got)
	}
	if _, ok := rates(cur, cur); ok {
		t.Fatal("a sample over no time")
	}
}

func TestHistoryRecordsRunningVMs(t *testing.T) {
	h := newHistory(10*time.Second, 4)
	t0 := time.Unix(2000, 0)
	for i := 0; i < 6; i++ {
		at := t0.Add(time.Duration(i) * 10 * time.Second)
		vms := map[string]reading{"a": {At: at, CPUSeconds: float64(i) * 5}}
		if i < 3 {
			vms["b"] = reading{At: at}
		}
		h.record(reading{At: at, CPUSeconds: float64(i) * 20}, vms)
	}
	a := h.vm("a")
	if a.Interval != 10 || len(a.Samples) != 4 || a.Samples[3].CPUCores != 0.5 || a.Samples[0].T != 2020 {
		t.Fatalf("vm a: %+v", a)
	}
	if b := h.vm("b"); len(b.Samples) != 0 {
		t.Fatalf("vm b stopped, still has %+v", b)
	}
	if c := h.cpuCores("a"); c != 0.5 {
		t.Fatalf("cpuCores = %v", c)
	}
	if hs := h.hostHistory(); len(hs.Samples) != 4 || hs.Samples[3].CPUCores != 2 {
		t.Fatalf("host: %+v", hs)
	}
}

func TestParseProcStatAndMeminfo(t *testing.T) {
	busy, err := parseProcStat([]byte("cpu  100 20 30 1000 50 5 5 10 7 0\ncpu0 1 2 3 4\n"))
	if err != nil || busy != 1.7 {
		t.Fatalf("busy = %v, %v", busy, err)
	}
	if _, err := parseProcStat([]byte("intr 1 2\n")); err == nil {
		t.Fatal("no cpu line accepted")
	}
	used, err := parseMemUsed([]byte("MemTotal:       16 kB\nMemFree: 1 kB\nMemAvailable:    4 kB\n"))
	if err != nil || used != 12<<10 {
		t.Fatalf("used = %v, %v", used, err)
	}
	if _, err := parseMemUsed([]byte("MemTotal: 4 kB\nMemAvailable: 16 kB\n")); err == nil {
		t.Fatal("available above total accepted")
	}
}
