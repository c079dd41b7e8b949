package console

import (
	"cmp"
	"slices"
	"time"

	"crkvol/crk"
)

// The Fleet page answers, per root key, the questions a rotation or a lockout leaves: how
// many registered volumes are on each key version (now, and over time), how many are still
// behind the latest version after a rotation, and, once the key is out of use, which hosts
// have confirmed that they locked its volumes out.
//
// Everything here is computed from what crk keeps: the audit events of the key's
// registrations (kms.registrations.create, .write and .delete, each naming the resource
// CRN and, for create and write, the key version the resource is on afterwards), the
// current registrations, the key's versions and the hosts' acknowledgements.

// fleetUnknownVersion names, in a history, the version of a registration whose version at some
// time is not in the retained audit events: one that existed before the oldest retained
// event and was rewritten or deleted later.
const fleetUnknownVersion = ""

// fleetVersion is one series of a [fleetHistory]: a key version, oldest first.
type fleetVersion struct {
	ID      string // fleetUnknownVersion for the registrations of unknown version
	Created time.Time
	Latest  bool
}

// fleetStep is the number of registrations on each version from Time until the next
// step (or the history's End).
type fleetStep struct {
	Time   time.Time
	Counts []int // one per fleetHistory version, in the fleetHistory's order
}

// total returns the number of registrations at the step.
func (s fleetStep) total() int {
	n := 0
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// fleetHistory is how many registrations of a key were on each of its versions over time: a
// step function per version, from Start to End.
type fleetHistory struct {
	Start, End time.Time
	Versions   []fleetVersion
	Steps      []fleetStep // sorted by time, the first at Start; never empty
}

// fleetRegState is what the replay knows of one resource: its version, and whether it is
// registered.
type fleetRegState struct {
	version    string
	registered bool
}

// registrationHistory replays a key's registration events to count, over time, the
// registrations on each version of the key.
//
// events are the key's audit events in any order (only successful registration events
// count); regs its current registrations; versions its versions (as ListVersions gives
// them, any order); created the key's creation date and now the end of the history.
//
// The audit log keeps a bounded number of events, so its oldest ones may be gone. A current
// registration whose creation is not among the events is counted from its creation date on
// its current version, unless an event rewrote or deleted it later, in which case its
// version before that event is unknown; a registration the events name without creating
// it, and that no longer exists, is counted from the oldest event on. Where the replay and
// the current registrations disagree at the end (events still being written), the current
// registrations win from now on.
func registrationHistory(events []crk.Event, regs []crk.Registration, versions []crk.VersionInfo, created, now time.Time) fleetHistory {
	evs := make([]crk.Event, 0, len(events))
	for _, ev := range events {
		switch ev.Action {
		case crk.ActionRegister, crk.ActionRegUpdate, crk.ActionRegDelete:
			if ev.Outcome == crk.OutcomeSuccess && ev.ResourceCRN != "" {
				evs = append(evs, ev)
			}
		}
	}
	slices.SortStableFunc(evs, func(a, b crk.Event) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return cmp.Compare(a.Seq, b.Seq)
	})

	current := make(map[string]crk.Registration, len(regs))
	for _, r := range regs {
		current[r.ResourceCRN] = r
	}
	// The first event of each resource tells what was before it.
	first := map[string]crk.Event{}
	for _, ev := range evs {
		if _, ok := first[ev.ResourceCRN]; !ok {
			first[ev.ResourceCRN] = ev
		}
	}
	var oldest time.Time
	if len(evs) > 0 {
		oldest = evs[0].Time
	}

	type change struct {
		t       time.Time
		crn     string
		state   fleetRegState
		initial bool // a starting state, applied before the events of the same time
	}
	var changes []change
	// Registrations that existed before the retained events.
	for crn, ev := range first {
		if ev.Action == crk.ActionRegister {
			continue // the replay sees its creation
		}
		start := oldest
		if r, ok := current[crn]; ok && r.CreationDate.Before(start) {
			start = r.CreationDate
		}
		changes = append(changes, change{t: start, crn: crn, state: fleetRegState{fleetUnknownVersion, true}, initial: true})
	}
	for crn, r := range current {
		if _, ok := first[crn]; ok {
			continue
		}
		changes = append(changes, change{t: r.CreationDate, crn: crn, state: fleetRegState{r.KeyVersion.ID, true}, initial: true})
	}
	for _, ev := range evs {
		st := fleetRegState{ev.KeyVersion, ev.Action != crk.ActionRegDelete}
		changes = append(changes, change{t: ev.Time, crn: ev.ResourceCRN, state: st})
	}
	slices.SortStableFunc(changes, func(a, b change) int {
		if c := a.t.Compare(b.t); c != 0 {
			return c
		}
		switch {
		case a.initial && !b.initial:
			return -1
		case b.initial && !a.initial:
			return 1
		}
		return cmp.Compare(a.crn, b.crn)
	})

	h := fleetHistory{Start: created, End: now}
	if len(changes) > 0 && changes[0].t.Before(h.Start) {
		h.Start = changes[0].t
	}
	if h.End.Before(h.Start) {
		h.End = h.Start
	}

	// The series: the key's versions oldest first, then any version events name that the
	// key no longer lists, and the unknown version first of all when it is needed.
	vs := slices.Clone(versions)
	slices.SortStableFunc(vs, func(a, b crk.VersionInfo) int { return a.CreationDate.Compare(b.CreationDate) })
	index := map[string]int{}
	addVersion := func(v fleetVersion) {
		if _, ok := index[v.ID]; !ok {
			index[v.ID] = len(h.Versions)
			h.Versions = append(h.Versions, v)
		}
	}
	needUnknown := false
	for _, c := range changes {
		if c.state.registered && c.state.version == fleetUnknownVersion {
			needUnknown = true
		}
	}
	if needUnknown {
		addVersion(fleetVersion{ID: fleetUnknownVersion})
	}
	for i, v := range vs {
		addVersion(fleetVersion{ID: v.ID, Created: v.CreationDate, Latest: i == len(vs)-1})
	}
	for _, c := range changes {
		if c.state.registered {
			addVersion(fleetVersion{ID: c.state.version})
		}
	}
	for _, r := range regs {
		addVersion(fleetVersion{ID: r.KeyVersion.ID})
	}

	state := map[string]fleetRegState{}
	counts := func() []int {
		out := make([]int, len(h.Versions))
		for _, st := range state {
			if st.registered {
				out[index[st.version]]++
			}
		}
		return out
	}
	push := func(t time.Time) {
		c := counts()
		if n := len(h.Steps); n > 0 {
			last := &h.Steps[n-1]
			if last.Time.Equal(t) {
				last.Counts = c
				return
			}
			if slices.Equal(last.Counts, c) {
				return
			}
		}
		h.Steps = append(h.Steps, fleetStep{Time: t, Counts: c})
	}
	push(h.Start)
	for i, c := range changes {
		state[c.crn] = c.state
		if i+1 == len(changes) || !changes[i+1].t.Equal(c.t) {
			push(c.t)
		}
	}
	// The current registrations are the truth at the end.
	mismatch := false
	for crn, st := range state {
		r, ok := current[crn]
		if st.registered != ok || ok && st.version != r.KeyVersion.ID {
			mismatch = true
		}
	}
	for crn := range current {
		if _, ok := state[crn]; !ok {
			mismatch = true
		}
	}
	if mismatch {
		state = map[string]fleetRegState{}
		for crn, r := range current {
			state[crn] = fleetRegState{r.KeyVersion.ID, true}
		}
		push(h.End)
	}
	return h
}

// latest returns the counts of the last step.
func (h fleetHistory) latest() []int { return h.Steps[len(h.Steps)-1].Counts }

// maxTotal returns the most registrations the key had at any step.
func (h fleetHistory) maxTotal() int {
	m := 0
	for _, s := range h.Steps {
		m = max(m, s.total())
	}
	return m
}
