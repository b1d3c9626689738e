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
		if ci.UserData != "" && ci.UserDataSHA256 == "" {
			ci.UserDataSHA256 = userDataSum(ci.UserData)
		}
		ci.UserData, ci.UserDataSealed = "", ""
		s.CloudInit = &ci
	}
	return s
}

func userDataSum(ud string) string {
	sum := sha256.Sum256([]byte(ud))
	return hex.EncodeToString(sum[:])
}

// sealCloudInit replaces a new spec's user-data by its hash and, with a
// key, its sealed form: etcd never holds it in the clear. Without a key
// (tests, a server started without one) the user-data stays as it is.
func (s *Server) sealCloudInit(spec *v1.VMSpec) {
	if spec.CloudInit == nil || spec.CloudInit.UserData == "" {
		return
	}
	ci := *spec.CloudInit
	ci.UserDataSHA256 = userDataSum(ci.UserData)
	if s.cfg.Secrets != nil {
		ci.UserDataSealed = s.cfg.Secrets.Seal(ci.UserData)
		ci.UserData = ""
	}
	spec.CloudInit = &ci
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
