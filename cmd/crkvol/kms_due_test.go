package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"crkvol/crk"
)

// TestDueTokensLog: a failing token clean-up is logged once until its message changes or it
// recovers.
func TestDueTokensLog(t *testing.T) {
	var buf bytes.Buffer
	d := &dueLog{log: slog.New(slog.NewTextHandler(&buf, nil))}
	for _, step := range []struct {
		name string
		err  error
		want string // a substring of the one line logged; "": nothing
	}{
		{"works", nil, ""},
		{"fails", errors.New("database unavailable"), `level=ERROR msg="dropping expired tokens and sessions failed" err="database unavailable"`},
		{"fails the same", errors.New("database unavailable"), ""},
		{"recovers", nil, ""},
		{"fails again", errors.New("database unavailable"), `err="database unavailable"`},
	} {
		buf.Reset()
		d.tokens(step.err)
		if step.want == "" {
			assert.Empty(t, buf.String(), step.name)
			continue
		}
		assert.Equal(t, 1, strings.Count(buf.String(), "\n"), step.name)
		assert.Contains(t, buf.String(), step.want, step.name)
	}
}

// TestDueLog: every rotation and expiry is logged; a failure once until its message changes
// or it stops and comes back (the loop runs every second).
func TestDueLog(t *testing.T) {
	var buf bytes.Buffer
	d := &dueLog{log: slog.New(slog.NewTextHandler(&buf, nil))}
	fail := func(msg string) map[string]crk.RunDueResult {
		return map[string]crk.RunDueResult{"inst": {Failed: map[string]error{"k1": errors.New(msg)}}}
	}
	for _, step := range []struct {
		name string
		res  map[string]crk.RunDueResult
		err  error
		want []string // substrings of the lines logged, in order; nil: nothing
	}{
		{"rotation and expiry", map[string]crk.RunDueResult{"inst": {Rotated: []string{"k1"}, Expired: []string{"k2"}}}, nil,
			[]string{`msg="rotation policy rotated a key" instance=inst key=k1`, `msg="key expired" instance=inst key=k2`}},
		{"purge", map[string]crk.RunDueResult{"inst": {Purged: []string{"k3"}}}, nil,
			[]string{`msg="deleted key purged" instance=inst key=k3`}},
		{"nothing due", map[string]crk.RunDueResult{"inst": {}}, nil, nil},
		{"a failure", fail("disk full"), nil, []string{`level=ERROR msg="due rotation failed" instance=inst key=k1 err="disk full"`}},
		{"the same failure", fail("disk full"), nil, nil},
		{"another failure", fail("locked"), nil, []string{`err=locked`}},
		{"the run fails", nil, errors.New("tenants unreadable"), []string{`msg="running due rotations failed" err="tenants unreadable"`}},
		{"the run fails again", nil, errors.New("tenants unreadable"), nil},
		{"recovered", map[string]crk.RunDueResult{}, nil, nil},
		{"the key fails again", fail("locked"), nil, []string{`err=locked`}},
	} {
		buf.Reset()
		d.record(step.res, step.err)
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if step.want == nil {
			assert.Empty(t, strings.TrimSpace(buf.String()), step.name)
			continue
		}
		if assert.Len(t, lines, len(step.want), step.name) {
			for i, w := range step.want {
				assert.Contains(t, lines[i], w, step.name)
			}
		}
	}
}
