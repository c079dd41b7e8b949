package console

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"crkvol/crk"
)

// filterStates are the states the Keys table filters by.
func filterStates() []string { return []string{"active", "suspended", "deactivated", "destroyed"} }

// keyFilter is the Keys table's query: name substring, state, type and page number.
type keyFilter struct {
	Name  string
	State string // "" (every state but destroyed) or one of filterStates
	Type  string // "", "root" or "standard"
	Page  int    // from 0
}

// maxFilterName caps the name filter (key names have at most 90 characters).
const maxFilterName = 90

// maxPage caps the page number of a query.
const maxPage = 1 << 20

// parseKeyFilter reads a Keys table query. A bad parameter is an error naming it; the
// filter returned then holds the parameters that were good.
func parseKeyFilter(q url.Values) (keyFilter, error) {
	var f keyFilter
	var errs []string
	f.Name = strings.TrimSpace(q.Get("name"))
	if len(f.Name) > maxFilterName {
		errs = append(errs, fmt.Sprintf("the name filter has more than %d characters", maxFilterName))
		f.Name = ""
	}
	switch s := q.Get("state"); s {
	case "", "active", "suspended", "deactivated", "destroyed":
		f.State = s
	default:
		errs = append(errs, fmt.Sprintf("unknown state %q (active, suspended, deactivated or destroyed)", short(s)))
	}
	switch t := q.Get("type"); t {
	case "", string(crk.RootKey), string(crk.StandardKey):
		f.Type = t
	default:
		errs = append(errs, fmt.Sprintf("unknown key type %q (root or standard)", short(t)))
	}
	if s := q.Get("page"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxPage {
			errs = append(errs, fmt.Sprintf("page %q is not a page number", short(s)))
		} else {
			f.Page = n - 1
		}
	}
	if len(errs) > 0 {
		return f, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return f, nil
}

// short shortens a value quoted in a message to its first 40 bytes, cut at a rune boundary
// (an invalid byte counts as one rune). Messages quote it with %q, which escapes what is not
// printable or not UTF-8.
func short(s string) string {
	const max = 40
	if len(s) <= max {
		return s
	}
	cut := 0
	for cut < len(s) {
		_, n := utf8.DecodeRuneInString(s[cut:])
		if cut+n > max {
			break
		}
		cut += n
	}
	return s[:cut] + "…"
}

// states are the key states ListKeys must return for the filter.
func (f keyFilter) states() []crk.State {
	switch f.State {
	case "active":
		return []crk.State{crk.StateActive}
	case "suspended":
		return []crk.State{crk.StateSuspended}
	case "deactivated":
		return []crk.State{crk.StateDeactivated}
	case "destroyed":
		return []crk.State{crk.StateDestroyed}
	}
	return nil
}

// match reports whether k passes the name and type filters.
func (f keyFilter) match(k *crk.Key) bool {
	if f.Type != "" && string(k.Type) != f.Type {
		return false
	}
	return f.Name == "" || strings.Contains(strings.ToLower(k.Name), strings.ToLower(f.Name))
}

// query is the filter's query string for page (from 0).
func (f keyFilter) query(page int) string {
	q := url.Values{}
	if f.Name != "" {
		q.Set("name", f.Name)
	}
	if f.State != "" {
		q.Set("state", f.State)
	}
	if f.Type != "" {
		q.Set("type", f.Type)
	}
	if page > 0 {
		q.Set("page", strconv.Itoa(page+1))
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// eventFilter is the events page's query.
type eventFilter struct {
	KeyID   string
	Action  string
	Outcome string // "", "success" or "failure"
	// From and To are the time range in the form of a datetime-local control, UTC.
	From, To string
	from, to time.Time
	Cursor   string
}

// dateTimeLocal is the layout of a datetime-local control's value, read as UTC.
const dateTimeLocal = "2006-01-02T15:04"

// eventActions are the actions the events page filters by.
func eventActions() []string {
	return []string{
		crk.ActionCreate, crk.ActionRead, crk.ActionReadMetadata, crk.ActionList, crk.ActionListVersions,
		crk.ActionListRegs, crk.ActionRotate, crk.ActionWrap, crk.ActionUnwrap, crk.ActionRewrap,
		crk.ActionDisable, crk.ActionEnable, crk.ActionDelete, crk.ActionRestore, crk.ActionPurge,
		crk.ActionSync, crk.ActionExpire, crk.ActionPolicyWrite, crk.ActionRegister, crk.ActionRegUpdate,
		crk.ActionRegDelete, crk.ActionPrune, crk.ActionRotationHook, crk.ActionMasterKeyRotate,
		crk.ActionDefault, crk.ActionEventAck, crk.ActionForgetAck,
		crk.ActionAliasCreate, crk.ActionAliasDelete, crk.ActionKeyRingCreate, crk.ActionKeyRingList,
		crk.ActionKeyRingDelete, crk.ActionPatch,
		crk.ActionImportTokenCreate, crk.ActionImportTokenRead, crk.ActionImportTokenStatus,
		crk.ActionInstancePolicyRead, crk.ActionInstancePolicyWrite, crk.ActionSetKeyForDeletion, crk.ActionUnsetKeyForDeletion,
	}
}

// maxKeyID caps the key id filter (key ids are UUIDs).
const maxKeyID = 64

// parseEventTime reads a datetime-local value (seconds optional) as UTC.
func parseEventTime(s string) (time.Time, error) {
	for _, layout := range []string{dateTimeLocal, "2006-01-02T15:04:05"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a date and time like 2026-12-03T15:04", short(s))
}

// parseEventFilter reads an events page query. A bad parameter is an error naming it; the
// filter returned then holds the parameters that were good.
func parseEventFilter(q url.Values) (eventFilter, error) {
	var f eventFilter
	var errs []string
	f.KeyID = strings.TrimSpace(q.Get("key"))
	if len(f.KeyID) > maxKeyID || strings.ContainsFunc(f.KeyID, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
		errs = append(errs, fmt.Sprintf("key id %q is not a key id", short(f.KeyID)))
		f.KeyID = ""
	}
	if a := q.Get("action"); a != "" {
		if slices.Contains(eventActions(), a) {
			f.Action = a
		} else {
			errs = append(errs, fmt.Sprintf("unknown action %q", short(a)))
		}
	}
	switch o := q.Get("outcome"); o {
	case "", crk.OutcomeSuccess, crk.OutcomeFailure:
		f.Outcome = o
	default:
		errs = append(errs, fmt.Sprintf("unknown outcome %q (success or failure)", short(o)))
	}
	if s := q.Get("from"); s != "" {
		if t, err := parseEventTime(s); err != nil {
			errs = append(errs, "from: "+err.Error())
		} else {
			f.From, f.from = s, t
		}
	}
	if s := q.Get("to"); s != "" {
		if t, err := parseEventTime(s); err != nil {
			errs = append(errs, "to: "+err.Error())
		} else {
			f.To, f.to = s, t
		}
	}
	if !f.from.IsZero() && !f.to.IsZero() && !f.from.Before(f.to) {
		errs = append(errs, "the time range is empty: from must be before to")
	}
	if c := q.Get("cursor"); c != "" {
		if len(c) == 32 && strings.Trim(c, "0123456789abcdef") == "" {
			f.Cursor = c
		} else {
			errs = append(errs, fmt.Sprintf("cursor %q is not a page position", short(c)))
		}
	}
	if len(errs) > 0 {
		return f, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return f, nil
}

// crk is the filter as crk takes it.
func (f eventFilter) crk() crk.EventFilter {
	return crk.EventFilter{KeyID: f.KeyID, Action: f.Action, Outcome: f.Outcome, From: f.from, To: f.to, Cursor: f.Cursor}
}

// query is the filter's query string with cursor.
func (f eventFilter) query(cursor string) string {
	q := url.Values{}
	for k, v := range map[string]string{"key": f.KeyID, "action": f.Action, "outcome": f.Outcome, "from": f.From, "to": f.To, "cursor": cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}
