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
}

// events shows the instance's audit trail, newest first.
func (h *Handler) events(w http.ResponseWriter, r *http.Request, p *page) {
	p.Title = "Events"
	f, err := parseEventFilter(r.URL.Query())
	if err != nil {
		p.Alert = sentence(err.Error())
	}
	d := eventsData{Filter: f, Actions: eventActions()}
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
