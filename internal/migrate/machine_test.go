package migrate

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// world is a simulated pool: the records in etcd and what runs on the two
// hosts, driven by Next, SourceStep and TargetStep.
type world struct {
	t     *testing.T
	rec   *Record
	src   *SourcePart
	tgt   *TargetPart
	disks *DisksPart
	owner struct {
		host  string
		epoch int64
	}
	opFinal, opOK bool

	srcQEMU   string // running, paused, gone
	srcMig    int    // >0: a Migrate call runs in the source agent, at this step
	srcFiles  bool
	tgtQEMU   string // none, incoming, running
	tgtFiles  bool
	tgtWork   bool // the target agent is preparing
	srcAlive  bool
	tgtAlive  bool
	cancelled bool

	fault string // "", "target-fails", "source-fails", "blocker", "target-dies"
	log   []string
}

func newWorld(t *testing.T, fault string) *world {
	w := &world{t: t, srcQEMU: "running", srcFiles: true, tgtQEMU: "none", srcAlive: true, tgtAlive: true, fault: fault}
	w.rec = &Record{VM: "web", OpID: "0f8fad5b-d9cb-469f-a165-70867728950e", Source: "h1", Target: "h2", Phase: Pending, Epoch: 7}
	w.owner.host, w.owner.epoch = "h1", 7
	return w
}

func (w *world) view() View {
	v := View{Rec: *w.rec, OwnerHost: w.owner.host, OwnerEpoch: w.owner.epoch, SourceAlive: w.srcAlive,
		TargetAlive: w.tgtAlive, Cancel: w.cancelled, OpFinal: w.opFinal}
	if w.src != nil {
		c := *w.src
		v.Source = &c
	}
	if w.tgt != nil {
		c := *w.tgt
		v.Target = &c
	}
	if w.disks != nil {
		c := *w.disks
		v.Disks = &c
	}
	return v
}

// master runs Next once and applies at most limit of its actions (a crash
// after that: the next master starts from the records).
func (w *world) master(limit int) {
	if w.rec == nil {
		return
	}
	acts := Next(w.view())
	for i, a := range acts {
		if i >= limit {
			w.log = append(w.log, fmt.Sprintf("master crashed before %s", a.Kind))
			return
		}
		w.log = append(w.log, fmt.Sprintf("master %s %s %s", a.Kind, a.Phase, a.Error))
		switch a.Kind {
		case ActCheck:
			if w.fault == "blocker" {
				w.rec.Phase, w.rec.Error = Aborting, "blocker"
			} else {
				w.rec.Phase = Checked
			}
		case ActSetPhase:
			if !validTransition(w.rec.Phase, a.Phase) {
				w.t.Fatalf("Next moved %s → %s\n%v", w.rec.Phase, a.Phase, w.log)
			}
			w.rec.Phase = a.Phase
			if a.Error != "" {
				w.rec.Error = a.Error
			}
		case ActSwitchOver:
			if w.owner.host != w.rec.Source || w.owner.epoch != w.rec.Epoch {
				continue // the fenced txn fails
			}
			if w.srcQEMU == "running" {
				w.t.Fatalf("switch-over while the source runs\n%v", w.log)
			}
			w.owner.host, w.owner.epoch = w.rec.Target, w.rec.Epoch+1
			w.rec.Phase = SwitchedOver
		case ActFinishOp:
			if !w.opFinal {
				w.opFinal, w.opOK = true, a.Succeeded
			}
		case ActDelete:
			w.rec, w.src, w.tgt, w.disks = nil, nil, nil, nil
			return
		}
	}
}

func validTransition(from, to Phase) bool {
	switch to {
	case Aborting:
		return from.BeforeSwitchOver()
	case RolledBack:
		return from == Aborting
	}
	return rank(to) > rank(from) && rank(from) >= 0
}

