package crk

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The search, filter and sort queries of a key listing, with Key Protect's syntax (the
// search, filter and sort parameters of GET /api/v2/keys, as keyprotect-go-client's
// GetKeySearchQuery, FilterQueryBuilder and GetKeySortStr build them). Every parser refuses
// what it does not understand with ErrInvalidQuery, naming the part that is wrong.

// KeySearch is a parsed search query: keys whose name or alias contains Text (ignoring
// letter case), or equals it (Exact, letter case included), and the key whose id is Text
// (a whole id, in either letter case, with or without exact:: Key Protect's search finds a
// key "by display name, key ID or alias", and by key ID only on an exact match); Not
// selects the other keys.
type KeySearch struct {
	// Text is what is searched for, never empty.
	Text string
	// Not selects the keys that do not match.
	Not bool
	// Exact matches whole names or aliases only, with their letter case.
	Exact bool
	// Name and Alias restrict the search to names or to aliases; with neither (or both)
	// both are searched, and key ids.
	Name, Alias bool
}

// maxQuery bounds the length of a search, filter or sort query.
const maxQuery = 1024

// ParseKeySearch reads a search query: optional prefixes "not:", "exact:", "name:",
// "alias:" (in any order, each at most once) then the text; "escape:" ends the prefixes, so
// that the rest is text even if it starts like one ("escape:not:x" searches for "not:x").
// keyprotect-go-client v0.15.1 appends a comma to every search it sends; one trailing comma
// is therefore not part of the text.
func ParseKeySearch(q string) (*KeySearch, error) {
	if len(q) > maxQuery {
		return nil, fmt.Errorf("%w: search is longer than %d characters", ErrInvalidQuery, maxQuery)
	}
	q = strings.TrimSuffix(q, ",")
	s := &KeySearch{}
	seen := map[string]bool{}
	for {
		prefix, rest, ok := strings.Cut(q, ":")
		if !ok {
			break
		}
		var flag *bool
		switch prefix {
		case "not":
			flag = &s.Not
		case "exact":
			flag = &s.Exact
		case "name":
			flag = &s.Name
		case "alias":
			flag = &s.Alias
		case "escape":
		default:
			flag = nil
			prefix = ""
		}
		if prefix == "" {
			break // text with a colon in it
		}
		if seen[prefix] {
			return nil, fmt.Errorf("%w: search prefix %q is given twice", ErrInvalidQuery, prefix+":")
		}
		seen[prefix] = true
		q = rest
		if flag == nil { // escape:
			break
		}
		*flag = true
	}
	if q == "" {
		return nil, fmt.Errorf("%w: search has no text to search for", ErrInvalidQuery)
	}
	if err := checkLabel("search", q); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidQuery, err)
	}
	s.Text = q
	return s, nil
}

// String returns the query in the syntax ParseKeySearch reads (prefixes, then escape:
// and the text).
func (s *KeySearch) String() string {
	var b strings.Builder
	for _, p := range []struct {
		on   bool
		text string
	}{{s.Not, "not:"}, {s.Exact, "exact:"}, {s.Name, "name:"}, {s.Alias, "alias:"}} {
		if p.on {
			b.WriteString(p.text)
		}
	}
	b.WriteString("escape:")
	b.WriteString(s.Text)
	if strings.HasSuffix(s.Text, ",") {
		b.WriteString(",") // ParseKeySearch drops one trailing comma
	}
	return b.String()
}

// Matches reports whether a key with this id, name and these aliases is selected.
func (s *KeySearch) Matches(id, name string, aliases []string) bool {
	both := s.Name == s.Alias
	found := both && strings.EqualFold(id, s.Text)
	if !found && (both || s.Name) {
		found = s.match(name)
	}
	if !found && (both || s.Alias) {
		found = slices.ContainsFunc(aliases, s.match)
	}
	return found != s.Not
}

func (s *KeySearch) match(v string) bool {
	if s.Exact {
		return v == s.Text
	}
	return strings.Contains(strings.ToLower(v), strings.ToLower(s.Text))
}

// FilterOp is the comparison of a date filter.
type FilterOp int

// Filter comparisons: FilterEq when the value is a date alone, FilterNone for "none" (the
// key has no such date).
const (
	FilterEq FilterOp = iota
	FilterLT
	FilterLTE
	FilterGT
	FilterGTE
	FilterNone
)

var filterOps = map[string]FilterOp{"lt": FilterLT, "lte": FilterLTE, "gt": FilterGT, "gte": FilterGTE}

// Key properties a filter or a sort can name.
const (
	FieldID             = "id"
	FieldState          = "state"
	FieldExtractable    = "extractable"
	FieldImported       = "imported"
	FieldCreationDate   = "creationDate"
	FieldLastUpdateDate = "lastUpdateDate"
	FieldLastRotateDate = "lastRotateDate"
	FieldDeletionDate   = "deletionDate"
	FieldExpirationDate = "expirationDate"
)

