package storage

import "strings"

// LocalPoolPrefix starts the name of every host's own pool: "local-h1" is
// the directory pool of host h1 (<data-dir>/pools/default on h1). The name
// says whose disk it is, so two hosts' pools never share a name, a volume
// reference ("local-h1/images/debian.qcow2") names one file in the whole
// pool of hosts, and pools added through the API may not take the prefix.
const LocalPoolPrefix = "local-"

// LocalPoolName is the name of host's own pool.
func LocalPoolName(host string) string { return LocalPoolPrefix + host }

// LocalPoolHost is the host whose own pool pool is, if it is one.
func LocalPoolHost(pool string) (string, bool) {
	h, ok := strings.CutPrefix(pool, LocalPoolPrefix)
	return h, ok && h != ""
}
