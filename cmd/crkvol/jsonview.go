package main

import (
	"encoding/json"
	"time"

	"crkvol/crk"
)

// jsonTime is a time as the CLI's JSON shows it: RFC 3339 in UTC to the second, the one time
// format of every output. Fields of this type carry the omitzero option, so that an absent
// time is left out rather than shown as "".
type jsonTime struct{ time.Time }

// MarshalJSON renders the time in RFC 3339 UTC to the second, or null for the zero time
// (which omitzero leaves out of structs).
func (t jsonTime) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	return json.Marshal(rfc3339(t.Time))
}

// attachmentJSON is an attachment as --json shows it: its time to the second.
type attachmentJSON struct {
	attachment
	Since jsonTime `json:"since,omitzero"`
}

// attachmentView returns rec as --json shows it, or nil for nil.
func attachmentView(rec *attachment) *attachmentJSON {
	if rec == nil {
		return nil
	}
	return &attachmentJSON{attachment: *rec, Since: jsonTime{rec.Since}}
}

// eventJSON is an audit event as --json shows it: its time to the second.
type eventJSON struct {
	crk.Event
	Time jsonTime `json:"time"`
}