func (w *world) targetAgent() {
	if w.rec == nil || !w.tgtAlive {
		if w.rec == nil && w.tgtAlive && w.owner.host != "h2" && (w.tgtQEMU == "incoming" || w.tgtFiles) {
			// records gone, leftovers here: the agent removes them
			w.tgtQEMU, w.tgtFiles, w.tgtWork = "none", false, false
		}
		return
	}
	if w.tgtWork { // finish preparing
		w.tgtWork = false
		if w.fault == "target-fails" {
			w.tgtQEMU, w.tgtFiles = "none", false
			w.tgt = &TargetPart{State: TgtFailed, Error: "no space"}
			return
		}
		w.tgt.State, w.tgt.IP, w.tgt.Port = TgtListening, "10.99.0.2", 49152
		return
	}
	switch TargetStep(*w.rec, w.tgt, w.owner.host) {
	case TargetPrepare:
		w.tgt = &TargetPart{State: TgtPreparing}
		w.tgtQEMU, w.tgtFiles, w.tgtWork = "incoming", true, true
	case TargetResume:
		if w.srcQEMU == "running" {
			w.t.Fatalf("target resumes while the source runs\n%v", w.log)
		}
		w.tgtQEMU = "running"
		w.tgt.State = TgtRunning
	case TargetRemove:
		w.tgtQEMU, w.tgtFiles = "none", false
		w.tgt.State = TgtCleaned
	}
}

func (w *world) sourceAgent() {
	if w.rec == nil || !w.srcAlive {
		return
	}
	if SourceReports(*w.rec, w.disks) {
		w.disks = &DisksPart{Disks: []Disk{{Name: "disk0", Pool: "default", Volume: "vms/web/disk0.qcow2", Format: "qcow2", SizeBytes: 1 << 30}}}
		return
	}
	if w.srcMig > 0 && SourceStep(*w.rec, w.src, true) != SourceRollBack {
		w.srcMig++
		switch w.srcMig {
		case 2:
			w.src.State = SrcMirroring
		case 3:
			w.src.State = SrcMirrorReady
		case 4:
			w.src.State = SrcMigrating
		case 5:
			w.srcMig = 0
			if w.fault == "source-fails" {
				w.src.State, w.src.Error = SrcFailed, "migration failed: connection reset"
				return
			}
			w.srcQEMU, w.src.State = "paused", SrcPaused
		}
		return
	}
	switch SourceStep(*w.rec, w.src, w.srcMig > 0) {
	case SourceMigrate:
		w.src = &SourcePart{State: SrcStarting}
		w.srcMig = 1
	case SourceRollBack:
		w.srcMig = 0
		w.srcQEMU = "running"
		w.src.State = SrcRolledBack
	case SourceRecover:
		if w.src.State == SrcMigrating { // it completed while the agent was away
			w.srcQEMU, w.src.State = "paused", SrcPaused
		} else {
			w.srcQEMU, w.src.State = "running", SrcFailed
		}
	case SourceCleanup:
		w.srcQEMU, w.srcFiles = "gone", false
		w.src.State = SrcCleaned
	}
}

func (w *world) invariants() {
	if w.srcQEMU == "running" && w.tgtQEMU == "running" {
		w.t.Fatalf("the vm runs twice\n%v", w.log)
	}
	if w.tgtQEMU == "running" && w.owner.host != "h2" {
		w.t.Fatalf("target runs the vm without owning it\n%v", w.log)
	}
	if w.srcQEMU == "running" && w.owner.host != "h1" {
		w.t.Fatalf("source runs the vm without owning it\n%v", w.log)
	}
}

// run drives the world to the end; crashAt is the master step that
// crashes after keep actions; restartSrcAt drops the source agent's
// in-flight Migrate (agent restart; QEMU goes on); events maps a step to a
// change of the world (cancel, host death).
func (w *world) run(crashAt, keep, restartSrcAt int, events map[int]func(*world)) {
	for step := 0; step < 200; step++ {
		if f := events[step]; f != nil {
			f(w)
		}
		if step == restartSrcAt {
			w.srcMig = 0
		}
		limit := 100
		if step == crashAt {
			limit = keep
		}
		w.master(limit)
		w.invariants()
		w.targetAgent()
		w.invariants()
		w.sourceAgent()
		w.invariants()
		if w.rec == nil {
			w.targetAgent() // a last look for leftovers
			return
		}
	}
	w.t.Fatalf("migration did not end: phase %s, source %+v, target %+v\n%v", w.rec.Phase, w.src, w.tgt, w.log)
}

