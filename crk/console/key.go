package console

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"crkvol/crk"
)

// keyAction is one entry of a key's overflow menu.
type keyAction struct {
	// Name is the action's dialog and POST path element: rotate, policy, disable, enable,
	// delete, restore or sync.
	Name  string
	Label string
	// Reason says why the action is unavailable for the key as shown ("" when available).
	Reason string
}

// Enabled reports whether the action is available.
func (a keyAction) Enabled() bool { return a.Reason == "" }

// actionsFor returns k's overflow menu: every action, with the reason of those the key's
// type or state does not allow (crk remains the judge: a POST is checked again there).
func actionsFor(k *crk.Key) []keyAction {
	root := k.Type == crk.RootKey
	st := k.State
	var acts []keyAction
	add := func(name, label, reason string) {
		acts = append(acts, keyAction{Name: name, Label: label, Reason: reason})
	}
	notRoot := "standard keys do not support this"
	switch {
	case !root:
		add("rotate", "Rotate key", notRoot)
	case st != crk.StateActive && st != crk.StateDeactivated:
		add("rotate", "Rotate key", "the key is "+st.String())
	default:
		add("rotate", "Rotate key", "")
	}
	policy := "Set rotation policy"
	if k.RotationPolicy != nil && k.RotationPolicy.Enabled {
		policy = "Change or disable rotation policy"
	}
	switch {
	case !root:
		add("policy", policy, notRoot)
	case k.Imported:
		add("policy", policy, "an imported key rotates only with new material, so it has no rotation policy")
	case st == crk.StateDestroyed:
		add("policy", policy, "the key is deleted")
	default:
		add("policy", policy, "")
	}
	switch {
	case !root:
		add("disable", "Disable key", notRoot)
	case st != crk.StateActive:
		add("disable", "Disable key", "the key is "+st.String())
	default:
		add("disable", "Disable key", "")
	}
	switch {
	case !root:
		add("enable", "Enable key", notRoot)
	case st != crk.StateSuspended:
		add("enable", "Enable key", "the key is not disabled")
	default:
		add("enable", "Enable key", "")
	}
	switch {
	case !root:
		add("sync", "Sync associated resources", notRoot)
	case st == crk.StateDestroyed:
		add("sync", "Sync associated resources", "the key is deleted")
	default:
		add("sync", "Sync associated resources", "")
	}
	if st == crk.StateDestroyed {
		add("restore", "Restore key", "")
		add("delete", "Delete key", "the key is already deleted")
	} else {
		add("restore", "Restore key", "the key is not deleted")
		add("delete", "Delete key", "")
	}
	return acts
}

// resourceRow is one row of the Associated resources tab.
type resourceRow struct {
	crk.Registration
	// Behind is true when the resource's key version is not the key's latest.
	Behind bool
}

// keyData is a key page's data.
type keyData struct {
	Key      *crk.Key
	Tab      string // "versions" or "resources"
	Versions []crk.VersionInfo
	// Resources are the key's registrations, Behind counting those on an older version.
	Resources []resourceRow
	Behind    int
	Actions   []keyAction
	// Dialog is the open dialog's action, or "".
	Dialog keyAction
	// Months is the policy dialog's interval.
	Months int
	// Blocking are the registrations that refused a delete.
	Blocking []crk.Registration
}

// keyURL is the path of a key's page.
func (p *page) keyURL(id string) string { return p.Base() + "/keys/" + url.PathEscape(id) }

// KeyURL is the path of the key page's key.
func (p *page) KeyURL() string { return p.keyURL(p.keyID) }

// key shows a key's page, with a dialog when the query asks for one.
func (h *Handler) key(w http.ResponseWriter, r *http.Request, p *page) {
	q := r.URL.Query()
	h.renderKey(w, r, p, q.Get("tab"), q.Get("dialog"), http.StatusOK, nil)
}

