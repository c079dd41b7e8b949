package console

import (
	"cmp"
	"context"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
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
// count); regs its current registrations; versions its versions as ListVersions gives them
// (newest first; versions made in the same instant keep that order); latest the id of its
// latest version; created the key's creation date and now the end of the history.
//
// The audit log keeps a bounded number of events, so its oldest ones may be gone. A current
// registration whose creation is not among the events is counted from its creation date on
// its current version, unless an event rewrote or deleted it later, in which case its
// version before that event is unknown; a registration the events name without creating
// it, and that no longer exists, is counted from the oldest event on. Where the replay and
// the current registrations disagree at the end (events still being written), the current
// registrations win from now on.
func registrationHistory(events []crk.Event, regs []crk.Registration, versions []crk.VersionInfo, latest string, created, now time.Time) fleetHistory {
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

	// The history spans the key's life to now, and any change outside it (a registration
	// dated after now by a replica whose clock runs ahead).
	h := fleetHistory{Start: created, End: now}
	if len(changes) > 0 {
		if first := changes[0].t; first.Before(h.Start) {
			h.Start = first
		}
		if last := changes[len(changes)-1].t; last.After(h.End) {
			h.End = last
		}
	}
	if h.End.Before(h.Start) {
		h.End = h.Start
	}

	// The series: the key's versions oldest first, then any version events name that the
	// key no longer lists, and the unknown version first of all when it is needed.
	vs := slices.Clone(versions)
	slices.Reverse(vs)
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
	for _, v := range vs {
		addVersion(fleetVersion{ID: v.ID, Created: v.CreationDate, Latest: v.ID == latest})
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
	// push records the counts from t on: a step replaces one at the same time, and is
	// left out when it counts what the step before it does.
	push := func(t time.Time) {
		c := counts()
		if n := len(h.Steps); n > 0 && h.Steps[n-1].Time.Equal(t) {
			h.Steps = h.Steps[:n-1]
		}
		if n := len(h.Steps); n > 0 && slices.Equal(h.Steps[n-1].Counts, c) {
			return
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

// fleetKeysPerPage is the Fleet page's number of keys per page.
const fleetKeysPerPage = 25

// fleetMaxEvents caps the registration events of each action the Fleet chart reads for one
// key, newest first: a key with more is charted from the newest, its older registrations
// counted as the audit log's pruned ones are.
const fleetMaxEvents = 20000

// fleetVersionCount is how many registrations are on one version now.
type fleetVersionCount struct {
	ID     string
	Count  int
	Latest bool
}

// fleetHostsShown is the most hosts a key's row of the Fleet page names of each kind
// (confirmed, not yet): a key acknowledged by thousands of hosts keeps a small row, and its
// full list is the paged host table of the selected key.
const fleetHostsShown = 10

// fleetHostsPerPage is the number of hosts per page of the selected key's host table.
const fleetHostsPerPage = 50

// fleetHost is one host's latest acknowledgement for a key, judged against the key's state.
type fleetHost struct {
	crk.HostAck
	// Confirmed is set when the host enforces the key's current out-of-use state and said so
	// after the key entered it.
	Confirmed bool
	// OnLatest is set when the host reports its volumes on the key's latest version.
	OnLatest bool
}

// fleetHosts judges every host's latest acknowledgement for key k: for an out-of-use key
// the hosts that have not confirmed the lockout come first, then those that have; each
// group in the order of acks (by host name, as [crk.Service.HostAcks] gives them).
func fleetHosts(k crk.Key, acks []crk.HostAck) []fleetHost {
	out := make([]fleetHost, 0, len(acks))
	off := outOfUse(k.State)
	for _, a := range acks {
		h := fleetHost{HostAck: a, OnLatest: a.Version != "" && a.Version == k.KeyVersion.ID}
		h.Confirmed = off && a.Confirms(&k)
		out = append(out, h)
	}
	slices.SortStableFunc(out, func(a, b fleetHost) int {
		switch {
		case a.Confirmed == b.Confirmed:
			return 0
		case b.Confirmed:
			return -1
		}
		return 1
	})
	return out
}

// fleetRow is one root key's line of the Fleet page.
type fleetRow struct {
	Key           crk.Key
	Registrations int
	// Behind counts the registrations not on the latest version.
	Behind int
	// Versions are the versions registrations are on now, newest first.
	Versions []fleetVersionCount
	// OutOfUse is set for a key that no longer unwraps (suspended or destroyed): its volumes
	// must be locked out.
	OutOfUse bool
	// ConfirmedCount and WaitingCount split the hosts that reported on the key: for an
	// out-of-use key, those that confirmed the lockout and those that have not yet; for an
	// active key every host is waiting (nothing to confirm). Confirmed and Waiting name the
	// first fleetHostsShown of each.
	ConfirmedCount, WaitingCount int
	Confirmed, Waiting           []fleetHost
	// Selected is set for the key whose chart the page shows; ChartURL selects it, and
	// HostsURL opens its host table.
	Selected           bool
	ChartURL, HostsURL string
}

// Reporting is the number of hosts that reported on the key.
func (r fleetRow) Reporting() int { return r.ConfirmedCount + r.WaitingCount }

// MoreConfirmed is the number of confirmed hosts the row does not name.
func (r fleetRow) MoreConfirmed() int { return r.ConfirmedCount - len(r.Confirmed) }

// MoreWaiting is the number of waiting hosts the row does not name.
func (r fleetRow) MoreWaiting() int { return r.WaitingCount - len(r.Waiting) }

// outOfUse reports whether a key in state st must not be served: its volumes locked out
// (suspended or destroyed; an expired, deactivated key still unwraps).
func outOfUse(st crk.State) bool { return !st.Unwraps() }

// fleetRowFor summarises root key k from its current registrations and its hosts' latest
// acknowledgements (hosts as [fleetHosts] judges them).
func fleetRowFor(k crk.Key, regs []crk.Registration, hosts []fleetHost) fleetRow {
	row := fleetRow{Key: k, Registrations: len(regs), OutOfUse: outOfUse(k.State)}
	latest := k.KeyVersion.ID
	counts := map[string]int{}
	for _, r := range regs {
		counts[r.KeyVersion.ID]++
		if r.KeyVersion.ID != latest {
			row.Behind++
		}
	}
	for id, n := range counts {
		row.Versions = append(row.Versions, fleetVersionCount{ID: id, Count: n, Latest: id == latest})
	}
	// Newest first: the latest, then by the registrations' version dates.
	created := map[string]time.Time{}
	for _, r := range regs {
		created[r.KeyVersion.ID] = r.KeyVersion.CreationDate
	}
	slices.SortFunc(row.Versions, func(a, b fleetVersionCount) int {
		switch {
		case a.Latest:
			return -1
		case b.Latest:
			return 1
		}
		if c := created[b.ID].Compare(created[a.ID]); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	for _, h := range hosts {
		if h.Confirmed {
			row.ConfirmedCount++
			if len(row.Confirmed) < fleetHostsShown {
				row.Confirmed = append(row.Confirmed, h)
			}
		} else {
			row.WaitingCount++
			if len(row.Waiting) < fleetHostsShown {
				row.Waiting = append(row.Waiting, h)
			}
		}
	}
	return row
}

// fleetHostTable is one page of the selected key's hosts.
type fleetHostTable struct {
	Key      crk.Key
	OutOfUse bool
	Hosts    []fleetHost
	// Total counts the key's reporting hosts and Confirmed those that confirmed its lockout;
	// First and Last are the 1-based positions of the page's first and last host.
	Total, Confirmed, First, Last int
	Prev, Next                    string // the URLs of the neighbouring pages, "" when none
}

// fleetData is the Fleet page's data.
type fleetData struct {
	Rows        []fleetRow
	Total       int
	First, Last int    // the 1-based positions of the page's first and last key
	Prev, Next  string // the URLs of the neighbouring pages, "" when none
	// Chart and ChartNarrow are the selected key's chart, drawn for a wide and a narrow
	// screen (the style sheet shows one); nil when no key is selected or it failed.
	Chart, ChartNarrow *fleetChart
	ChartKey           *crk.Key
	// Truncated is set when the chart read only the newest fleetMaxEvents events of an action.
	Truncated bool
	// Hosts is the selected key's host table; nil when no key is selected.
	Hosts *fleetHostTable
	// Refused is set when the query was refused: the page shows only the message.
	Refused bool
}

// fleetFuncs are the template functions of the fleet page.
func fleetFuncs() template.FuncMap {
	return template.FuncMap{
		"shortVersion": chartVersionLabel,
		"fleetAdd":     func(a, b float64) float64 { return a + b },
		"fleetSub":     func(a, b float64) float64 { return a - b },
	}
}

// fleet shows, per root key of the instance, its registrations per version and how many
// are behind the latest, the hosts' lockout confirmations, and the selected key's chart and
// host table.
func (h *Handler) fleet(w http.ResponseWriter, r *http.Request, p *page) {
	p.Title = "Fleet"
	svc, ctx := p.Service(), p.Context()
	q := r.URL.Query()
	d := fleetData{}
	pageNo, msg := fleetPageParam(q, "page")
	if msg != "" {
		h.renderFleetError(w, p, http.StatusBadRequest, msg)
		return
	}
	hostsPage, msg := fleetPageParam(q, "hosts")
	if msg != "" {
		h.renderFleetError(w, p, http.StatusBadRequest, msg)
		return
	}
	keys, err := svc.ListKeys(ctx, crk.ListOptions{States: []crk.State{
		crk.StatePreActivation, crk.StateActive, crk.StateSuspended, crk.StateDeactivated, crk.StateDestroyed,
	}})
	if err != nil {
		p.Alert = h.message(err)
		p.Data = d
		h.render(w, http.StatusOK, "fleet", p)
		return
	}
	var roots []crk.Key
	for _, k := range keys {
		if k.Type == crk.RootKey {
			roots = append(roots, k)
		}
	}
	d.Total = len(roots)
	// The pages' links keep the key chosen with ?key=; without one, each page charts its
	// first key.
	chosen := q.Get("key")
	if last := max(1, (len(roots)+fleetKeysPerPage-1)/fleetKeysPerPage); pageNo+1 > last {
		// As the Keys page does: say so, and link to the last page.
		p.Alert = fmt.Sprintf("Page %d is past the last page of root keys (%d).", pageNo+1, last)
		d.Prev = fleetURL(p, last, chosen, 0)
		p.Data = d
		h.render(w, http.StatusOK, "fleet", p)
		return
	}
	start := min(pageNo*fleetKeysPerPage, len(roots))
	end := min(start+fleetKeysPerPage, len(roots))
	selected := chosen
	if selected == "" && end > start {
		selected = roots[start].ID
	}
	if start > 0 {
		d.Prev = fleetURL(p, pageNo, chosen, 0)
	}
	if end < len(roots) {
		d.Next = fleetURL(p, pageNo+2, chosen, 0)
	}
	d.First, d.Last = start+1, end

	// One listing of every registration of the instance (one audit event), grouped by key.
	regs, err := svc.ListRegistrations(ctx, crk.RegistrationFilter{})
	if err != nil {
		p.Alert = h.message(err)
	}
	byKey := map[string][]crk.Registration{}
	for _, reg := range regs {
		byKey[reg.KeyID] = append(byKey[reg.KeyID], reg)
	}
	hostsOf := map[string][]fleetHost{}
	for _, k := range roots[start:end] {
		acks, err := svc.HostAcks(ctx, k.ID)
		if err != nil && p.Alert == "" {
			p.Alert = h.message(err)
		}
		hosts := fleetHosts(k, acks)
		hostsOf[k.ID] = hosts
		row := fleetRowFor(k, byKey[k.ID], hosts)
		row.Selected = k.ID == selected
		row.ChartURL = fleetURL(p, pageNo+1, k.ID, 0) + "#fleet-chart-section"
		row.HostsURL = fleetURL(p, pageNo+1, k.ID, 0) + "#fleet-hosts"
		d.Rows = append(d.Rows, row)
	}

	status := http.StatusOK
	if selected != "" {
		var key *crk.Key
		for i := range roots {
			if roots[i].ID == selected {
				key = &roots[i]
			}
		}
		if key == nil {
			// Not a root key of this instance: say which, as the API would.
			k, err := svc.GetKeyMetadata(ctx, selected)
			switch {
			case err != nil:
				p.Alert, status = h.message(err), http.StatusNotFound
			default:
				p.Alert, status = fmt.Sprintf("Key %s is a %s key: only root keys protect volumes.", k.ID, k.Type), http.StatusBadRequest
			}
		} else {
			hosts, ok := hostsOf[key.ID]
			if !ok {
				acks, err := svc.HostAcks(ctx, key.ID)
				if err != nil && p.Alert == "" {
					p.Alert = h.message(err)
				}
				hosts = fleetHosts(*key, acks)
			}
			table, msg := fleetHostPage(p, pageNo+1, *key, hosts, hostsPage)
			if msg != "" && p.Alert == "" {
				p.Alert = msg
			}
			d.Hosts = &table
			wide, narrow, truncated, err := h.fleetChartOf(ctx, svc, *key, byKey[key.ID])
			if err != nil {
				p.Alert = h.message(err)
			} else {
				d.Chart, d.ChartNarrow, d.ChartKey, d.Truncated = &wide, &narrow, key, truncated
			}
		}
	}
	p.Data = d
	h.render(w, status, "fleet", p)
}

// fleetPageParam reads the 1-based page number q[name] ("" is the first page) as a 0-based
// index, or returns a message saying why it is not a page number.
func fleetPageParam(q url.Values, name string) (int, string) {
	s := q.Get(name)
	if s == "" {
		return 0, ""
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 1<<20 {
		return 0, fmt.Sprintf("%s=%s is not a page number (1, 2, …).", name, strconv.QuoteToGraphic(short(s)))
	}
	return n - 1, ""
}

// fleetHostPage returns page hostsPage (0-based) of key's hosts, on the Fleet page's page
// pageNo (1-based). Past the last page it returns no host, a link to the last page and a
// message saying so.
func fleetHostPage(p *page, pageNo int, key crk.Key, hosts []fleetHost, hostsPage int) (fleetHostTable, string) {
	t := fleetHostTable{Key: key, OutOfUse: outOfUse(key.State), Total: len(hosts)}
	for _, h := range hosts {
		if h.Confirmed {
			t.Confirmed++
		}
	}
	if last := max(1, (len(hosts)+fleetHostsPerPage-1)/fleetHostsPerPage); hostsPage+1 > last {
		t.Prev = fleetURL(p, pageNo, key.ID, last) + "#fleet-hosts"
		return t, fmt.Sprintf("Page %d of %s's hosts is past the last page (%d).", hostsPage+1, key.Name, last)
	}
	start := hostsPage * fleetHostsPerPage
	end := min(start+fleetHostsPerPage, len(hosts))
	t.Hosts = hosts[start:end]
	t.First, t.Last = start+1, end
	if start > 0 {
		t.Prev = fleetURL(p, pageNo, key.ID, hostsPage) + "#fleet-hosts"
	}
	if end < len(hosts) {
		t.Next = fleetURL(p, pageNo, key.ID, hostsPage+2) + "#fleet-hosts"
	}
	return t, ""
}

// renderFleetError answers a bad query with the Fleet page and the message.
func (h *Handler) renderFleetError(w http.ResponseWriter, p *page, status int, msg string) {
	p.Alert = msg
	p.Data = fleetData{Refused: true}
	h.render(w, status, "fleet", p)
}

// fleetChartOf reads key k's registration events and versions and lays out its chart for a
// wide and a narrow screen.
func (h *Handler) fleetChartOf(ctx context.Context, svc *crk.Service, k crk.Key, regs []crk.Registration) (wide, narrow fleetChart, truncated bool, err error) {
	var events []crk.Event
	for _, action := range []string{crk.ActionRegister, crk.ActionRegUpdate, crk.ActionRegDelete} {
		pg, err := svc.ListEvents(ctx, crk.EventFilter{KeyID: k.ID, Action: action, Limit: fleetMaxEvents})
		if err != nil {
			return fleetChart{}, fleetChart{}, false, err
		}
		events = append(events, pg.Events...)
		truncated = truncated || pg.Next != ""
	}
	versions, err := svc.ListVersions(ctx, k.ID)
	if err != nil {
		return fleetChart{}, fleetChart{}, false, err
	}
	hist := registrationHistory(events, regs, versions, k.KeyVersion.ID, k.CreationDate, h.now())
	return buildChart(hist, k.Name, wideChart), buildChart(hist, k.Name, narrowChart), truncated, nil
}

// fleetURL is the Fleet page's URL for a 1-based page number (0 or 1: the first), a
// selected key ("" for none) and a 1-based page of its host table (0 or 1: the first).
func fleetURL(p *page, pageNo int, key string, hostsPage int) string {
	v := url.Values{}
	if pageNo > 1 {
		v.Set("page", strconv.Itoa(pageNo))
	}
	if key != "" {
		v.Set("key", key)
	}
	if hostsPage > 1 {
		v.Set("hosts", strconv.Itoa(hostsPage))
	}
	u := p.Base() + "/fleet"
	if len(v) > 0 {
		u += "?" + v.Encode()
	}
	return u
}