func (w *world) end(wantOK bool) {
	w.t.Helper()
	if !w.opFinal || w.opOK != wantOK {
		w.t.Fatalf("operation final %v ok %v, want ok %v\n%v", w.opFinal, w.opOK, wantOK, w.log)
	}
	if wantOK {
		if w.tgtQEMU != "running" || w.srcQEMU != "gone" || w.srcFiles || w.owner.host != "h2" || w.owner.epoch != 8 {
			w.t.Fatalf("after success: target %s, source %s files %v, owner %+v\n%v", w.tgtQEMU, w.srcQEMU, w.srcFiles, w.owner, w.log)
		}
		return
	}
	if w.srcQEMU != "running" || !w.srcFiles || w.owner.host != "h1" || w.owner.epoch != 7 {
		w.t.Fatalf("after rollback: source %s files %v, owner %+v\n%v", w.srcQEMU, w.srcFiles, w.owner, w.log)
	}
	if w.tgtAlive && (w.tgtQEMU != "none" || w.tgtFiles) {
		w.t.Fatalf("after rollback, left on the target: qemu %s files %v\n%v", w.tgtQEMU, w.tgtFiles, w.log)
	}
}

func TestHappyPath(t *testing.T) {
	w := newWorld(t, "")
	w.run(-1, 0, -1, nil)
	w.end(true)
	var phases []string
	for _, l := range w.log {
		phases = append(phases, l)
	}
	if !slices.ContainsFunc(phases, func(s string) bool { return s == "master switch-over  " }) {
		t.Errorf("no switch-over in %v", phases)
	}
}

// TestMasterCrashAtEveryPhase: whatever step the master dies at, and
// however many of its actions it got done, the next master resumes from
// the records and the VM ends running exactly once, with nothing left.
func TestMasterCrashAtEveryPhase(t *testing.T) {
	for _, fault := range []string{"", "target-fails", "source-fails", "blocker"} {
		for crashAt := 0; crashAt < 25; crashAt++ {
			for keep := 0; keep < 3; keep++ {
				t.Run(fmt.Sprintf("%s/step%d/keep%d", fault, crashAt, keep), func(t *testing.T) {
					w := newWorld(t, fault)
					w.run(crashAt, keep, -1, nil)
					w.end(fault == "")
				})
			}
		}
	}
}

// TestSourceAgentRestart: the source agent restarts while its QEMU
// migrates; it recovers a completed migration or rolls it back.
func TestSourceAgentRestart(t *testing.T) {
	for at := 0; at < 20; at++ {
		t.Run(fmt.Sprint(at), func(t *testing.T) {
			w := newWorld(t, "")
			w.run(-1, 0, at, nil)
			// Either outcome is allowed; it must be a clean one.
			w.end(w.opOK)
		})
	}
}

// TestCancelAndHostDeathAtEveryStep: a cancel or the target host dying at
// any step before the switch-over rolls back; after it, the migration
// completes.
func TestCancelAndHostDeathAtEveryStep(t *testing.T) {
	for at := 0; at < 20; at++ {
		for _, ev := range []string{"cancel", "target-dies"} {
			t.Run(fmt.Sprintf("%s/%d", ev, at), func(t *testing.T) {
				w := newWorld(t, "")
				switched, fired := false, false
				events := map[int]func(*world){at: func(w *world) {
					fired = true
					switched = w.owner.host == "h2"
					if ev == "cancel" {
						w.cancelled = true
					} else if !switched {
						w.tgtAlive = false
						w.tgtQEMU = "none" // died with its host; files stay until it returns
					}
				}}
				w.run(-1, 0, -1, events)
				w.end(!fired || switched)
			})
		}
	}
}

