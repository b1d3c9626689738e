package manager

import (
	"crypto/sha256"
	"encoding/hex"

	v1 "hangar/api/v1"
)

// Write-only fields: cloud-init user-data often holds passwords and keys,
// so no answer of the API carries it. Outputs show its SHA-256 instead, so
// a caller can still tell which data a VM got.

func redactSpec(s v1.VMSpec) v1.VMSpec {
	if s.CloudInit != nil {
		ci := *s.CloudInit
		if ci.UserData != "" {
			sum := sha256.Sum256([]byte(ci.UserData))
			ci.UserDataSHA256 = hex.EncodeToString(sum[:])
		}
		ci.UserData = ""
		s.CloudInit = &ci
	}
	return s
}

func redactVM(v v1.VM) v1.VM {
	v.Spec = redactSpec(v.Spec)
	return v
}

func redactVMs(vs []v1.VM) []v1.VM {
	out := make([]v1.VM, len(vs))
	for i, v := range vs {
		out[i] = redactVM(v)
	}
	return out
}
