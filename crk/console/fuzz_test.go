package console

import (
	"net/url"
	"testing"
)

// FuzzParseKeyFilter: any query parses without panicking, and the filter's own query string
// parses back to the same filter.
func FuzzParseKeyFilter(f *testing.F) {
	for _, s := range []string{"", "name=db&state=active&type=root&page=2", "state=gone", "page=-1", "name=%00", "page=99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, _ := parseKeyFilter(q)
		s := flt.query(flt.Page)
		q2, err := url.ParseQuery(trimQ(s))
		if err != nil {
			t.Fatalf("query %q of %+v does not parse: %v", s, flt, err)
		}
		again, err := parseKeyFilter(q2)
		if err != nil {
			t.Fatalf("query %q of %+v refused: %v", s, flt, err)
		}
		if again != flt {
			t.Fatalf("round trip: %+v, then %+v", flt, again)
		}
	})
}

// FuzzParseEventFilter: any query parses without panicking; the filter's query string
// parses back to the same filter.
func FuzzParseEventFilter(f *testing.F) {
	for _, s := range []string{"", "key=abc&action=kms.secrets.create&outcome=failure&from=2026-12-01T09:00&to=2026-12-01T10:00:30",
		"cursor=00112233445566778899aabbccddeeff", "from=2026-13-01T00:00", "outcome=maybe", "key=%20a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, perr := parseEventFilter(q)
		if !flt.from.IsZero() && !flt.to.IsZero() && !flt.from.Before(flt.to) && perr == nil {
			t.Fatalf("an empty time range accepted: %+v", flt)
		}
		if perr != nil {
			return
		}
		s := flt.query(flt.Cursor)
		q2, err := url.ParseQuery(trimQ(s))
		if err != nil {
			t.Fatalf("query %q does not parse: %v", s, err)
		}
		again, err := parseEventFilter(q2)
		if err != nil || again != flt {
			t.Fatalf("round trip of %q: %+v, then %+v (%v)", raw, flt, again, err)
		}
	})
}

func trimQ(s string) string {
	if len(s) > 0 && s[0] == '?' {
		return s[1:]
	}
	return s
}
