package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	kp "github.com/IBM/keyprotect-go-client"

	"crkvol/crk/kpapi"
)

// The Key Protect CLI's output: a progress line ("Rotating root key..."), SUCCESS or FAILED,
// then a table whose columns are three spaces apart, the last one unpadded.

// kpTable writes rows as the Key Protect CLI's tables. Every cell is a service's text
// escaped (kpapi.Printable) by the caller where it comes from the service.
func kpTable(w io.Writer, header []string, rows ...[]string) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 3, ' ', 0)
	for _, r := range append([][]string{header}, rows...) {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// An empty last cell leaves its padding behind: the plug-in's lines end with their text.
	var out strings.Builder
	for _, l := range strings.SplitAfter(buf.String(), "\n") {
		if l == "" {
			continue
		}
		out.WriteString(strings.TrimRight(l, " \n") + "\n")
	}
	_, err := io.WriteString(w, out.String())
	return err
}

// kpTime formats a time as the Key Protect CLI's tables do: 2020-05-06 17:25:22 +0000 UTC.
func kpTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 -0700 MST")
}

// kpRFC3339 formats a time as RFC 3339 in UTC, or "".
func kpRFC3339(t *time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// kpText escapes a service's text for a terminal.
func kpText(s string) string { return kpapi.Printable(s, 1<<10) }

// kpProgress prints a command's progress line in table output (none in JSON).
func (a *app) kpProgress(format string, args ...any) {
	if !a.asJSON {
		fmt.Fprintf(a.stdout, format+"\n", args...)
	}
}

// kpDone ends a command's progress: SUCCESS, or with err FAILED (the error itself goes to
// stderr as every crkvol error does). It returns err.
func (a *app) kpDone(err error) error {
	if !a.asJSON {
		if err != nil {
			fmt.Fprintln(a.stdout, "FAILED")
		} else {
			fmt.Fprintln(a.stdout, "SUCCESS")
		}
	}
	return err
}

// kpKeyRow is a key's row of the key show table.
func kpKeyRow(k *kp.Key) []string {
	exp := "Key does not expire"
	if k.Expiration != nil {
		exp = kpTime(k.Expiration)
	}
	return []string{kpText(k.ID), kpText(k.Name), kpText(k.Description), kpTime(k.CreationDate), exp}
}

// kpKeyView is a key as kp commands print it with -o json: the official client's key, with
// the service's whole dualAuthDelete member (the client's DualAuth keeps only enabled, and
// drops keySetForDeletion and authExpiration, which say that a first authorization to
// delete the key was given and until when).
type kpKeyView struct {
	*kp.Key
	DualAuthDelete *kpapi.DualAuth `json:"dualAuthDelete,omitempty"`
}

// kpPolicyView is a key policy as kp key policies prints it with -o json: the official
// client's policy, its dualAuthDelete with the key's keySetForDeletion and authExpiration
// (the service sends them in the key, not in the policy).
type kpPolicyView struct {
	kp.Policy
	DualAuth *kpapi.DualAuth `json:"dualAuthDelete,omitempty"`
}

// kpKeyViewOf is k with the dualAuthDelete member of raw, the service's answer about it (a
// key collection); a member raw does not have is the client's.
func kpKeyViewOf(k *kp.Key, raw []byte) (kpKeyView, error) {
	v := kpKeyView{Key: k}
	if k.DualAuthDelete != nil && k.DualAuthDelete.Enabled != nil {
		v.DualAuthDelete = &kpapi.DualAuth{Enabled: *k.DualAuthDelete.Enabled}
	}
	d, err := kpDualAuthOf(raw)
	if err != nil {
		return v, err
	}
	if d != nil {
		v.DualAuthDelete = d
	}
	return v, nil
}

// kpDualAuthOf reads the dualAuthDelete member of the first key of a service's answer (a
// key collection), nil if it has none. Its text is escaped for a terminal.
func kpDualAuthOf(raw []byte) (*kpapi.DualAuth, error) {
	var res struct {
		Resources []struct {
			DualAuthDelete *kpapi.DualAuth `json:"dualAuthDelete"`
		} `json:"resources"`
	}
	if len(raw) == 0 {
		return nil, nil
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("reading the key's dualAuthDelete: %w", err)
	}
	if len(res.Resources) == 0 || res.Resources[0].DualAuthDelete == nil {
		return nil, nil
	}
	d := res.Resources[0].DualAuthDelete
	d.AuthExpiration = kpText(d.AuthExpiration)
	return d, nil
}

// kpDualAuthRows are the rows that say whether a key with dual authorization delete is set
// for deletion, and until when that authorization holds; none without the policy.
func kpDualAuthRows(d *kpapi.DualAuth) [][]string {
	if d == nil || !d.Enabled {
		return nil
	}
	set := d.KeySetForDeletion != nil && *d.KeySetForDeletion
	rows := [][]string{{"Set For Deletion", strconv.FormatBool(set)}}
	if set && d.AuthExpiration != "" {
		rows = append(rows, []string{"Authorization Expires", d.AuthExpiration})
	}
	return rows
}

// kpPolicyRows are a policy's rows of the key policies table.
func kpPolicyRows(p kp.Policy) [][]string {
	rows := [][]string{
		{"Created By", kpText(p.CreatedBy)},
		{"Creation Date", kpRFC3339(p.CreatedAt)},
		{"Last Updated", kpRFC3339(p.UpdatedAt)},
		{"Updated By", kpText(p.UpdatedBy)},
	}
	if r := p.Rotation; r != nil {
		rows = append(rows, []string{"Policy Type", "Rotation"}, []string{"Interval", strconv.Itoa(r.Interval)})
		if r.Enabled != nil {
			rows = append(rows, []string{"Enabled", strconv.FormatBool(*r.Enabled)})
		}
	}
	if d := p.DualAuth; d != nil {
		rows = append(rows, []string{"Policy Type", "Dual Authorization Delete"})
		if d.Enabled != nil {
			rows = append(rows, []string{"Enabled", strconv.FormatBool(*d.Enabled)})
		}
	}
	return rows
}
