package console

import (
	"net/http"

	"crkvol/crk"
)

// eventsPerPage is the events page's page size.
const eventsPerPage = 50

// eventsData is the events page's data.
type eventsData struct {
	Filter  eventFilter
	Events  []crk.Event
	Actions []string
	// Next is the link to the following (older) page, "" when none; First the link back to
	// the first page when this is a later one.
	Next, First string
	// Invalid is true when the filter could not be read: no events are listed.
	Invalid bool
}

// events shows the instance's audit trail, newest first.
func (h *Handler) events(w http.ResponseWriter, r *http.Request, p *page) {
	p.Title = "Events"
	f, err := parseEventFilter(r.URL.Query())
	d := eventsData{Filter: f, Actions: eventActions()}
	if err != nil {
		// A filter the user did not get must not show events as if it applied.
		p.Alert = sentence(err.Error()) + ". No events are shown until the filter is corrected."
		d.Invalid = true
		p.Data = d
		h.render(w, http.StatusBadRequest, "events", p)
		return
	}
	ef := f.crk()
	ef.Limit = eventsPerPage
	pg, err := p.svc.ListEvents(p.ctx, ef)
	if err != nil {
		if p.Alert == "" {
			p.Alert = h.message(err)
		}
	} else {
		d.Events = pg.Events
		base := p.Base() + "/events"
		if pg.Next != "" {
			d.Next = base + f.query(pg.Next)
		}
		if f.Cursor != "" {
			d.First = base + f.query("")
		}
	}
	p.Data = d
	h.render(w, http.StatusOK, "events", p)
}
