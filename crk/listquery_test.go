package crk

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseKeySearch(t *testing.T) {
	for _, c := range []struct {
		q    string
		want KeySearch
		err  string
	}{
		{q: "web", want: KeySearch{Text: "web"}},
		{q: "web,", want: KeySearch{Text: "web"}}, // the comma keyprotect-go-client appends
		{q: "exact:web-root", want: KeySearch{Text: "web-root", Exact: true}},
		{q: "not:exact:name:web,", want: KeySearch{Text: "web", Not: true, Exact: true, Name: true}},
		{q: "alias:exact:not:web", want: KeySearch{Text: "web", Not: true, Exact: true, Alias: true}},
		{q: "escape:not:web", want: KeySearch{Text: "not:web"}},
		{q: "not:escape:exact:x", want: KeySearch{Text: "exact:x", Not: true}},
		{q: "a:b", want: KeySearch{Text: "a:b"}},
		{q: "name:alias:x", want: KeySearch{Text: "x", Name: true, Alias: true}},
		{q: "", err: "search has no text"},
		{q: ",", err: "search has no text"},
		{q: "exact:", err: "search has no text"},
		{q: "escape:", err: "search has no text"},
		{q: "not:not:x", err: `search prefix "not:" is given twice`},
		{q: "x\x00y", err: "control character"},
	} {
		got, err := ParseKeySearch(c.q)
		if c.err != "" {
			require.ErrorIs(t, err, ErrInvalidQuery, c.q)
			assert.Contains(t, err.Error(), c.err, c.q)
			continue
		}
		require.NoError(t, err, c.q)
		assert.Equal(t, c.want, *got, c.q)
		again, err := ParseKeySearch(got.String())
		require.NoError(t, err, c.q)
		assert.Equal(t, got, again, c.q)
	}
}

