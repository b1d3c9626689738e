package inventory_test

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"hangar/internal/etcdembed/etcdtest"
	"hangar/internal/inventory"
	"hangar/internal/store"
)

func newInventory(t *testing.T) inventory.Inventory {
	t.Helper()
	return inventory.Inventory{S: store.NewEtcd(etcdtest.Start(t).Client())}
}

func TestParseIDRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want inventory.IDRange
		ok   bool
	}{
		{"100000-165535", inventory.IDRange{First: 100000, Last: 165535}, true},
		{" 5000-5000 ", inventory.IDRange{First: 5000, Last: 5000}, true},
		{"0-100", inventory.IDRange{}, false},
		{"10-100", inventory.IDRange{}, false}, // system users
		{"2000-1000", inventory.IDRange{}, false},
		{"100000", inventory.IDRange{}, false},
		{"a-b", inventory.IDRange{}, false},
		{"-5-100", inventory.IDRange{}, false},
		{"100000-4294967295", inventory.IDRange{}, false},
	} {
		got, err := inventory.ParseIDRange(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("ParseIDRange(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	if err := inventory.DefaultIDRange.Check(); err != nil {
		t.Errorf("default range: %v", err)
	}
	if inventory.DefaultIDRange.Contains(0) || !inventory.DefaultIDRange.Contains(inventory.DefaultIDRange.First) {
		t.Error("Contains is wrong at the edges")
	}
}

func TestAllocID(t *testing.T) {
	inv := newInventory(t)
	ctx := t.Context()
	r := inventory.IDRange{First: 200000, Last: 200009}
	a := inventory.IDOwner{Kind: inventory.IDKindVM, Name: "a"}
	b := inventory.IDOwner{Kind: inventory.IDKindVM, Name: "b"}
	ida, err := inv.AllocID(ctx, r, a)
	if err != nil || ida != 200000 {
		t.Fatalf("alloc a = %d, %v; want 200000", ida, err)
	}
	if again, err := inv.AllocID(ctx, r, a); err != nil || again != ida {
		t.Fatalf("alloc a again = %d, %v; want the same id %d", again, err, ida)
	}
	idb, err := inv.AllocID(ctx, r, b)
	if err != nil || idb != 200001 {
		t.Fatalf("alloc b = %d, %v; want 200001", idb, err)
	}
	// A file group of the same name is a different owner.
	f := inventory.IDOwner{Kind: inventory.IDKindFile, Name: "a"}
	if idf, err := inv.AllocID(ctx, r, f); err != nil || idf == ida || idf == idb {
		t.Fatalf("alloc file a = %d, %v; want a new id", idf, err)
	}

	// Release a, in a transaction of its own: its id is given out again.
	ops, err := inv.ReleaseIDOps(ctx, r, a)
	if err != nil || len(ops) != 2 {
		t.Fatalf("release ops = %v, %v", ops, err)
	}
	if _, err := inv.S.Txn(ctx, nil, ops...); err != nil {
		t.Fatal(err)
	}
	if _, _, err := inv.IDOf(ctx, r, a); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("id of a after release: %v, want not found", err)
	}
	if err := inv.ReleaseID(ctx, r, a); err != nil {
		t.Fatalf("release twice: %v", err)
	}
	c := inventory.IDOwner{Kind: inventory.IDKindVM, Name: "c"}
	if idc, err := inv.AllocID(ctx, r, c); err != nil || idc != ida {
		t.Fatalf("alloc c = %d, %v; want the freed %d", idc, err, ida)
	}

	// Exhaustion.
	for i := 0; ; i++ {
		_, err := inv.AllocID(ctx, r, inventory.IDOwner{Kind: inventory.IDKindVM, Name: fmt.Sprint("fill", i)})
		if errors.Is(err, inventory.ErrNoFreeID) {
			if i != 7 {
				t.Fatalf("range of 10 ran out after %d more, want 7", i)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestAllocIDRejectsBadRecords: an id read from the store is validated
// before it becomes a uid.
func TestAllocIDRejectsBadRecords(t *testing.T) {
	inv := newInventory(t)
	ctx := t.Context()
	r := inventory.IDRange{First: 300000, Last: 300100}
	for name, val := range map[string]string{"root": "0", "outside": "1000", "junk": "12ab", "huge": "99999999999"} {
		o := inventory.IDOwner{Kind: inventory.IDKindVM, Name: name}
		if _, err := inv.S.Put(ctx, inventory.IDOfKey(o), []byte(val), store.AnyRevision); err != nil {
			t.Fatal(err)
		}
		if id, err := inv.AllocID(ctx, r, o); err == nil {
			t.Errorf("%s: planted id %q gave uid %d, want an error", name, val, id)
		}
		// Release drops the bad record, then a fresh id is allocated.
		if err := inv.ReleaseID(ctx, r, o); err != nil {
			t.Errorf("%s: release: %v", name, err)
		}
		if id, err := inv.AllocID(ctx, r, o); err != nil || !r.Contains(id) {
			t.Errorf("%s: alloc after release = %d, %v", name, id, err)
		}
	}
	// An idof record pointing at an id held by someone else.
	victim := inventory.IDOwner{Kind: inventory.IDKindVM, Name: "victim"}
	vid, err := inv.AllocID(ctx, r, victim)
	if err != nil {
		t.Fatal(err)
	}
	thief := inventory.IDOwner{Kind: inventory.IDKindVM, Name: "thief"}
	if _, err := inv.S.Put(ctx, inventory.IDOfKey(thief), []byte(strconv.Itoa(vid)), store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	if id, err := inv.AllocID(ctx, r, thief); err == nil {
		t.Fatalf("thief got uid %d of another VM", id)
	}
	if _, err := inv.AllocID(ctx, r, inventory.IDOwner{Kind: "root", Name: "x"}); err == nil {
		t.Fatal("unknown owner kind accepted")
	}
}

func TestAllocIDConcurrent(t *testing.T) {
	inv := newInventory(t)
	ctx := t.Context()
	r := inventory.IDRange{First: 400000, Last: 465535}
	const n = 12
	ids := make([]int, n)
	same := make([]int, n)
	errs := make([]error, 2*n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			ids[i], errs[i] = inv.AllocID(ctx, r, inventory.IDOwner{Kind: inventory.IDKindVM, Name: fmt.Sprint("vm", i)})
		}()
		go func() {
			defer wg.Done()
			same[i], errs[n+i] = inv.AllocID(ctx, r, inventory.IDOwner{Kind: inventory.IDKindFile, Name: "default/images/base.qcow2"})
		}()
	}
	wg.Wait()
	seen := map[int]bool{}
	for i, id := range ids {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if seen[id] {
			t.Fatalf("id %d given twice", id)
		}
		seen[id] = true
	}
	for i, id := range same {
		if errs[n+i] != nil {
			t.Fatal(errs[n+i])
		}
		if id != same[0] {
			t.Fatalf("one owner got ids %d and %d", same[0], id)
		}
		if seen[id] {
			t.Fatalf("file group %d is also a vm uid", id)
		}
	}
}
