// This file is owned by the "browser" helper of issue #21, who replaces it (with fleet.html
// and the chart code). The console's API it builds on:
//
//   - the route GET /ui/i/{instance}/fleet calls h.fleet with a *page whose Service() is the
//     instance's *crk.Service and Context() the request's context (initiator set);
//   - h.render(w, http.StatusOK, "fleet", p) renders templates/fleet.html in the layout,
//     with p.Title set and the page's own data in p.Data;
//   - templates/fleet.html defines "content" (and may define "title"); funcs available are
//     those of funcs() in render.go plus fleetFuncs() below;
//   - h.message(err) turns a crk error into the readable text to put in p.Alert.

package console

import (
	"html/template"
	"net/http"

	"crkvol/crk"
)

// fleetFuncs are template functions of the fleet page.
func fleetFuncs() template.FuncMap { return template.FuncMap{} }

// fleetData is the fleet page's data.
type fleetData struct {
	Keys []crk.Key
}

// fleet shows the instance's keys across the fleet.
func (h *Handler) fleet(w http.ResponseWriter, r *http.Request, p *page) {
	p.Title = "Fleet"
	ks, err := p.Service().ListKeys(p.Context(), crk.ListOptions{})
	if err != nil {
		p.Alert = h.message(err)
	}
	p.Data = fleetData{Keys: ks}
	h.render(w, http.StatusOK, "fleet", p)
}
