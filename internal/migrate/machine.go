package migrate

import "time"

// View is everything the master's decision depends on: the records as
// read from etcd (validated) and the liveness of both hosts.
type View struct {
	Rec    Record
	Source *SourcePart // nil: the source agent has not claimed its part
	Target *TargetPart // nil: the target agent has not claimed its part
	Disks  *DisksPart  // nil: the source agent has not reported the vm's local disks
	// OwnerHost and OwnerEpoch are the VM's owner record.
	OwnerHost  string
	OwnerEpoch int64
	// SourceAlive, TargetAlive: the host's liveness lease exists.
	SourceAlive, TargetAlive bool
	// Cancel: the user cancelled the operation.
	Cancel bool
	// OpFinal: the operation already has its final state.
	OpFinal bool
	// Now is when the view was read (zero: no time-outs apply).
	Now time.Time
}

// Time-outs of the phases the master waits in for an agent.
const (
	// ClaimTimeout: an agent that has not claimed its part this long after
	// the phase asked it to (its host runs no migration handler, or is
	// wedged) aborts the migration.
	ClaimTimeout = 2 * time.Minute
	// PrepareTimeout bounds the target's preparing (volumes, QEMU start).
	PrepareTimeout = 10 * time.Minute
)

// ActionKind is one step the master takes.
type ActionKind string

const (
	// ActCheck runs the blocker checks (Blockers, and the source's report
	// of local disks against the records) and then sets the phase to
	// Checked with the reported disks in the record, or to Aborting with
	// the blocker as the error.
	ActCheck ActionKind = "check"
	// ActSetPhase writes the record with Phase (and Error), conditioned on
	// the record's revision and the master's leadership.
	ActSetPhase ActionKind = "set-phase"
	// ActSwitchOver is one fenced transaction: owner/<vm> = {Target,
	// Epoch+1} (conditioned on the owner record naming the source at
	// Epoch) and the phase SwitchedOver.
	ActSwitchOver ActionKind = "switch-over"
	// ActFinishOp gives the Operation its final state (succeeded, or
	// failed with Error); idempotent.
	ActFinishOp ActionKind = "finish-op"
	// ActDelete removes the record and both parts: nothing is left.
	ActDelete ActionKind = "delete"
)

// Action is one step of the master.
type Action struct {
	Kind      ActionKind
	Phase     Phase
	Error     string
	Succeeded bool
}

func setPhase(p Phase) Action { return Action{Kind: ActSetPhase, Phase: p} }
func abort(why string) Action { return Action{Kind: ActSetPhase, Phase: Aborting, Error: why} }

// Next is the master's decision for a migration: what to do now given the
// records. It is pure, and each action is idempotent (conditioned on the
// revisions the view was read at), so a master that crashed anywhere
// resumes by calling it again on what etcd holds. No action: wait for a
// record to change.
//
// Who cleans what:
//   - before switch-over, the target agent removes the target QEMU and the
//     volumes it made (on its own failure, TgtFailed; on an abort,
//     TgtCleaned); the source agent removes its NBD nodes and mirror jobs and
//     keeps or resumes the source (SrcFailed, SrcRolledBack);
//   - after switch-over the source agent quits the paused source QEMU and
//     removes its local disk files (SrcCleaned), only once the target runs.
//
// A dead host's agent cleans its leftovers when it comes back (the records
// are gone or say aborting: it kills an incoming QEMU and deletes its
// volumes; a source whose owner record names another host is killed).
func Next(v View) []Action {
	r := v.Rec
	switch r.Phase {
	case Done:
		return finishThenDelete(v, true, "")
	case RolledBack:
		return finishThenDelete(v, false, r.Error)
	case Aborting:
		if sourceSettled(v) && targetSettled(v) {
			return []Action{setPhase(RolledBack)}
		}
		return nil
	case SwitchedOver:
		if v.Target != nil && v.Target.State == TgtRunning {
			return []Action{{Kind: ActFinishOp, Succeeded: true}, setPhase(Cleaning)}
		}
		return nil
	case Cleaning:
		acts := []Action{}
		if !v.OpFinal {
			acts = append(acts, Action{Kind: ActFinishOp, Succeeded: true})
		}
		if (v.Source != nil && v.Source.State == SrcCleaned) || !v.SourceAlive {
			acts = append(acts, setPhase(Done))
		}
		return acts
	}
	// Before switch-over: the source owns the VM.
	if v.OwnerHost != r.Source || v.OwnerEpoch != r.Epoch {
		return []Action{abort("the vm's owner record changed during the migration")}
	}
	switch {
	case v.Cancel:
		return []Action{abort("cancelled")}
	case v.Source != nil && v.Source.State == SrcFailed:
		return []Action{abort("source: " + v.Source.Error)}
	case v.Target != nil && (v.Target.State == TgtFailed || v.Target.State == TgtCleaned):
		return []Action{abort("target: " + v.Target.Error)}
	case !v.TargetAlive:
		return []Action{abort("target host " + r.Target + " is not alive")}
	case !v.SourceAlive && !(v.Source != nil && v.Source.State == SrcPaused):
		// A paused source has handed everything over: the switch-over
		// does not need it.
		return []Action{abort("source host " + r.Source + " is not alive")}
	}
	waited := func(since time.Time, d time.Duration) bool {
		return !v.Now.IsZero() && !since.IsZero() && v.Now.Sub(since) > d
	}
	switch r.Phase {
	case Pending:
		switch {
		case v.Disks == nil && waited(r.Updated, ClaimTimeout):
			return []Action{abort("source host " + r.Source + " did not report the vm's disks")}
		case v.Disks == nil:
			return nil
		case v.Disks.Error != "":
			return []Action{abort("source: " + v.Disks.Error)}
		}
		return []Action{{Kind: ActCheck}}
	case Checked:
		switch {
		case v.Target != nil && v.Target.State == TgtListening:
			return []Action{setPhase(TargetPrepared)}
		case v.Target == nil && waited(r.Updated, ClaimTimeout):
			return []Action{abort("target host " + r.Target + " did not take up the migration")}
		case v.Target != nil && waited(v.Target.Updated, PrepareTimeout):
			return []Action{abort("target host " + r.Target + " did not finish preparing")}
		}
		return nil
	case TargetPrepared:
		if v.Source == nil && waited(r.Updated, ClaimTimeout) {
			return []Action{abort("source host " + r.Source + " did not take up the migration")}
		}
	}
	// TargetPrepared, Mirroring, MirrorReady, Migrating follow the source.
	if v.Target == nil || v.Target.State != TgtListening {
		return []Action{abort("target is no longer listening")}
	}
	if v.Source == nil {
		return nil
	}
	var want Phase
	switch v.Source.State {
	case SrcPaused:
		return []Action{{Kind: ActSwitchOver}}
	case SrcMirroring:
		want = Mirroring
	case SrcMirrorReady:
		want = MirrorReady
	case SrcMigrating:
		want = Migrating
	default:
		return nil
	}
	if rank(want) > rank(r.Phase) {
		return []Action{setPhase(want)}
	}
	return nil
}

