package bench

import (
	"os"
	"testing"
)

func TestProcMemAndMetricValue(t *testing.T) {
	rss, hwm, err := procMem(os.Getpid())
	if err != nil || rss <= 0 || hwm <= 0 {
		t.Fatalf("procMem = %d %d %v", rss, hwm, err)
	}
	text := "# HELP go_memstats_heap_inuse_bytes x\ngo_memstats_heap_inuse_bytes 1.5e+07\ngo_memstats_heap_inuse_bytes_other 3\n"
	if v, ok := metricValue(text, "go_memstats_heap_inuse_bytes"); !ok || v != 1.5e7 {
		t.Fatalf("metricValue = %v %v", v, ok)
	}
	if _, ok := metricValue(text, "missing"); ok {
		t.Fatal("a missing metric found")
	}
}
