package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"time"

	v1 "hangar/api/v1"
)

// TCGCPUModel is the pool CPU model when any live host runs guests under
// TCG: a named model (so it is the same CPU on every host and migrates),
// which QEMU's TCG emulates with no missing feature (x86-64-v2: SSE4.2,
// POPCNT, AES-NI).
const TCGCPUModel = "Westmere"

// BaselineCPUModel is the pool CPU model of KVM hosts that share no newer
// named model: the x86-64 baseline every KVM host runs.
const BaselineCPUModel = "qemu64"

// cpuGenerations ranks the named QEMU models Hangar uses as pool models,
// older first (within a vendor each runs what the one before it does; the
// year of the generation orders the two vendors' lines). Only these names
// are ever chosen: a host's reported list is input, and anything else in it
// is ignored.
var cpuGenerations = []string{
	"qemu64",             // generic x86-64
	"kvm64",              // generic x86-64 (KVM flavour)
	"Nehalem",            // 2008
	"Westmere",           // 2010
	"SandyBridge",        // 2011
	"IvyBridge",          // 2012
	"Haswell",            // 2013
	"Broadwell",          // 2014
	"EPYC",               // 2017
	"Skylake-Server",     // 2017
	"Cascadelake-Server", // 2019
	"EPYC-Rome",          // 2019
	"Icelake-Server",     // 2021
	"EPYC-Milan",         // 2021
}

// CPUModelRank is a named model's place in cpuGenerations (newer is
// larger), -1 for a model Hangar does not pick.
func CPUModelRank(model string) int {
	for i, m := range cpuGenerations {
		if m == model {
			return i
		}
	}
	return -1
}

// PoolCPUModel is the CPU model every one of hosts (the live ones) runs:
// TCGCPUModel when any of them uses TCG (or there are none); under KVM the
// newest named model that every host reports usable, BaselineCPUModel when
// they share none.
func PoolCPUModel(hosts []v1.Host) string {
	if len(hosts) == 0 {
		return TCGCPUModel
	}
	common := map[string]int{}
	for _, h := range hosts {
		if h.Accelerator != "kvm" {
			return TCGCPUModel
		}
		seen := map[string]bool{}
		for _, m := range h.UsableCPUModels {
			if CPUModelRank(m) >= 0 && !seen[m] {
				seen[m] = true
				common[m]++
			}
		}
	}
	best := BaselineCPUModel
	for m, n := range common {
		if n == len(hosts) && CPUModelRank(m) > CPUModelRank(best) {
			best = m
		}
	}
	return best
}

// UsableCPUModels asks QEMU (a short-lived `-machine none` process with the
// accelerator accel) which CPU models it can run on this host: those that
// query-cpu-definitions reports with no unavailable features. The answer
// lists only the models Hangar picks as pool models (CPUModelRank ≥ 0),
// sorted older first.
func UsableCPUModels(ctx context.Context, binary, accel string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "-machine", "none", "-accel", accel, "-nodefaults", "-display", "none", "-qmp", "stdio")
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"query-cpu-definitions","id":"defs"}` + "\n" + `{"execute":"quit"}` + "\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("probe cpu models (%s -accel %s): %w: %s", binary, accel, err, strings.TrimSpace(stderr.String()))
	}
	return parseCPUDefinitions(out)
}

// parseCPUDefinitions reads the answer to query-cpu-definitions (id "defs")
// out of a QMP stdio transcript.
func parseCPUDefinitions(transcript []byte) ([]string, error) {
	sc := bufio.NewScanner(bytes.NewReader(transcript))
	sc.Buffer(make([]byte, 0, 64<<10), 8<<20)
	for sc.Scan() {
		var msg struct {
			ID     string `json:"id"`
			Return []struct {
				Name        string   `json:"name"`
				Unavailable []string `json:"unavailable-features"`
			} `json:"return"`
			Error *struct {
				Desc string `json:"desc"`
			} `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &msg) != nil || msg.ID != "defs" {
			continue
		}
		if msg.Error != nil {
			return nil, fmt.Errorf("query-cpu-definitions: %s", msg.Error.Desc)
		}
		var usable []string
		for _, d := range msg.Return {
			if len(d.Unavailable) == 0 && CPUModelRank(d.Name) >= 0 {
				usable = append(usable, d.Name)
			}
		}
		sort.Slice(usable, func(i, j int) bool { return CPUModelRank(usable[i]) < CPUModelRank(usable[j]) })
		return usable, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("query-cpu-definitions: %w", err)
	}
	return nil, fmt.Errorf("query-cpu-definitions: no answer from qemu")
}