func finishThenDelete(v View, ok bool, why string) []Action {
	if v.OpFinal {
		return []Action{{Kind: ActDelete}}
	}
	return []Action{{Kind: ActFinishOp, Succeeded: ok, Error: why}, {Kind: ActDelete}}
}

// sourceSettled: in Aborting, the source runs the VM and holds nothing of
// the migration (or its host is dead, and its agent cleans at restart).
func sourceSettled(v View) bool {
	if v.Source == nil || !v.SourceAlive {
		return true
	}
	return v.Source.State == SrcFailed || v.Source.State == SrcRolledBack
}

// targetSettled: in Aborting, nothing of the target is left.
func targetSettled(v View) bool {
	if v.Target == nil || !v.TargetAlive {
		return true
	}
	return v.Target.State == TgtFailed || v.Target.State == TgtCleaned
}

// AgentAction is what an agent does for a migration it takes part in.
type AgentAction string

const (
	AgentNothing AgentAction = ""
	// Target agent.
	TargetPrepare AgentAction = "prepare" // claim (cond: record revision), make volumes, start QEMU -incoming, NBD, listen
	TargetResume  AgentAction = "resume"  // wait for the state, nbd-server-stop, cont, announce; status running
	TargetRemove  AgentAction = "remove"  // kill the target QEMU, delete the volumes it made
	// Source agent.
	SourceMigrate  AgentAction = "migrate"  // claim (cond: record revision), mirror, migrate; report paused or failed
	SourceRollBack AgentAction = "rollback" // stop a running Migrate / resume a paused source; report rolled-back
	SourceRecover  AgentAction = "recover"  // after an agent restart mid-migration: finish a completed one (paused) or roll back (failed)
	SourceCleanup  AgentAction = "cleanup"  // quit the paused source QEMU, delete local disk files; report cleaned
)

// TargetStep is the target agent's decision, from the records alone.
func TargetStep(r Record, p *TargetPart, ownerHost string) AgentAction {
	switch r.Phase {
	case Checked:
		if p == nil {
			return TargetPrepare
		}
	case SwitchedOver, Cleaning:
		if p != nil && p.State == TgtListening && ownerHost == r.Target {
			return TargetResume
		}
	case Aborting, RolledBack:
		if p != nil && (p.State == TgtPreparing || p.State == TgtListening) {
			return TargetRemove
		}
	}
	return AgentNothing
}

// SourceReports says whether the source agent still has to report the
// vm's local disks (once, while the record is pending).
func SourceReports(r Record, d *DisksPart) bool { return r.Phase == Pending && d == nil }

// SourceStep is the source agent's decision. migrating says whether this
// agent has a Migrate call running for the VM now (false after a
// restart: a migration QEMU went on with alone is recovered or rolled
// back).
func SourceStep(r Record, p *SourcePart, migrating bool) AgentAction {
	switch r.Phase {
	case TargetPrepared:
		if p == nil {
			return SourceMigrate
		}
	case Aborting:
		if p == nil {
			return AgentNothing
		}
		switch p.State {
		case SrcStarting, SrcMirroring, SrcMirrorReady, SrcMigrating, SrcPaused:
			return SourceRollBack
		}
	case Cleaning:
		if p != nil && p.State == SrcPaused {
			return SourceCleanup
		}
	}
	if !migrating && p != nil && r.Phase.BeforeSwitchOver() {
		switch p.State {
		case SrcStarting, SrcMirroring, SrcMirrorReady, SrcMigrating:
			// The agent restarted while QEMU migrated: Recover finishes a
			// completed migration (paused) or rolls it back (failed).
			return SourceRecover
		}
	}
	return AgentNothing
}
