// Package revert undoes the finished steps of a multi-step change that
// failed half-way, newest first.
//
//	rev := revert.New()
//	defer rev.Fail()
//	... rev.Add(undo) after each step ...
//	rev.Success()
package revert

// Reverter collects undo steps.
type Reverter struct {
	steps []func()
	done  bool
}

// New returns an empty Reverter.
func New() *Reverter { return &Reverter{} }

// Add registers an undo step for a step that just succeeded.
func (r *Reverter) Add(f func()) { r.steps = append(r.steps, f) }

// Fail runs the undo steps, newest first, unless Success was called.
func (r *Reverter) Fail() {
	if r.done {
		return
	}
	r.done = true
	for i := len(r.steps) - 1; i >= 0; i-- {
		r.steps[i]()
	}
}

// Success keeps the changes: Fail becomes a no-op.
func (r *Reverter) Success() { r.done = true }
