package vm

import v1 "hangar/api/v1"

// LimitsOf returns s's resource controls (copies: changing them does not
// change s).
func LimitsOf(s v1.VMSpec) v1.VMLimits {
	var l v1.VMLimits
	if s.Resources != nil {
		r := *s.Resources
		l.Resources = &r
	}
	for _, d := range s.Disks {
		if d.Limits != nil {
			if l.Disks == nil {
				l.Disks = map[string]*v1.DiskLimits{}
			}
			dl := *d.Limits
			l.Disks[d.Name] = &dl
		}
	}
	for i, n := range s.NICs {
		if n.Limits != nil {
			if l.NICs == nil {
				l.NICs = make([]*v1.NICLimits, len(s.NICs))
			}
			nl := *n.Limits
			l.NICs[i] = &nl
		}
	}
	return l
}

// WithLimits returns s with the resource controls l (copies): a disk l
// does not name, or a NIC past its list, has none.
func WithLimits(s v1.VMSpec, l v1.VMLimits) v1.VMSpec {
	s.Resources = nil
	if l.Resources != nil {
		r := *l.Resources
		s.Resources = &r
	}
	s.Disks = append([]v1.Disk(nil), s.Disks...)
	for i := range s.Disks {
		s.Disks[i].Limits = nil
		if dl := l.Disks[s.Disks[i].Name]; dl != nil {
			c := *dl
			s.Disks[i].Limits = &c
		}
	}
	s.NICs = append([]v1.NIC(nil), s.NICs...)
	for i := range s.NICs {
		s.NICs[i].Limits = nil
		if i < len(l.NICs) && l.NICs[i] != nil {
			c := *l.NICs[i]
			s.NICs[i].Limits = &c
		}
	}
	return s
}

// EqualLimits reports whether a and b are the same resource controls
// (nil and empty lists alike).
func EqualLimits(a, b v1.VMLimits) bool {
	if !equalPtr(a.Resources, b.Resources) || len(a.Disks) != len(b.Disks) {
		return false
	}
	for name, d := range a.Disks {
		if e, ok := b.Disks[name]; !ok || !equalPtr(d, e) {
			return false
		}
	}
	for i := range max(len(a.NICs), len(b.NICs)) {
		var x, y *v1.NICLimits
		if i < len(a.NICs) {
			x = a.NICs[i]
		}
		if i < len(b.NICs) {
			y = b.NICs[i]
		}
		if !equalPtr(x, y) {
			return false
		}
	}
	return true
}

func equalPtr[T comparable](a, b *T) bool {
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}

// validateVMLimits checks what a record's limits name before they are
// compared or written: disk names, at most MaxNICs NICs. Their values are
// checked with the spec they go into (Validate).
func validateVMLimits(f string, l v1.VMLimits) error {
	for name := range l.Disks {
		if err := validateDiskName(f+".disks", name); err != nil {
			return err
		}
	}
	if len(l.NICs) > MaxNICs {
		return invalid(f+".nics", "at most %d NICs, got %d", MaxNICs, len(l.NICs))
	}
	return nil
}

// validateLimitsArgs checks a "limits" operation's arguments.
func validateLimitsArgs(a v1.LimitsArgs) error {
	if err := validateVMLimits("args.previous", a.Previous); err != nil {
		return err
	}
	return validateVMLimits("args.next", a.Next)
}