var dateFields = []string{FieldCreationDate, FieldDeletionDate, FieldExpirationDate, FieldLastRotateDate, FieldLastUpdateDate}

// maxFilterTerms is how many terms a filter may give one property (Key Protect's limit).
const maxFilterTerms = 3

// KeyFilter is one term of a filter query: a date property compared with a date (or
// absent: FilterNone), the state among States, or extractable equal to Extractable.
type KeyFilter struct {
	// Field is a date field, FieldState or FieldExtractable.
	Field       string
	Op          FilterOp
	Time        time.Time
	States      []State
	Extractable bool
}

// ParseKeyFilter reads a filter query: terms separated by spaces, each property=value, where
// a date property (creationDate, deletionDate, expirationDate, lastRotateDate,
// lastUpdateDate) takes a date in RFC 3339 in double quotes, optionally after one of the
// operators lt:, lte:, gt:, gte:, or the word none (any letter case: the key has no such
// date); state takes a list of states separated by commas (0,1,2,3,5); extractable takes
// true or false (any letter case). A property may be given up to three times; a key must
// match every term. Dates compare at the precision the API shows them, whole seconds.
func ParseKeyFilter(q string) ([]KeyFilter, error) {
	if len(q) > maxQuery {
		return nil, fmt.Errorf("%w: filter is longer than %d characters", ErrInvalidQuery, maxQuery)
	}
	terms := strings.Fields(q)
	if len(terms) == 0 {
		return nil, fmt.Errorf("%w: filter has no term (want property=value)", ErrInvalidQuery)
	}
	count := map[string]int{}
	out := make([]KeyFilter, 0, len(terms))
	for _, term := range terms {
		field, value, ok := strings.Cut(term, "=")
		if !ok {
			return nil, fmt.Errorf("%w: filter term %q is not property=value", ErrInvalidQuery, term)
		}
		f := KeyFilter{Field: field}
		switch {
		case field == FieldState:
			states, err := parseStates(value)
			if err != nil {
				return nil, fmt.Errorf("%w: filter term %q: %w", ErrInvalidQuery, term, err)
			}
			f.States = states
		case field == FieldExtractable:
			switch strings.ToLower(value) {
			case "true":
				f.Extractable = true
			case "false":
			default:
				return nil, fmt.Errorf("%w: filter term %q: extractable must be true or false", ErrInvalidQuery, term)
			}
		case slices.Contains(dateFields, field):
			op, t, err := parseDateValue(value)
			if err != nil {
				return nil, fmt.Errorf("%w: filter term %q: %w", ErrInvalidQuery, term, err)
			}
			f.Op, f.Time = op, t
		default:
			return nil, fmt.Errorf("%w: filter term %q: unknown property %q (want one of %s, state, extractable)",
				ErrInvalidQuery, term, field, strings.Join(dateFields, ", "))
		}
		if count[field]++; count[field] > maxFilterTerms {
			return nil, fmt.Errorf("%w: filter gives %s more than %d times", ErrInvalidQuery, field, maxFilterTerms)
		}
		out = append(out, f)
	}
	return out, nil
}

func parseStates(v string) ([]State, error) {
	if v == "" {
		return nil, fmt.Errorf("no state given (want states such as 1,5)")
	}
	var out []State
	for p := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(p)
		st := State(n)
		if err != nil || !slices.Contains([]State{StatePreActivation, StateActive, StateSuspended, StateDeactivated, StateDestroyed}, st) || strings.HasPrefix(p, "+") {
			return nil, fmt.Errorf("state %q is not one of 0, 1, 2, 3, 5", p)
		}
		if slices.Contains(out, st) {
			return nil, fmt.Errorf("state %d is given twice", n)
		}
		out = append(out, st)
	}
	return out, nil
}

func parseDateValue(v string) (FilterOp, time.Time, error) {
	if strings.EqualFold(v, "none") {
		return FilterNone, time.Time{}, nil
	}
	const quoted = "the date must be in double quotes, such as \"2026-01-02T15:04:05Z\""
	if _, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return 0, time.Time{}, errors.New(quoted)
	}
	op := FilterEq
	if name, rest, ok := strings.Cut(v, ":"); ok && !strings.HasPrefix(v, `"`) {
		o, known := filterOps[name]
		if !known {
			return 0, time.Time{}, fmt.Errorf("unknown operator %q (want lt, lte, gt or gte)", name)
		}
		op, v = o, rest
	}
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return 0, time.Time{}, errors.New(quoted)
	}
	t, err := time.Parse(time.RFC3339Nano, v[1:len(v)-1])
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("%s is not an RFC 3339 date", v)
	}
	return op, t.UTC(), nil
}