// renderKey renders the key page of r's key with tab and dialog open; blocking lists the
// registrations that refused a delete.
func (h *Handler) renderKey(w http.ResponseWriter, r *http.Request, p *page, tab, dialog string, status int, blocking []crk.Registration) {
	id := r.PathValue("id")
	p.keyID = id
	k, err := p.svc.GetKeyMetadata(p.ctx, id)
	if err != nil {
		if errors.Is(err, crk.ErrKeyNotFound) {
			h.errorPage(w, r, p.sess, http.StatusNotFound, "No such key", fmt.Sprintf("This instance has no key with id %q.", short(id)))
			return
		}
		p.Alert = h.message(err)
		p.Title = "Key"
		h.render(w, http.StatusServiceUnavailable, "key", p)
		return
	}
	if tab != "resources" {
		tab = "versions"
	}
	d := keyData{Key: k, Tab: tab, Actions: actionsFor(k), Blocking: blocking, Months: 3}
	if k.RotationPolicy != nil {
		d.Months = k.RotationPolicy.IntervalMonths
	}
	if dialog != "" {
		i := slices.IndexFunc(d.Actions, func(a keyAction) bool { return a.Name == dialog })
		switch {
		case i < 0:
			p.Alert = fmt.Sprintf("There is no action %q.", short(dialog))
		case !d.Actions[i].Enabled() && p.Alert == "":
			p.Alert = d.Actions[i].Label + " is not available: " + d.Actions[i].Reason + "."
		default:
			d.Dialog = d.Actions[i]
		}
	}
	if d.Versions, err = p.svc.ListVersions(p.ctx, id); err != nil && p.Alert == "" {
		p.Alert = h.message(err)
	}
	regs, err := p.svc.ListRegistrations(p.ctx, crk.RegistrationFilter{KeyID: id})
	if err != nil && p.Alert == "" {
		p.Alert = h.message(err)
	}
	for _, reg := range regs {
		behind := reg.KeyVersion.ID != k.KeyVersion.ID
		if behind {
			d.Behind++
		}
		d.Resources = append(d.Resources, resourceRow{Registration: reg, Behind: behind})
	}
	p.Title = k.Name
	if d.Dialog.Name != "" {
		p.Title = d.Dialog.Label + ": " + k.Name
		p.InDialog = true
	} else {
		d.Blocking = nil
	}
	p.Data = d
	h.render(w, status, "key", p)
}

