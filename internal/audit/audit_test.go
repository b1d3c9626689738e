package audit

import (
	"testing"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/store"
)

// TestRetention: records beyond MaxRecords and older than MaxAge are
// pruned, the newest kept; List filters and returns newest first.
func TestRetention(t *testing.T) {
	st := store.NewEtcd(etcdtest.Start(t).Client())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := &Log{S: st, MaxRecords: 4, MaxAge: time.Hour, Now: func() time.Time { return now }}
	ctx := t.Context()
	for i, vm := range []string{"a", "b", "a", "b", "a", "b"} {
		if err := l.Record(ctx, v1.AuditRecord{User: "u", VM: vm, Action: "POST x", Status: 200 + i}); err != nil {
			t.Fatal(err)
		}
		now = now.Add(time.Minute)
	}
	recs, err := l.List(ctx, Filter{})
	if err != nil || len(recs) != 4 || recs[0].Status != 205 || recs[3].Status != 202 {
		t.Fatalf("after 6 records with a limit of 4: %+v %v", recs, err)
	}
	if recs, _ := l.List(ctx, Filter{VM: "a"}); len(recs) != 2 || recs[0].Status != 204 {
		t.Errorf("vm a: %+v", recs)
	}
	if recs, _ := l.List(ctx, Filter{User: "nobody"}); len(recs) != 0 {
		t.Errorf("user nobody: %+v", recs)
	}
	// An hour later the old ones go by age.
	now = now.Add(time.Hour - 2*time.Minute)
	if err := l.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if recs, _ := l.List(ctx, Filter{}); len(recs) != 2 || recs[1].Status != 204 {
		t.Errorf("after an hour: %+v", recs)
	}
	// A record that is not one is skipped, not an error.
	if _, err := st.Put(ctx, Prefix+"junk", []byte("{"), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	if recs, err := l.List(ctx, Filter{}); err != nil || len(recs) != 2 {
		t.Errorf("with a junk record: %+v %v", recs, err)
	}
}
