package vm

import v1 "hangar/api/v1"

// ValidIOErrorPolicy reports whether p is an I/O error policy a request may
// set: stop, report or ignore.
func ValidIOErrorPolicy(p string) bool {
	return p == v1.IOErrorStop || p == v1.IOErrorReport || p == v1.IOErrorIgnore
}

// CheckIOErrorPolicy checks a policy a request sets at field; empty is
// allowed when inherit (a disk that takes the VM's policy).
func CheckIOErrorPolicy(field, p string, inherit bool) error {
	if ValidIOErrorPolicy(p) || (inherit && p == "") {
		return nil
	}
	if inherit {
		return invalid(field, "must be stop, report, ignore or empty (the VM's policy), got %q", p)
	}
	return invalid(field, "must be stop, report or ignore, got %q", p)
}

// IOErrorPolicy is the policy QEMU applies to disk d of s: the disk's own,
// else the VM's, else stop (a record from before the setting).
func IOErrorPolicy(s v1.VMSpec, d v1.Disk) string {
	switch {
	case d.IOErrorPolicy != "":
		return d.IOErrorPolicy
	case s.IOErrorPolicy != "":
		return s.IOErrorPolicy
	}
	return v1.IOErrorStop
}