// String returns the term in the syntax ParseKeyFilter reads.
func (f KeyFilter) String() string {
	switch f.Field {
	case FieldState:
		parts := make([]string, len(f.States))
		for i, s := range f.States {
			parts[i] = strconv.Itoa(int(s))
		}
		return f.Field + "=" + strings.Join(parts, ",")
	case FieldExtractable:
		return f.Field + "=" + strconv.FormatBool(f.Extractable)
	}
	if f.Op == FilterNone {
		return f.Field + "=none"
	}
	date := `"` + f.Time.UTC().Format(time.RFC3339Nano) + `"`
	for name, op := range filterOps {
		if op == f.Op {
			return f.Field + "=" + name + ":" + date
		}
	}
	return f.Field + "=" + date
}

// Matches reports whether k satisfies the term.
func (f KeyFilter) Matches(k *Key) bool {
	switch f.Field {
	case FieldState:
		return slices.Contains(f.States, k.State)
	case FieldExtractable:
		return k.Extractable == f.Extractable
	}
	t := keyDate(k, f.Field)
	if f.Op == FilterNone || t.IsZero() {
		return f.Op == FilterNone && t.IsZero()
	}
	c := t.Truncate(time.Second).Compare(f.Time)
	switch f.Op {
	case FilterLT:
		return c < 0
	case FilterLTE:
		return c <= 0
	case FilterGT:
		return c > 0
	case FilterGTE:
		return c >= 0
	}
	return c == 0
}

// keyDate returns the date field of k (zero when the key has none).
func keyDate(k *Key, field string) time.Time {
	switch field {
	case FieldCreationDate:
		return k.CreationDate
	case FieldLastUpdateDate:
		return k.LastUpdateDate
	case FieldLastRotateDate:
		return k.LastRotateDate
	case FieldDeletionDate:
		return k.DeletionDate
	case FieldExpirationDate:
		return k.ExpirationDate
	}
	return time.Time{}
}

// KeySort is one field of a sort query, ascending unless Desc.
type KeySort struct {
	Field string
	Desc  bool
}

var sortFields = []string{FieldID, FieldState, FieldExtractable, FieldImported, FieldCreationDate,
	FieldLastUpdateDate, FieldLastRotateDate, FieldDeletionDate, FieldExpirationDate}

// ParseKeySort reads a sort query: key properties separated by commas, each ascending or,
// after "-", descending; the first decides, the next break ties. The properties are id,
// state, extractable, imported, creationDate, lastUpdateDate, lastRotateDate, deletionDate
// and expirationDate, each at most once. A key without the date sorts before those with it
// (after them, descending).
func ParseKeySort(q string) ([]KeySort, error) {
	if len(q) > maxQuery {
		return nil, fmt.Errorf("%w: sort is longer than %d characters", ErrInvalidQuery, maxQuery)
	}
	if q == "" {
		return nil, fmt.Errorf("%w: sort names no property", ErrInvalidQuery)
	}
	var out []KeySort
	for p := range strings.SplitSeq(q, ",") {
		s := KeySort{Field: strings.TrimPrefix(p, "-"), Desc: strings.HasPrefix(p, "-")}
		if !slices.Contains(sortFields, s.Field) {
			return nil, fmt.Errorf("%w: sort property %q is not one of %s", ErrInvalidQuery, p, strings.Join(sortFields, ", "))
		}
		if slices.ContainsFunc(out, func(o KeySort) bool { return o.Field == s.Field }) {
			return nil, fmt.Errorf("%w: sort property %q is given twice", ErrInvalidQuery, s.Field)
		}
		out = append(out, s)
	}
	return out, nil
}

// String returns the field in the syntax ParseKeySort reads.
func (s KeySort) String() string {
	if s.Desc {
		return "-" + s.Field
	}
	return s.Field
}

// compareKeys orders two keys by the sort fields, then by creation date and id (so that
// pages of a listing never overlap).
func compareKeys(a, b *Key, by []KeySort) int {
	for _, s := range by {
		var c int
		switch s.Field {
		case FieldID:
			c = strings.Compare(a.ID, b.ID)
		case FieldState:
			c = cmp.Compare(a.State, b.State)
		case FieldExtractable:
			c = compareBool(a.Extractable, b.Extractable)
		case FieldImported:
			c = compareBool(a.Imported, b.Imported)
		default:
			c = keyDate(a, s.Field).Compare(keyDate(b, s.Field))
		}
		if s.Desc {
			c = -c
		}
		if c != 0 {
			return c
		}
	}
	return cmp.Or(a.CreationDate.Compare(b.CreationDate), strings.Compare(a.ID, b.ID))
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// selects reports whether a listing with these options includes k (its state aside).
func (o *ListOptions) selects(k *Key) bool {
	if o.Extractable != nil && k.Extractable != *o.Extractable {
		return false
	}
	if o.Search != nil && !o.Search.Matches(k.ID, k.Name, k.Aliases) {
		return false
	}
	for _, f := range o.Filter {
		if !f.Matches(k) {
			return false
		}
	}
	return true
}

// filtersState reports whether the filter selects by state, in which case a listing without
// States considers keys in every state.
func (o *ListOptions) filtersState() bool {
	return slices.ContainsFunc(o.Filter, func(f KeyFilter) bool { return f.Field == FieldState })
}