// keyAction runs a key action posted from a dialog, then redirects to the key page with a
// flash message, or shows the key page with the dialog and the refusal.
func (h *Handler) keyAction(w http.ResponseWriter, r *http.Request, p *page) {
	id, action := r.PathValue("id"), r.PathValue("action")
	f := r.PostForm
	var (
		msg string
		err error
		k   *crk.Key
	)
	refuse := func(status int, text string) {
		p.Alert = text
		h.renderKey(w, r, p, "", action, status, nil)
	}
	switch action {
	case "rotate":
		var material []byte
		if m := strings.TrimSpace(f.Get("material")); m != "" {
			if material, err = base64.StdEncoding.DecodeString(m); err != nil {
				refuse(http.StatusBadRequest, "The new key material is not valid base64; the key was not rotated.")
				return
			}
			defer clear(material)
		}
		if k, err = p.svc.RotateKey(p.ctx, id, material); err == nil {
			msg = "Key rotated: new version " + k.KeyVersion.ID
		}
	case "policy":
		enabled := f.Get("enabled") != "false"
		months, perr := strconv.Atoi(f.Get("months"))
		if !enabled {
			// Disabling keeps the policy's interval, whatever the form says.
			cur, gerr := p.svc.GetKeyMetadata(p.ctx, id)
			if gerr != nil {
				err = gerr
				break
			}
			if cur.RotationPolicy == nil {
				refuse(http.StatusConflict, "This key has no rotation policy to disable.")
				return
			}
			months = cur.RotationPolicy.IntervalMonths
		} else if perr != nil || months < 1 || months > 12 {
			refuse(http.StatusBadRequest, "Choose a rotation interval of 1 to 12 months.")
			return
		}
		if k, err = p.svc.SetRotationPolicy(p.ctx, id, months, enabled); err == nil {
			msg = "Rotation policy disabled"
			if enabled {
				msg = fmt.Sprintf("Rotation policy set: every %d month%s", months, plural(months))
			}
		}
	case "disable":
		if k, err = p.svc.DisableKey(p.ctx, id); err == nil {
			msg = "Key disabled: its state is now " + k.State.String()
		}
	case "enable":
		if k, err = p.svc.EnableKey(p.ctx, id); err == nil {
			msg = "Key enabled: its state is now " + k.State.String()
		}
	case "restore":
		if k, err = p.svc.RestoreKey(p.ctx, id); err == nil {
			msg = "Key restored: its state is now " + k.State.String()
		}
	case "sync":
		if err = p.svc.SyncKey(p.ctx, id); err == nil {
			msg = "Sync requested: the associated resources are asked to move to the latest version"
		}
	case "delete":
		cur, gerr := p.svc.GetKeyMetadata(p.ctx, id)
		if gerr != nil {
			err = gerr
			break
		}
		if f.Get("confirm") != cur.Name {
			refuse(http.StatusBadRequest, "Type the key's name exactly to confirm the deletion; the key was not deleted.")
			return
		}
		if k, err = p.svc.DeleteKey(p.ctx, id, crk.DeleteOptions{}); err == nil {
			msg = "Key deleted: it can be restored for 30 days"
		} else if errors.Is(err, crk.ErrProtectedResource) || errors.Is(err, crk.ErrPreventKeyDeletion) {
			regs, _ := p.svc.ListRegistrations(p.ctx, crk.RegistrationFilter{KeyID: id})
			p.Alert = deleteRefusal(len(regs))
			h.renderKey(w, r, p, "resources", "delete", http.StatusConflict, regs)
			return
		} else if errors.Is(err, crk.ErrDualAuthNotMet) {
			refuse(statusOf(err), h.message(err)+" "+dualAuthHint(id))
			return
		}
	default:
		h.errorPage(w, r, p.sess, http.StatusNotFound, "Not found", fmt.Sprintf("There is no key action %q.", short(action)))
		return
	}
	if err != nil {
		if errors.Is(err, crk.ErrKeyNotFound) {
			h.errorPage(w, r, p.sess, http.StatusNotFound, "No such key", fmt.Sprintf("This instance has no key with id %q.", short(id)))
			return
		}
		refuse(statusOf(err), h.message(err))
		return
	}
	if k != nil {
		clear(k.Payload)
	}
	http.Redirect(w, r, flashURL(p.keyURL(id), p.sess, msg), http.StatusSeeOther)
}

// statusOf is the HTTP status of a refused action's page: the API's for crk's errors.
func statusOf(err error) int {
	if info, ok := crk.LookupError(err); ok {
		return info.Status
	}
	return http.StatusInternalServerError
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// dualAuthHint tells a console user refused by dual authorization what to do: the console
// has no set-for-deletion action of its own.
func dualAuthHint(id string) string {
	return "The console cannot set a key for deletion: another user (another API key) does it through the API " +
		"(POST /api/v2/keys/" + id + "/actions/setKeyForDeletion) or with crkvol kp key schedule-delete " + id +
		"; then a user other than that one deletes it here within 7 days."
}

// deleteRefusal is the console's message when registrations refuse a delete. The API's own
// message suggests a forced delete, which the console does not offer.
func deleteRefusal(n int) string {
	regs := "registrations protect it"
	if n == 1 {
		regs = "registration protects it"
	}
	return fmt.Sprintf("The key was not deleted: %d %s (listed below). Delete the registrations "+
		"first; one that prevents key deletion blocks even a forced delete through the API.", n, regs)
}