func TestNextTable(t *testing.T) {
	base := func(p Phase) View {
		return View{Rec: Record{VM: "web", Source: "h1", Target: "h2", Phase: p, Epoch: 3}, OwnerHost: "h1", OwnerEpoch: 3,
			SourceAlive: true, TargetAlive: true}
	}
	listening := &TargetPart{State: TgtListening}
	for _, tc := range []struct {
		name string
		v    View
		want []Action
	}{
		{"pending waits for the source's disks", base(Pending), nil},
		{"pending, disks reported: check", func() View { v := base(Pending); v.Disks = &DisksPart{}; return v }(), []Action{{Kind: ActCheck}}},
		{"pending, source cannot read its disks", func() View {
			v := base(Pending)
			v.Disks = &DisksPart{Error: "disk0: no such file"}
			return v
		}(), []Action{abort("source: disk0: no such file")}},
		{"pending, source never reports", func() View {
			v := base(Pending)
			v.Rec.Updated, v.Now = time.Unix(1000, 0), time.Unix(1000, 0).Add(ClaimTimeout+time.Second)
			return v
		}(), []Action{abort("source host h1 did not report the vm's disks")}},
		{"checked waits for the target", base(Checked), nil},
		{"checked, target listening", func() View { v := base(Checked); v.Target = listening; return v }(), []Action{setPhase(TargetPrepared)}},
		{"source paused: switch over", func() View {
			v := base(Migrating)
			v.Target, v.Source = listening, &SourcePart{State: SrcPaused}
			return v
		}(), []Action{{Kind: ActSwitchOver}}},
		{"source paused, source host dead: still switch over", func() View {
			v := base(Migrating)
			v.Target, v.Source, v.SourceAlive = listening, &SourcePart{State: SrcPaused}, false
			return v
		}(), []Action{{Kind: ActSwitchOver}}},
		{"owner changed under us", func() View { v := base(Mirroring); v.OwnerEpoch = 4; return v }(),
			[]Action{abort("the vm's owner record changed during the migration")}},
		{"phase does not go back", func() View {
			v := base(Migrating)
			v.Target, v.Source = listening, &SourcePart{State: SrcMirroring}
			return v
		}(), nil},
		{"target failed", func() View {
			v := base(Checked)
			v.Target = &TargetPart{State: TgtFailed, Error: "disk full"}
			return v
		}(),
			[]Action{abort("target: disk full")}},
		{"aborting waits for the source", func() View {
			v := base(Aborting)
			v.Source, v.Target = &SourcePart{State: SrcMigrating}, &TargetPart{State: TgtCleaned}
			return v
		}(), nil},
		{"aborting, dead target counts as settled", func() View {
			v := base(Aborting)
			v.Source, v.Target, v.TargetAlive = &SourcePart{State: SrcRolledBack}, listening, false
			return v
		}(), []Action{setPhase(RolledBack)}},
		{"switched over, target running", func() View {
			v := base(SwitchedOver)
			v.OwnerHost, v.OwnerEpoch, v.Target = "h2", 4, &TargetPart{State: TgtRunning}
			return v
		}(), []Action{{Kind: ActFinishOp, Succeeded: true}, setPhase(Cleaning)}},
		{"target never claims: abort after the claim time-out", func() View {
			v := base(Checked)
			v.Rec.Updated, v.Now = time.Unix(1000, 0), time.Unix(1000, 0).Add(ClaimTimeout+time.Second)
			return v
		}(), []Action{abort("target host h2 did not take up the migration")}},
		{"target claimed recently: wait", func() View {
			v := base(Checked)
			v.Rec.Updated, v.Now = time.Unix(1000, 0), time.Unix(1000, 0).Add(ClaimTimeout+time.Second)
			v.Target = &TargetPart{State: TgtPreparing, Updated: time.Unix(1000, 0).Add(ClaimTimeout)}
			return v
		}(), nil},
		{"target preparing too long", func() View {
			v := base(Checked)
			v.Now = time.Unix(1000, 0).Add(PrepareTimeout + time.Second)
			v.Target = &TargetPart{State: TgtPreparing, Updated: time.Unix(1000, 0)}
			return v
		}(), []Action{abort("target host h2 did not finish preparing")}},
		{"source never claims", func() View {
			v := base(TargetPrepared)
			v.Target = listening
			v.Rec.Updated, v.Now = time.Unix(1000, 0), time.Unix(1000, 0).Add(ClaimTimeout+time.Second)
			return v
		}(), []Action{abort("source host h1 did not take up the migration")}},
		{"no clock, no time-out", func() View {
			v := base(Checked)
			v.Rec.Updated = time.Unix(1000, 0)
			return v
		}(), nil},
		{"switched over: no abort even when cancelled", func() View {
			v := base(SwitchedOver)
			v.OwnerHost, v.OwnerEpoch, v.Cancel, v.Target = "h2", 4, true, listening
			return v
		}(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Next(tc.v); !slices.Equal(got, tc.want) {
				t.Errorf("Next = %+v, want %+v", got, tc.want)
			}
		})
	}
}