func TestKeySearchMatches(t *testing.T) {
	for _, c := range []struct {
		q       string
		id      string
		name    string
		aliases []string
		want    bool
	}{
		// A key id is found whole (either letter case), not by a part of it, nor with a
		// name: or alias: scope.
		{"0f5e6c1a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "0f5e6c1a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "db", nil, true},
		{"exact:0F5E6C1A-1B2C-4D3E-8F40-5A6B7C8D9E0F", "0f5e6c1a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "db", nil, true},
		{"0f5e6c1a", "0f5e6c1a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "db", nil, false},
		{"name:0f5e6c1a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "0f5e6c1a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "db", nil, false},
		{"alias:0f5e6c1a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "0f5e6c1a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "db", nil, false},
		{"not:0f5e6c1a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "0f5e6c1a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "db", nil, false},
		{"web", "k1", "Web-Root", nil, true},
		{"web", "k1", "db", []string{"my-web"}, true},
		{"web", "k1", "db", []string{"db-alias"}, false},
		{"exact:web", "k1", "web-root", nil, false},
		{"exact:web", "k1", "web", nil, true},
		{"exact:Web", "k1", "web", nil, false},
		{"name:web", "k1", "db", []string{"web"}, false},
		{"alias:web", "k1", "web", []string{"db"}, false},
		{"alias:web", "k1", "db", []string{"web"}, true},
		{"not:web", "k1", "web", nil, false},
		{"not:web", "k1", "db", nil, true},
		{"not:alias:exact:web", "k1", "web", []string{"web"}, false},
		{"not:alias:exact:web", "k1", "web", nil, true},
	} {
		s, err := ParseKeySearch(c.q)
		require.NoError(t, err)
		assert.Equal(t, c.want, s.Matches(c.id, c.name, c.aliases), "%s on %s %s %v", c.q, c.id, c.name, c.aliases)
	}
}

func TestParseKeyFilter(t *testing.T) {
	d := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		q    string
		want []KeyFilter
		err  string
	}{
		{q: ` creationDate=gte:"2026-06-01T12:00:00Z"`, want: []KeyFilter{{Field: FieldCreationDate, Op: FilterGTE, Time: d}}},
		{q: `lastUpdateDate="2026-06-01T14:00:00+02:00" lastRotateDate=none`, want: []KeyFilter{
			{Field: FieldLastUpdateDate, Op: FilterEq, Time: d}, {Field: FieldLastRotateDate, Op: FilterNone}}},
		{q: `deletionDate=NONE expirationDate=lt:"2026-06-01T12:00:00.000000000Z"`, want: []KeyFilter{
			{Field: FieldDeletionDate, Op: FilterNone}, {Field: FieldExpirationDate, Op: FilterLT, Time: d}}},
		{q: `state=1,5 extractable=TRUE`, want: []KeyFilter{
			{Field: FieldState, States: []State{StateActive, StateDestroyed}}, {Field: FieldExtractable, Extractable: true}}},
		{q: `creationDate=gt:"2026-06-01T12:00:00Z" creationDate=lte:"2026-06-01T12:00:00Z" creationDate=none`, want: []KeyFilter{
			{Field: FieldCreationDate, Op: FilterGT, Time: d}, {Field: FieldCreationDate, Op: FilterLTE, Time: d}, {Field: FieldCreationDate, Op: FilterNone}}},
		{q: "", err: "filter has no term"},
		{q: "   ", err: "filter has no term"},
		{q: "state", err: `filter term "state" is not property=value`},
		{q: "name=web", err: `unknown property "name"`},
		{q: "state=", err: "no state given"},
		{q: "state=1,4", err: `state "4" is not one of`},
		{q: "state=1,,2", err: `state "" is not one of`},
		{q: "state=1,1", err: "state 1 is given twice"},
		{q: "state=+1", err: `state "+1" is not one of`},
		{q: "extractable=yes", err: "extractable must be true or false"},
		{q: `creationDate=2026-06-01T12:00:00Z`, err: "double quotes"},
		{q: `creationDate=ge:"2026-06-01T12:00:00Z"`, err: `unknown operator "ge"`},
		{q: `creationDate=gt:"yesterday"`, err: "is not an RFC 3339 date"},
		{q: `creationDate="`, err: "double quotes"},
		{q: `state=1 state=2 state=3 state=5`, err: "filter gives state more than 3 times"},
	} {
		got, err := ParseKeyFilter(c.q)
		if c.err != "" {
			require.ErrorIs(t, err, ErrInvalidQuery, c.q)
			assert.Contains(t, err.Error(), c.err, c.q)
			continue
		}
		require.NoError(t, err, c.q)
		assert.Equal(t, c.want, got, c.q)
		again, err := ParseKeyFilter(formatFilter(got))
		require.NoError(t, err, c.q)
		assert.Equal(t, got, again, c.q)
	}
}

func formatFilter(fs []KeyFilter) string {
	var parts []string
	for _, f := range fs {
		parts = append(parts, f.String())
	}
	return " " + strings.Join(parts, " ")
}

func TestKeyFilterMatches(t *testing.T) {
	d := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	k := &Key{State: StateActive, CreationDate: d.Add(500 * time.Millisecond), LastUpdateDate: d.Add(time.Hour)}
	for _, c := range []struct {
		q    string
		want bool
	}{
		{`creationDate="2026-06-01T12:00:00Z"`, true}, // whole seconds, as the API shows it
		{`creationDate=gt:"2026-06-01T12:00:00Z"`, false},
		{`creationDate=gte:"2026-06-01T12:00:00Z"`, true},
		{`creationDate=lt:"2026-06-01T12:00:01Z"`, true},
		{`creationDate=lte:"2026-06-01T11:59:59Z"`, false},
		{`creationDate=none`, false},
		{`lastRotateDate=none`, true},
		{`lastRotateDate=lt:"2030-01-01T00:00:00Z"`, false}, // no date: no comparison holds
		{`lastUpdateDate=gt:"2026-06-01T12:59:59Z" lastUpdateDate=lt:"2026-06-01T13:00:01Z"`, true},
		{`state=2,3`, false},
		{`state=0,1`, true},
		{`extractable=false`, true},
		{`extractable=true`, false},
	} {
		fs, err := ParseKeyFilter(c.q)
		require.NoError(t, err, c.q)
		opts := ListOptions{Filter: fs}
		assert.Equal(t, c.want, opts.selects(k), c.q)
	}
}

func TestParseKeySort(t *testing.T) {
	for _, c := range []struct {
		q    string
		want []KeySort
		err  string
	}{
		{q: "id", want: []KeySort{{Field: FieldID}}},
		{q: "-creationDate,state,-extractable", want: []KeySort{{FieldCreationDate, true}, {FieldState, false}, {FieldExtractable, true}}},
		{q: "imported,lastUpdateDate,lastRotateDate,deletionDate,expirationDate", want: []KeySort{
			{Field: FieldImported}, {Field: FieldLastUpdateDate}, {Field: FieldLastRotateDate}, {Field: FieldDeletionDate}, {Field: FieldExpirationDate}}},
		{q: "", err: "sort names no property"},
		{q: "name", err: `sort property "name" is not one of`},
		{q: "id,", err: `sort property "" is not one of`},
		{q: "--id", err: `sort property "--id" is not one of`},
		{q: "id,-id", err: `sort property "id" is given twice`},
	} {
		got, err := ParseKeySort(c.q)
		if c.err != "" {
			require.ErrorIs(t, err, ErrInvalidQuery, c.q)
			assert.Contains(t, err.Error(), c.err, c.q)
			continue
		}
		require.NoError(t, err, c.q)
		assert.Equal(t, c.want, got, c.q)
	}
}

// TestListKeysQuery: ListKeys applies extractable, search, filter and sort, and pages the
// result in its order.
func TestListKeysQuery(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		web := f.root(t, "web-root")
		f.clock.Advance(time.Minute)
		db := f.root(t, "db-root")
		f.clock.Advance(time.Minute)
		std, err := f.svc.CreateKey(f.ctx, CreateOptions{Name: "web-standard", Type: StandardKey})
		require.NoError(t, err)
		f.clock.Advance(time.Minute)
		gone := f.root(t, "gone")
		_, err = f.svc.DeleteKey(f.ctx, gone.ID, DeleteOptions{})
		require.NoError(t, err)
		f.clock.Advance(RotationInterval)
		_, err = f.svc.RotateKey(f.ctx, db.ID, nil)
		require.NoError(t, err)
		rotatedAt := f.clock.Now().UTC().Format(time.RFC3339)

		ids := func(opts ListOptions) []string {
			t.Helper()
			ks, err := f.svc.ListKeys(f.ctx, opts)
			require.NoError(t, err)
			var out []string
			for _, k := range ks {
				out = append(out, k.ID)
			}
			return out
		}
		search := func(q string) *KeySearch {
			s, err := ParseKeySearch(q)
			require.NoError(t, err)
			return s
		}
		filter := func(q string) []KeyFilter {
			fs, err := ParseKeyFilter(q)
			require.NoError(t, err)
			return fs
		}
		sortBy := func(q string) []KeySort {
			s, err := ParseKeySort(q)
			require.NoError(t, err)
			return s
		}
		yes, no := true, false
		for _, c := range []struct {
			name string
			opts ListOptions
			want []string
		}{
			{"default", ListOptions{}, []string{web.ID, db.ID, std.ID}},
			{"extractable", ListOptions{Extractable: &yes}, []string{std.ID}},
			{"root keys", ListOptions{Extractable: &no}, []string{web.ID, db.ID}},
			{"search", ListOptions{Search: search("WEB")}, []string{web.ID, std.ID}},
			{"search not", ListOptions{Search: search("not:web")}, []string{db.ID}},
			{"search exact", ListOptions{Search: search("exact:web-root")}, []string{web.ID}},
			{"filter rotated", ListOptions{Filter: filter(`lastRotateDate=gte:"` + rotatedAt + `"`)}, []string{db.ID}},
			{"filter never rotated", ListOptions{Filter: filter(`lastRotateDate=none`)}, []string{web.ID, std.ID}},
			{"filter never updated", ListOptions{Filter: filter(`lastUpdateDate=none`)}, []string{web.ID, std.ID}},
			{"filter state reaches deleted keys", ListOptions{Filter: filter(`state=5`)}, []string{gone.ID}},
			{"filter state and deletion date", ListOptions{Filter: filter(`state=1,5 deletionDate=none`)}, []string{web.ID, db.ID, std.ID}},
			{"states and filter", ListOptions{States: []State{StateDestroyed}, Filter: filter(`deletionDate=none`)}, nil},
			{"sort", ListOptions{Sort: sortBy("-creationDate")}, []string{std.ID, db.ID, web.ID}},
			{"sort rotated first", ListOptions{Sort: sortBy("-lastRotateDate")}, []string{db.ID, web.ID, std.ID}},
			{"sort extractable", ListOptions{Sort: sortBy("-extractable,-creationDate")}, []string{std.ID, db.ID, web.ID}},
			{"sort pages", ListOptions{Sort: sortBy("-creationDate"), Offset: 1, Limit: 1}, []string{db.ID}},
		} {
			assert.Equal(t, c.want, ids(c.opts), c.name)
		}
		sorted := ids(ListOptions{Sort: sortBy("id")})
		assert.True(t, slices.IsSorted(sorted))
	})
}

