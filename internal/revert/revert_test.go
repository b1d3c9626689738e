package revert

import (
	"slices"
	"testing"
)

func TestFailUndoesNewestFirst(t *testing.T) {
	var got []int
	r := New()
	r.Add(func() { got = append(got, 1) })
	r.Add(func() { got = append(got, 2) })
	r.Fail()
	r.Fail()
	if !slices.Equal(got, []int{2, 1}) {
		t.Fatalf("undo order %v, want [2 1] once", got)
	}
}

func TestSuccessKeeps(t *testing.T) {
	ran := false
	r := New()
	r.Add(func() { ran = true })
	r.Success()
	r.Fail()
	if ran {
		t.Fatal("undo ran after Success")
	}
}
