package console

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"crkvol/crk"
)

// keysPerPage is the Keys table's page size.
const keysPerPage = 50

// keyRow is one row of the Keys table.
type keyRow struct {
	*crk.Key
	Registrations int
}

// keysData is the Keys page's data.
type keysData struct {
	Filter keyFilter
	Rows   []keyRow
	// Total is the number of keys the filter matched; First and Last number the rows shown.
	Total, First, Last int
	// Prev and Next are the links to the neighbouring pages ("" when none).
	Prev, Next string
	// Form holds the create form's values after a refusal, so nothing typed is lost
	// (except key material, which is never echoed back).
	Form createForm
	// States and Types are the filter's choices.
	States []string
	Types  []string
}

// createForm is the Create key form.
type createForm struct {
	Name, Type, Description string
	// Open keeps the form open after a refusal.
	Open bool
}

// keys shows the Keys table.
func (h *Handler) keys(w http.ResponseWriter, r *http.Request, p *page) {
	f, err := parseKeyFilter(r.URL.Query())
	if err != nil {
		p.Alert = sentence(err.Error())
	}
	h.renderKeys(w, r, p, f, createForm{Type: string(crk.RootKey)}, http.StatusOK)
}

func (h *Handler) renderKeys(w http.ResponseWriter, r *http.Request, p *page, f keyFilter, form createForm, status int) {
	p.Title = "Keys"
	d := keysData{Filter: f, Form: form, States: filterStates(), Types: []string{string(crk.RootKey), string(crk.StandardKey)}}
	ks, err := p.svc.ListKeys(p.ctx, crk.ListOptions{States: f.states()})
	if err != nil {
		p.Alert = h.message(err)
		h.render(w, http.StatusOK, "keys", p)
		return
	}
	regs, err := p.svc.ListRegistrations(p.ctx, crk.RegistrationFilter{})
	if err != nil {
		p.Alert = h.message(err)
	}
	counts := map[string]int{}
	for _, reg := range regs {
		counts[reg.KeyID]++
	}
	var rows []keyRow
	for i := range ks {
		if f.match(&ks[i]) {
			rows = append(rows, keyRow{Key: &ks[i], Registrations: counts[ks[i].ID]})
		}
	}
	// Newest first, as the product's table lists them.
	for i, j := 0, len(rows)-1; i < j; i, j = i+1, j-1 {
		rows[i], rows[j] = rows[j], rows[i]
	}
	d.Total = len(rows)
	start := min(f.Page*keysPerPage, len(rows))
	end := min(start+keysPerPage, len(rows))
	d.Rows = rows[start:end]
	if end > start {
		d.First, d.Last = start+1, end
	}
	base := p.Base() + "/keys"
	if f.Page > 0 {
		d.Prev = base + f.query(f.Page-1)
	}
	if f.Page > 0 && start >= len(rows) {
		last := max(1, (len(rows)+keysPerPage-1)/keysPerPage)
		msg := fmt.Sprintf("Page %d is past the last page (%d).", f.Page+1, last)
		if p.Alert != "" {
			msg = p.Alert + " " + msg
		}
		p.Alert = msg
		d.Prev = base + f.query(last-1)
	}
	if end < len(rows) {
		d.Next = base + f.query(f.Page+1)
	}
	p.Data = d
	h.render(w, status, "keys", p)
}

// createKey creates a key from the Create key form.
func (h *Handler) createKey(w http.ResponseWriter, r *http.Request, p *page) {
	form := createForm{
		Name:        strings.TrimSpace(r.PostForm.Get("name")),
		Type:        r.PostForm.Get("type"),
		Description: r.PostForm.Get("description"),
		Open:        true,
	}
	opts := crk.CreateOptions{Name: form.Name, Description: form.Description, Type: crk.KeyType(form.Type)}
	if form.Type != string(crk.RootKey) && form.Type != string(crk.StandardKey) {
		p.Alert = "Choose the key type: root or standard."
		h.renderKeys(w, r, p, keyFilter{}, form, http.StatusBadRequest)
		return
	}
	if m := strings.TrimSpace(r.PostForm.Get("material")); m != "" {
		b, err := base64.StdEncoding.DecodeString(m)
		if err != nil {
			p.Alert = "The key material is not valid base64; nothing was created."
			h.renderKeys(w, r, p, keyFilter{}, form, http.StatusBadRequest)
			return
		}
		opts.Material = b
		defer clear(b)
	}
	k, err := p.svc.CreateKey(p.ctx, opts)
	if err != nil {
		p.Alert = h.message(err)
		h.renderKeys(w, r, p, keyFilter{}, form, statusOf(err)) // the API's status
		return
	}
	clear(k.Payload)
	target := p.Base() + "/keys/" + url.PathEscape(k.ID)
	http.Redirect(w, r, flashURL(target, p.sess, "Key created: "+k.Name+" ("+k.ID+")"), http.StatusSeeOther)
}