// FuzzKeyQuery: the query parsers never panic, refuse only with ErrInvalidQuery, and what
// they accept reads back the same from its String form.
func FuzzKeyQuery(f *testing.F) {
	for _, s := range []string{"web,", "not:exact:alias:x", "escape:not:", ` creationDate=gte:"2026-06-01T12:00:00Z" state=1,5`,
		"lastRotateDate=none extractable=false", "-creationDate,id", "state=1 state=2 state=3 state=5", `x="`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		if s, err := ParseKeySearch(q); err != nil {
			require.ErrorIs(t, err, ErrInvalidQuery)
		} else {
			again, err := ParseKeySearch(s.String())
			require.NoError(t, err)
			require.Equal(t, s, again)
		}
		if fs, err := ParseKeyFilter(q); err != nil {
			require.ErrorIs(t, err, ErrInvalidQuery)
		} else {
			again, err := ParseKeyFilter(formatFilter(fs))
			require.NoError(t, err)
			require.Equal(t, len(fs), len(again))
			for i := range fs {
				require.Equal(t, fs[i].String(), again[i].String())
			}
		}
		if ss, err := ParseKeySort(q); err != nil {
			require.ErrorIs(t, err, ErrInvalidQuery)
		} else {
			var parts []string
			for _, s := range ss {
				parts = append(parts, s.String())
			}
			again, err := ParseKeySort(strings.Join(parts, ","))
			require.NoError(t, err)
			require.Equal(t, ss, again)
		}
	})
}
