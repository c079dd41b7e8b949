package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"crkvol/crk"
)

var fleetT0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

func fleetAt(minutes int) time.Time { return fleetT0.Add(time.Duration(minutes) * time.Minute) }

const (
	fv1 = "11111111-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
	fv2 = "22222222-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
	fv3 = "33333333-cccc-4ccc-8ccc-cccccccccccc"
)

func fleetCRN(n int) string {
	return fmt.Sprintf("crn:v1:bluemix:public:crkvol:local:a/acct:inst:volume:vol-%d", n)
}

func fleetRegEvent(seq uint64, minute int, action string, n int, version string) crk.Event {
	return crk.Event{Seq: seq, Time: fleetAt(minute), Action: action, Outcome: crk.OutcomeSuccess, KeyID: "k", ResourceCRN: fleetCRN(n), KeyVersion: version}
}

func fleetReg(n int, created int, version string) crk.Registration {
	return crk.Registration{KeyID: "k", ResourceCRN: fleetCRN(n), CreationDate: fleetAt(created), KeyVersion: crk.Version{ID: version}}
}

func fleetVersions(fleetIDs ...string) []crk.VersionInfo {
	var out []crk.VersionInfo
	for i, id := range fleetIDs {
		out = append(out, crk.VersionInfo{Version: crk.Version{ID: id, CreationDate: fleetAt(i * 100)}})
	}
	slices.Reverse(out) // newest first, as ListVersions gives them
	return out
}

// fleetSteps renders a history's steps as "minute:count,count" for comparison.
func fleetSteps(h fleetHistory) string {
	var parts []string
	for _, s := range h.Steps {
		var cs []string
		for _, c := range s.Counts {
			cs = append(cs, fmt.Sprint(c))
		}
		parts = append(parts, fmt.Sprintf("%d:%s", int(s.Time.Sub(fleetT0)/time.Minute), strings.Join(cs, ",")))
	}
	return strings.Join(parts, " ")
}

func fleetIDs(h fleetHistory) string {
	var out []string
	for _, v := range h.Versions {
		id := chartVersionLabel(v.ID)
		if v.Latest {
			id += "*"
		}
		out = append(out, id)
	}
	return strings.Join(out, " ")
}

func TestRegistrationHistory(t *testing.T) {
	tests := []struct {
		name      string
		events    []crk.Event
		regs      []crk.Registration
		versions  []crk.VersionInfo
		now       int
		wantIDs   string
		wantSteps string
	}{
		{
			name:      "no registrations",
			versions:  fleetVersions(fv1),
			now:       50,
			wantIDs:   "11111111*",
			wantSteps: "0:0",
		},
		{
			name: "two volumes, a rotation, both rewrapped",
			events: []crk.Event{
				fleetRegEvent(1, 10, crk.ActionRegister, 1, fv1),
				fleetRegEvent(2, 20, crk.ActionRegister, 2, fv1),
				fleetRegEvent(5, 130, crk.ActionRegUpdate, 1, fv2),
				fleetRegEvent(6, 140, crk.ActionRegUpdate, 2, fv2),
			},
			regs:      []crk.Registration{fleetReg(1, 10, fv2), fleetReg(2, 20, fv2)},
			versions:  fleetVersions(fv1, fv2),
			now:       200,
			wantIDs:   "11111111 22222222*",
			wantSteps: "0:0,0 10:1,0 20:2,0 130:1,1 140:0,2",
		},
		{
			name: "events in any order, failures and other actions ignored",
			events: []crk.Event{
				fleetRegEvent(6, 140, crk.ActionRegUpdate, 2, fv2),
				{Seq: 3, Time: fleetAt(30), Action: crk.ActionWrap, Outcome: crk.OutcomeSuccess, KeyID: "k", KeyVersion: fv1},
				fleetRegEvent(1, 10, crk.ActionRegister, 1, fv1),
				{Seq: 4, Time: fleetAt(40), Action: crk.ActionRegister, Outcome: crk.OutcomeFailure, KeyID: "k", ResourceCRN: fleetCRN(3)},
				fleetRegEvent(2, 20, crk.ActionRegister, 2, fv1),
			},
			regs:      []crk.Registration{fleetReg(1, 10, fv1), fleetReg(2, 20, fv2)},
			versions:  fleetVersions(fv1, fv2),
			now:       200,
			wantIDs:   "11111111 22222222*",
			wantSteps: "0:0,0 10:1,0 20:2,0 140:1,1",
		},
		{
			name: "a deletion ends a registration, a re-creation starts it again",
			events: []crk.Event{
				fleetRegEvent(1, 10, crk.ActionRegister, 1, fv1),
				fleetRegEvent(2, 20, crk.ActionRegDelete, 1, ""),
				fleetRegEvent(3, 30, crk.ActionRegister, 1, fv1),
			},
			regs:      []crk.Registration{fleetReg(1, 30, fv1)},
			versions:  fleetVersions(fv1),
			now:       40,
			wantIDs:   "11111111*",
			wantSteps: "0:0 10:1 20:0 30:1",
		},
		{
			name: "registrations older than the retained events start on their current version",
			events: []crk.Event{
				fleetRegEvent(90, 150, crk.ActionRegister, 3, fv2),
			},
			regs:      []crk.Registration{fleetReg(1, 10, fv1), fleetReg(2, 20, fv2), fleetReg(3, 150, fv2)},
			versions:  fleetVersions(fv1, fv2),
			now:       200,
			wantIDs:   "11111111 22222222*",
			wantSteps: "0:0,0 10:1,0 20:1,1 150:1,2",
		},
		{
			name: "rewritten or deleted before the retained events end: unknown version until then",
			events: []crk.Event{
				fleetRegEvent(90, 150, crk.ActionRegUpdate, 1, fv2),
				fleetRegEvent(91, 160, crk.ActionRegDelete, 2, ""),
			},
			regs:      []crk.Registration{fleetReg(1, 10, fv2)},
			versions:  fleetVersions(fv1, fv2),
			now:       200,
			wantIDs:   "unknown 11111111 22222222*",
			wantSteps: "0:0,0,0 10:1,0,0 150:1,0,1 160:0,0,1",
		},
		{
			name: "the current registrations win at the end",
			events: []crk.Event{
				fleetRegEvent(1, 10, crk.ActionRegister, 1, fv1),
			},
			regs:      []crk.Registration{fleetReg(1, 10, fv2)},
			versions:  fleetVersions(fv1, fv2),
			now:       200,
			wantIDs:   "11111111 22222222*",
			wantSteps: "0:0,0 10:1,0 200:0,1",
		},
		{
			name: "a version the key no longer lists is still a series",
			events: []crk.Event{
				fleetRegEvent(1, 10, crk.ActionRegister, 1, fv1),
				fleetRegEvent(2, 150, crk.ActionRegUpdate, 1, fv3),
			},
			regs:      []crk.Registration{fleetReg(1, 10, fv3)},
			versions:  fleetVersions(fv3),
			now:       200,
			wantIDs:   "33333333* 11111111",
			wantSteps: "0:0,0 10:0,1 150:1,0",
		},
		{
			name: "changes at the same time make one step",
			events: []crk.Event{
				fleetRegEvent(1, 10, crk.ActionRegister, 1, fv1),
				fleetRegEvent(2, 10, crk.ActionRegister, 2, fv1),
				fleetRegEvent(3, 20, crk.ActionRegUpdate, 1, fv1), // a description change: no step
			},
			regs:      []crk.Registration{fleetReg(1, 10, fv1), fleetReg(2, 10, fv1)},
			versions:  fleetVersions(fv1),
			now:       30,
			wantIDs:   "11111111*",
			wantSteps: "0:0 10:2",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := registrationHistory(tt.events, tt.regs, tt.versions, tt.versions[0].ID, fleetT0, fleetAt(tt.now))
			if got := fleetIDs(h); got != tt.wantIDs {
				t.Errorf("versions = %q; want %q", got, tt.wantIDs)
			}
			if got := fleetSteps(h); got != tt.wantSteps {
				t.Errorf("steps = %q; want %q", got, tt.wantSteps)
			}
			if !h.Start.Equal(fleetT0) || !h.End.Equal(fleetAt(tt.now)) {
				t.Errorf("span = %v..%v; want %v..%v", h.Start, h.End, fleetT0, fleetAt(tt.now))
			}
			// The last step always agrees with the current registrations.
			last := h.latest()
			for i, v := range h.Versions {
				n := 0
				for _, r := range tt.regs {
					if r.KeyVersion.ID == v.ID {
						n++
					}
				}
				if last[i] != n {
					t.Errorf("now on %s: %d; the registrations say %d", chartVersionLabel(v.ID), last[i], n)
				}
			}
		})
	}
}

func TestCountScale(t *testing.T) {
	tests := []struct{ most, top, step int }{
		{0, 1, 1}, {1, 1, 1}, {2, 2, 1}, {5, 5, 1}, {6, 6, 2}, {9, 10, 2}, {11, 15, 5},
		{25, 25, 5}, {26, 30, 10}, {100, 100, 20}, {101, 150, 50}, {999, 1000, 200},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.most), func(t *testing.T) {
			top, step := countScale(tt.most)
			if top != tt.top || step != tt.step {
				t.Errorf("countScale(%d) = %d, %d; want %d, %d", tt.most, top, step, tt.top, tt.step)
			}
		})
	}
}

func TestTimeTicks(t *testing.T) {
	tests := []struct {
		name       string
		start, end time.Time
		want       string
	}{
		{"under a second", fleetT0, fleetT0.Add(300 * time.Millisecond), "Mar 1 09:00:00.000|09:00:00.300"},
		{"seconds", fleetT0.Add(-time.Second / 2), fleetT0.Add(3 * time.Second), "Mar 1 09:00:00|09:00:01|09:00:02|09:00:03"},
		{"half a minute", fleetT0, fleetT0.Add(29 * time.Second), "Mar 1 09:00:00|09:00:05|09:00:10|09:00:15|09:00:20|09:00:25"},
		{"minutes", fleetAt(0), fleetAt(4), "Mar 1 09:00|09:01|09:02|09:03|09:04"},
		{"an hour", fleetAt(0), fleetAt(60), "Mar 1 09:00|09:15|09:30|09:45|10:00"},
		{"hours", fleetAt(-60), fleetAt(14 * 60), "Mar 1 09:00|12:00|15:00|18:00|21:00"},
		{"across midnight", fleetAt(0), fleetAt(18 * 60), "Mar 1 12:00|18:00|Mar 2 00:00"},
		{"days", fleetT0, fleetT0.AddDate(0, 0, 5), "Mar 2|Mar 3|Mar 4|Mar 5|Mar 6"},
		{"months", fleetT0, fleetT0.AddDate(0, 5, 0), "Apr 2026|May 2026|Jun 2026|Jul 2026|Aug 2026"},
		{"years", fleetT0, fleetT0.AddDate(3, 0, 0), "Jan 2027|Jan 2028|Jan 2029"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ticks := timeTicks(tt.start, tt.end, wideChart.TimeTicks)
			var labels []string
			for _, tk := range ticks {
				labels = append(labels, tk.label)
				if tk.at.Before(tt.start) || tk.at.After(tt.end) {
					t.Errorf("tick %v outside %v..%v", tk.at, tt.start, tt.end)
				}
			}
			if got := strings.Join(labels, "|"); got != tt.want {
				t.Errorf("ticks = %q; want %q", got, tt.want)
			}
			if len(ticks) > wideChart.TimeTicks {
				t.Errorf("%d ticks; at most %d", len(ticks), wideChart.TimeTicks)
			}
			if n := len(timeTicks(tt.start, tt.end, narrowChart.TimeTicks)); n < 1 || n > narrowChart.TimeTicks {
				t.Errorf("%d ticks for the narrow chart; want 1 to %d", n, narrowChart.TimeTicks)
			}
		})
	}
}

// TestChartLabelsFit checks both layouts over spans from a second to years: every time
// label stays inside the chart (a label under a tick at either end is anchored to stay in),
// no two overlap, and the narrow chart is about a phone's width, so that its 12-unit labels
// keep about their size there.
func TestChartLabelsFit(t *testing.T) {
	if narrowChart.Width > 400 {
		t.Errorf("the narrow chart is %d units wide: on a 390 px phone its labels would shrink", narrowChart.Width)
	}
	spans := []time.Duration{300 * time.Millisecond, 7 * time.Second, 3 * time.Minute, 59 * time.Minute, 5 * time.Hour, 23 * time.Hour, 50 * time.Hour, 20 * 24 * time.Hour, 400 * 24 * time.Hour, 5 * 365 * 24 * time.Hour}
	for _, l := range []chartLayout{wideChart, narrowChart} {
		for _, span := range spans {
			// Starts just after a round time, so that a tick falls near the right edge.
			for _, start := range []time.Time{fleetT0, fleetT0.Add(-time.Second / 3), fleetAt(-7)} {
				regs := []crk.Registration{fleetReg(1, 0, fv1)}
				h := registrationHistory(nil, regs, fleetVersions(fv1), fv1, start, start.Add(span))
				c := buildChart(h, "k", l)
				name := fmt.Sprintf("%s/%v/%v", l.ID, span, start.Format("15:04:05.000"))
				prevRight := -1.0
				for _, tk := range c.XTicks {
					w := float64(len(tk.Label)) * chartCharWidth
					left := tk.Pos - w/2
					switch tk.Anchor {
					case "start":
						left = tk.Pos
					case "end":
						left = tk.Pos - w
					}
					if left < 0 || left+w > float64(l.Width) {
						t.Errorf("%s: label %q spans %.0f..%.0f, outside 0..%d", name, tk.Label, left, left+w, l.Width)
					}
					if left < prevRight {
						t.Errorf("%s: label %q overlaps the one before it", name, tk.Label)
					}
					prevRight = left + w
				}
			}
		}
	}
}

func TestBuildChart(t *testing.T) {
	h := registrationHistory([]crk.Event{
		fleetRegEvent(1, 10, crk.ActionRegister, 1, fv1),
		fleetRegEvent(2, 20, crk.ActionRegister, 2, fv1),
		fleetRegEvent(3, 30, crk.ActionRegister, 3, fv1),
		fleetRegEvent(5, 130, crk.ActionRegUpdate, 1, fv2),
	}, []crk.Registration{fleetReg(1, 10, fv2), fleetReg(2, 20, fv1), fleetReg(3, 30, fv1)}, fleetVersions(fv1, fv2, fv3), fv3, fleetT0, fleetAt(200))
	c := buildChart(h, "backup-crk", wideChart)

	// fv3 is the latest but holds nothing: in the legend, without an area.
	var legend []string
	for _, e := range c.Legend {
		legend = append(legend, fmt.Sprintf("%s=%d", e.Label, e.Now))
	}
	if got, want := strings.Join(legend, " "), "33333333 (latest)=0 22222222=1 11111111=2"; got != want {
		t.Errorf("legend = %q; want %q", got, want)
	}
	if len(c.Areas) != 2 {
		t.Fatalf("%d areas; want 2 (v1, v2)", len(c.Areas))
	}
	// fv1's band: 0..1 from minute 10, 0..2 from 20, 0..3 from 30, then 0..2 from 130 (one
	// moved to v2, stacked above it); the count axis tops at 3.
	if got, want := c.Areas[0].Path, "M48.0 244.0H80.8V168.0H113.6V92.0H146.4V16.0H474.4V92.0H704.0V244.0H474.4V244.0H146.4V244.0H113.6V244.0H80.8V244.0H48.0Z"; got != want {
		t.Errorf("v1 band = %s\nwant %s", got, want)
	}
	if c.Areas[1].Fill != versionColours[1] || c.Areas[0].Fill != versionColours[0] {
		t.Errorf("fills = %s, %s; want the older versions' colours", c.Areas[0].Fill, c.Areas[1].Fill)
	}
	if c.Legend[0].Fill != latestColour {
		t.Errorf("the latest version's colour = %s; want %s", c.Legend[0].Fill, latestColour)
	}
	var yl []string
	for _, tk := range c.YTicks {
		yl = append(yl, tk.Label)
	}
	if got := strings.Join(yl, ","); got != "0,1,2,3" {
		t.Errorf("count ticks = %s; want 0,1,2,3", got)
	}
	if !strings.Contains(c.Title, "backup-crk") {
		t.Errorf("title %q does not name the key", c.Title)
	}
	if want := "Now 3 registered volumes, 0 on the latest version 33333333, 3 behind it."; !strings.Contains(c.Desc, want) {
		t.Errorf("description %q; want it to contain %q", c.Desc, want)
	}
	// The table has the same numbers as the chart, oldest first, one column per legend entry
	// (oldest version first).
	var rows []string
	for _, r := range c.Rows {
		rows = append(rows, fmt.Sprint(r.Counts, r.Total))
	}
	if got, want := strings.Join(rows, " "), "[0 0 0] 0 [1 0 0] 1 [2 0 0] 2 [3 0 0] 3 [2 1 0] 3"; got != want {
		t.Errorf("table = %s; want %s", got, want)
	}
}

func TestBuildChartTableBounded(t *testing.T) {
	var evs []crk.Event
	for i := range maxTableRows + 10 {
		evs = append(evs, fleetRegEvent(uint64(i), i, crk.ActionRegister, i, fv1))
	}
	var regs []crk.Registration
	for i := range maxTableRows + 10 {
		regs = append(regs, fleetReg(i, i, fv1))
	}
	c := buildChart(registrationHistory(evs, regs, fleetVersions(fv1), fv1, fleetT0, fleetAt(100)), "k", wideChart)
	if len(c.Rows) != maxTableRows || c.Omitted != 10 { // 60 steps: one per creation, the first at the start
		t.Errorf("%d rows, %d omitted; want %d, 10", len(c.Rows), c.Omitted, maxTableRows)
	}
	if last := c.Rows[len(c.Rows)-1]; last.Total != maxTableRows+10 {
		t.Errorf("the last row totals %d; want %d", last.Total, maxTableRows+10)
	}
}

// TestFleetPage drives the Fleet page over a real service: two volumes, a rotation, one
// rewrapped, then a disable that one host confirmed and another has not.
func TestFleetPage(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	_, svc := f.tenants.Default()
	ctx := context.Background()
	k, err := svc.CreateRootKey(ctx, "backup-crk")
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	std, err := svc.CreateKey(ctx, crk.CreateOptions{Name: "a-standard-key", Type: crk.StandardKey})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	other, err := svc.CreateRootKey(ctx, "idle-crk")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		if _, err := svc.Register(ctx, k.ID, fleetCRN(i), crk.RegisterOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.Advance(time.Minute)
	rotated, err := svc.RotateKey(ctx, k.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	latest := rotated.KeyVersion.ID
	if _, err := svc.UpdateRegistration(ctx, k.ID, fleetCRN(1), crk.RegistrationUpdate{VersionID: &latest}); err != nil {
		t.Fatal(err)
	}
	// h2 reported before the disable, h1 after it.
	ack := func(host, typ, state string) {
		t.Helper()
		if err := svc.Acknowledge(ctx, crk.HostAck{Host: host, KeyID: k.ID, Type: typ, State: state, Volumes: 1}); err != nil {
			t.Fatal(err)
		}
	}
	ack("h2", crk.LifecycleSync, "active")
	if _, err := svc.DisableKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	ack("h1", crk.LifecycleDisable, "suspended")
	// A disabled key no host reported on, and an active one a host reported its version for.
	f.clock.Advance(time.Minute)
	quiet, err := svc.CreateRootKey(ctx, "quiet-crk")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.DisableKey(ctx, quiet.ID); err != nil {
		t.Fatal(err)
	}
	if err := svc.Acknowledge(ctx, crk.HostAck{Host: "h3", KeyID: other.ID, Type: crk.LifecycleRotate, State: "active", Version: other.KeyVersion.ID}); err != nil {
		t.Fatal(err)
	}

	c := f.client()
	if resp, _ := f.signIn(c, f.apiKey); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %s", resp.Status)
	}
	base := "/ui/i/" + f.inst + "/fleet"

	resp, body := f.get(c, base+"?key="+url.QueryEscape(k.ID))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("fleet page: %s\n%s", resp.Status, body)
	}
	for _, want := range []string{
		`Root keys 1–3 of 3`,
		`No host has reported on this key yet.`,
		`<li class="host-active" data-host="h3"><strong>h3</strong>: active, on <code title="` + other.KeyVersion.ID + `">` + chartVersionLabel(other.KeyVersion.ID) + `</code> (latest)`,
		`data-key-id="` + k.ID + `"`,
		`data-key-id="` + other.ID + `"`,
		`<span class="behind">1 behind</span>`,
		`Locked out on 1 of 2 reporting hosts`,
		`<li class="host-confirmed" data-host="h1">`,
		`<li class="host-waiting" data-host="h2">`,
		`<svg id="fleet-chart" class="fleet-chart" viewBox="0 0 720 280" role="img" aria-label="Registered volumes per version of key backup-crk"`,
		`<desc id="fleet-chart-desc">`,
		`1 on the latest version ` + chartVersionLabel(latest) + `, 1 behind it.`,
		`<li data-version="` + latest + `">`,
		`Volumes per version over time: backup-crk`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the fleet page lacks %q", want)
		}
	}
	if strings.Contains(body, std.ID) {
		t.Errorf("the fleet page lists standard key %s", std.ID)
	}
	if m := regexp.MustCompile(`\sstyle=|<style|<script>|\son[a-z]+=`).FindString(body); m != "" {
		t.Errorf("the fleet page has %q, which the console's CSP forbids", m)
	}
	// The data table's last row: 1 on the old version, 1 on the new, 2 in all.
	if !regexp.MustCompile(`<td>1</td><td>1</td><td>2</td></tr>\s*</tbody>`).MatchString(body) {
		t.Errorf("the chart's table does not end with 1, 1, 2:\n%s", body[strings.Index(body, "<table>"):])
	}

	// Without ?key the first root key's chart is shown.
	if _, body := f.get(c, base); !strings.Contains(body, `aria-label="Registered volumes per version of key backup-crk"`) {
		t.Errorf("without ?key, the page does not chart the first root key")
	}

	for _, tt := range []struct {
		name, query string
		status      int
		want        string
	}{
		{"unknown key", "?key=" + url.QueryEscape("6b1a6a0c-0000-4000-8000-000000000000"), http.StatusNotFound, "Key does not exist: 6b1a6a0c"},
		{"standard key", "?key=" + url.QueryEscape(std.ID), http.StatusBadRequest, "is a standard key: only root keys protect volumes"},
		{"bad page", "?page=zero", http.StatusBadRequest, "page=&#34;zero&#34; is not a page number"},
		{"page beyond the end", "?page=9", http.StatusOK, "Page 9 is past the last page of root keys (1)."},
		{"page beyond the end links to the last", "?page=9", http.StatusOK, `href="` + base + `" rel="prev"`},
		{"junk page", "?page=%FF%E2%82%AC" + strings.Repeat("9", 40), http.StatusBadRequest, `page=&#34;\xff€99`},
		{"bad hosts page", "?hosts=-1", http.StatusBadRequest, "hosts=&#34;-1&#34; is not a page number"},
		{"hosts page beyond the end", "?key=" + url.QueryEscape(k.ID) + "&hosts=2", http.StatusOK, "Page 2 of backup-crk&#39;s hosts is past the last page (1)."},
		{"hosts page beyond the end links to the last", "?key=" + url.QueryEscape(k.ID) + "&hosts=2", http.StatusOK, `href="` + base + `?key=` + url.QueryEscape(k.ID) + `#fleet-hosts" rel="prev">Previous hosts`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := f.get(c, base+tt.query)
			if resp.StatusCode != tt.status || !strings.Contains(body, tt.want) {
				t.Errorf("%s: %s; want %d and %q in\n%s", tt.query, resp.Status, tt.status, tt.want, body)
			}
			if strings.Contains(body, "goroutine") || strings.Contains(body, `{"`) {
				t.Errorf("the page shows internals:\n%s", body)
			}
		})
	}
}

// TestFleetHostsBounded checks that a key acknowledged by more hosts than a row names keeps
// a small row (counts, ten names of each kind, "and N more") and that the selected key's
// host table lists its hosts, those that have not confirmed the lockout first, with each
// one's volumes, stopped attaches and reporter. TestFleetHostPage checks the table's pages.
func TestFleetHostsBounded(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	_, svc := f.tenants.Default()
	ctx := crk.WithInitiator(context.Background(), "kpapi:0123456789abcdef")
	k, err := svc.CreateRootKey(ctx, "busy-crk")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Register(ctx, k.ID, fleetCRN(1), crk.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	const waiting, confirmed = fleetHostsShown + 2, fleetHostsShown + 1
	for i := range waiting {
		if err := svc.Acknowledge(ctx, crk.HostAck{Host: fmt.Sprintf("w%03d", i), KeyID: k.ID, Type: crk.LifecycleRotate, State: "active"}); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.Advance(time.Minute)
	if _, err := svc.DisableKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	for i := range confirmed {
		a := crk.HostAck{Host: fmt.Sprintf("c%03d", i), KeyID: k.ID, Type: crk.LifecycleDisable, State: "suspended", Volumes: 1}
		if i == 0 {
			a.Stopped = 1
		}
		if err := svc.Acknowledge(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	c := f.client()
	if resp, _ := f.signIn(c, f.apiKey); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %s", resp.Status)
	}
	base := "/ui/i/" + f.inst + "/fleet"
	count := strings.Count

	_, body := f.get(c, base)
	row := body[strings.Index(body, `<table class="fleet" id="fleet-keys">`):]
	table := body[strings.Index(body, `<table class="fleet hosts" id="fleet-host-table">`):]
	table = table[:strings.Index(table, "</table>")]
	for _, tt := range []struct {
		what    string
		n, want int
	}{
		{"confirmed hosts named in the row", count(row, `class="host-confirmed"`), fleetHostsShown},
		{"waiting hosts named in the row", count(row, `class="host-waiting"`), fleetHostsShown},
		{"host rows in the host table", count(table, `<tr data-host=`), waiting + confirmed},
		{"waiting hosts in the table", count(table, `data-confirmed="false"`), waiting},
	} {
		if tt.n != tt.want {
			t.Errorf("%s: %d; want %d", tt.what, tt.n, tt.want)
		}
	}
	if last, first := strings.LastIndex(table, `data-confirmed="false"`), strings.Index(table, `data-confirmed="true"`); last > first {
		t.Errorf("the host table lists a confirmed host before one that has not confirmed")
	}
	for _, want := range []string{
		fmt.Sprintf("Locked out on %d of %d reporting hosts", confirmed, waiting+confirmed),
		fmt.Sprintf("and %d more confirmed", confirmed-fleetHostsShown),
		fmt.Sprintf("and %d more not yet", waiting-fleetHostsShown),
		fmt.Sprintf("All %d hosts", waiting+confirmed),
		`<strong>c000</strong>: confirmed suspended, 1 volume locked out, 1 attach stopped (`,
		fmt.Sprintf("Hosts 1–%d of %d; %d confirmed the lockout", waiting+confirmed, waiting+confirmed, confirmed),
		`<section aria-labelledby="hosts-heading" id="fleet-hosts" data-refresh="30">`,
		"a confirmation is the word of that key's holder",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the fleet page lacks %q", want)
		}
	}
	if strings.Contains(body, `rel="next">Next hosts`) || strings.Contains(body, `rel="prev">Previous hosts`) {
		t.Errorf("one page of hosts has links to others")
	}
	c0 := regexp.MustCompile(`(?s)<tr data-host="c000" data-confirmed="true">.*?</tr>`).FindString(table)
	for _, want := range []string{
		`<td data-label="Lockout"><div>confirmed</div></td>`,
		`<td data-label="State"><div>suspended</div></td>`,
		`<td data-label="Volumes" class="volumes"><div>1</div></td>`,
		`<td data-label="Stopped" class="stopped"><div>1</div></td>`,
		`<td data-label="Reporter" class="reporter"><div><code>kpapi:0123456789abcdef</code></div></td>`,
	} {
		if !strings.Contains(c0, want) {
			t.Errorf("host c000's row lacks %q:\n%s", want, c0)
		}
	}
}

// TestFleetHostPage pages a key's hosts: fleetHostsPerPage a page, links to the neighbours
// that keep the key, and a page past the last refused with the number of pages.
func TestFleetHostPage(t *testing.T) {
	p := &page{Instance: instanceChoice{ID: "inst"}}
	k := crk.Key{ID: "k1", Name: "busy-crk", State: crk.StateSuspended}
	hosts := make([]fleetHost, 2*fleetHostsPerPage+7)
	for i := range hosts {
		hosts[i] = fleetHost{HostAck: crk.HostAck{Host: fmt.Sprintf("h%03d", i)}, Confirmed: i%3 == 0}
	}
	base := "/ui/i/inst/fleet?"
	tests := []struct {
		page                int
		first, last         int
		prev, next, message string
	}{
		{0, 1, fleetHostsPerPage, "", base + "hosts=2&key=k1#fleet-hosts", ""},
		{1, fleetHostsPerPage + 1, 2 * fleetHostsPerPage, base + "key=k1#fleet-hosts", base + "hosts=3&key=k1#fleet-hosts", ""},
		{2, 2*fleetHostsPerPage + 1, len(hosts), base + "hosts=2&key=k1#fleet-hosts", "", ""},
		{3, 0, 0, base + "hosts=3&key=k1#fleet-hosts", "", "Page 4 of busy-crk's hosts is past the last page (3)."},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint("page ", tt.page+1), func(t *testing.T) {
			got, msg := fleetHostPage(p, 1, k, hosts, tt.page)
			if msg != tt.message {
				t.Fatalf("message %q; want %q", msg, tt.message)
			}
			if msg != "" {
				if len(got.Hosts) != 0 || got.Prev != tt.prev || got.Next != "" {
					t.Errorf("past the last page: %d hosts, links %q, %q; want none, %q and none", len(got.Hosts), got.Prev, got.Next, tt.prev)
				}
				return
			}
			if got.First != tt.first || got.Last != tt.last || len(got.Hosts) != tt.last-tt.first+1 || got.Hosts[0].Host != hosts[tt.first-1].Host {
				t.Errorf("hosts %d–%d (%d, from %s); want %d–%d", got.First, got.Last, len(got.Hosts), got.Hosts[0].Host, tt.first, tt.last)
			}
			if got.Prev != tt.prev || got.Next != tt.next {
				t.Errorf("links %q, %q; want %q, %q", got.Prev, got.Next, tt.prev, tt.next)
			}
			if got.Total != len(hosts) || got.Confirmed != (len(hosts)+2)/3 || !got.OutOfUse {
				t.Errorf("total %d, confirmed %d, out of use %v; want %d, %d, true", got.Total, got.Confirmed, got.OutOfUse, len(hosts), (len(hosts)+2)/3)
			}
		})
	}
	if _, msg := fleetHostPage(p, 1, k, nil, 0); msg != "" {
		t.Errorf("no host: %q; want the (empty) first page", msg)
	}
}

func TestFleetRowFor(t *testing.T) {
	changed := fleetAt(100)
	key := func(st crk.State) crk.Key {
		return crk.Key{ID: "k", State: st, KeyVersion: crk.Version{ID: fv2}, LastStateChange: changed}
	}
	regs := []crk.Registration{fleetReg(1, 0, fv1), fleetReg(2, 0, fv2), fleetReg(3, 0, fv2)}
	acks := []crk.HostAck{
		{Host: "a", State: "suspended", Time: fleetAt(101), Version: fv2},
		{Host: "b", State: "suspended", Time: fleetAt(99)}, // before the change: an older disable
		{Host: "c", State: "active", Time: fleetAt(120)},
		{Host: "d", State: "destroyed", Time: fleetAt(130)},
		{Host: "e", State: "deactivated", Time: fleetAt(140)},
	}
	tests := []struct {
		name               string
		key                crk.Key
		confirmed, waiting string
	}{
		{"suspended", key(crk.StateSuspended), "a", "b c d e"},
		{"destroyed", key(crk.StateDestroyed), "d", "a b c e"},
		{"active: nothing to confirm", key(crk.StateActive), "", "a b c d e"},
		// An expired key still unwraps: its volumes are served, no lockout to confirm.
		{"deactivated: nothing to confirm", key(crk.StateDeactivated), "", "a b c d e"},
	}
	hosts := func(hs []fleetHost) string {
		var out []string
		for _, h := range hs {
			out = append(out, h.Host)
		}
		return strings.Join(out, " ")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			row := fleetRowFor(tt.key, regs, fleetHosts(tt.key, acks))
			if row.Registrations != 3 || row.Behind != 1 {
				t.Errorf("registrations %d, behind %d; want 3, 1", row.Registrations, row.Behind)
			}
			if len(row.Versions) != 2 || row.Versions[0].ID != fv2 || !row.Versions[0].Latest || row.Versions[0].Count != 2 || row.Versions[1].Count != 1 {
				t.Errorf("versions = %+v; want the latest (2) first, then v1 (1)", row.Versions)
			}
			if got := hosts(row.Confirmed); got != tt.confirmed {
				t.Errorf("confirmed = %q; want %q", got, tt.confirmed)
			}
			if got := hosts(row.Waiting); got != tt.waiting {
				t.Errorf("waiting = %q; want %q", got, tt.waiting)
			}
			if row.Reporting() != len(acks) {
				t.Errorf("reporting = %d; want %d", row.Reporting(), len(acks))
			}
		})
	}
	if row := fleetRowFor(key(crk.StateActive), regs, fleetHosts(key(crk.StateActive), acks)); !row.Waiting[0].OnLatest || row.Waiting[1].OnLatest {
		t.Errorf("OnLatest = %v, %v; want true for host a (on %s), false for b (no version)", row.Waiting[0].OnLatest, row.Waiting[1].OnLatest, chartVersionLabel(fv2))
	}
}

func TestFleetPaging(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	_, svc := f.tenants.Default()
	ctx := context.Background()
	var ids []string
	for i := range fleetKeysPerPage + 2 {
		k, err := svc.CreateRootKey(ctx, fmt.Sprintf("crk-%02d", i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.ID)
		f.clock.Advance(time.Second)
	}
	c := f.client()
	if resp, _ := f.signIn(c, f.apiKey); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %s", resp.Status)
	}
	base := "/ui/i/" + f.inst + "/fleet"
	_, first := f.get(c, base)
	_, second := f.get(c, base+"?page=2")
	for _, tt := range []struct {
		name, body string
		want       []string
		notWant    []string
	}{
		{"first page", first,
			[]string{fmt.Sprintf("Root keys 1–%d of %d", fleetKeysPerPage, fleetKeysPerPage+2), `href="` + base + `?page=2" rel="next"`, `data-key-id="` + ids[0] + `"`},
			[]string{`rel="prev"`, `data-key-id="` + ids[fleetKeysPerPage] + `"`}},
		{"second page", second,
			[]string{fmt.Sprintf("Root keys %d–%d of %d", fleetKeysPerPage+1, fleetKeysPerPage+2, fleetKeysPerPage+2), `href="` + base + `" rel="prev"`, `data-key-id="` + ids[fleetKeysPerPage+1] + `"`},
			[]string{`rel="next"`, `data-key-id="` + ids[0] + `"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, w := range tt.want {
				if !strings.Contains(tt.body, w) {
					t.Errorf("lacks %q", w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(tt.body, w) {
					t.Errorf("has %q", w)
				}
			}
		})
	}
}

// FuzzRegistrationHistory replays arbitrary registration events (and a current registration
// list that may disagree with them) and checks the history's invariants: steps in time order
// from Start, no negative count, no two equal neighbours, one latest version at most, the last
// step equal to the current registrations; and that the chart lays it out.
func FuzzRegistrationHistory(f *testing.F) {
	f.Add([]byte{0, 1, 1, 5, 0, 2, 1, 5, 1, 1, 2, 10}, []byte{1, 2, 2, 1})
	f.Add([]byte{2, 1, 0, 1, 0, 1, 3, 1}, []byte{})
	f.Add([]byte{1, 3, 2, 0, 1, 3, 1, 0}, []byte{3, 0, 4, 1})
	f.Fuzz(func(t *testing.T, ops, current []byte) {
		if len(ops) > 3000 || len(current) > 200 {
			return
		}
		vids := []string{fv1, fv2, fv3, "44444444-dddd-4ddd-8ddd-dddddddddddd"} // the last is not the key's
		actions := []string{crk.ActionRegister, crk.ActionRegUpdate, crk.ActionRegDelete}
		var events []crk.Event
		minute := 0
		for i := 0; i+3 < len(ops); i += 4 {
			minute += int(ops[i+3] % 16)
			action := actions[int(ops[i])%len(actions)]
			v := vids[int(ops[i+2])%len(vids)]
			if action == crk.ActionRegDelete {
				v = ""
			}
			events = append(events, fleetRegEvent(uint64(i), minute, action, int(ops[i+1]%8), v))
		}
		var regs []crk.Registration
		seen := map[int]bool{}
		for i := 0; i+1 < len(current); i += 2 {
			n := int(current[i] % 8)
			if seen[n] {
				continue
			}
			seen[n] = true
			regs = append(regs, fleetReg(n, int(current[i+1]%64), vids[int(current[i+1])%len(vids)]))
		}
		now := fleetAt(minute + 1)
		h := registrationHistory(events, regs, fleetVersions(fv1, fv2, fv3), fv3, fleetT0, now)
		if len(h.Steps) == 0 || !h.Steps[0].Time.Equal(h.Start) || h.End.Before(h.Start) {
			t.Fatalf("history %v..%v with %d steps", h.Start, h.End, len(h.Steps))
		}
		latest := 0
		for _, v := range h.Versions {
			if v.Latest {
				latest++
			}
		}
		if latest > 1 {
			t.Errorf("%d latest versions", latest)
		}
		for i, s := range h.Steps {
			if len(s.Counts) != len(h.Versions) {
				t.Fatalf("step %d: %d counts for %d versions", i, len(s.Counts), len(h.Versions))
			}
			if s.Time.After(h.End) {
				t.Errorf("step %d at %v after the end %v", i, s.Time, h.End)
			}
			for _, c := range s.Counts {
				if c < 0 {
					t.Errorf("step %d: negative count", i)
				}
			}
			if i > 0 {
				if !s.Time.After(h.Steps[i-1].Time) {
					t.Errorf("step %d at %v, not after step %d at %v", i, s.Time, i-1, h.Steps[i-1].Time)
				}
				if slices.Equal(s.Counts, h.Steps[i-1].Counts) {
					t.Errorf("steps %d and %d are equal", i-1, i)
				}
			}
		}
		last := h.latest()
		for i, v := range h.Versions {
			n := 0
			for _, r := range regs {
				if r.KeyVersion.ID == v.ID {
					n++
				}
			}
			if last[i] != n {
				t.Errorf("now on %s: %d; the registrations say %d", chartVersionLabel(v.ID), last[i], n)
			}
		}
		c := buildChart(h, "k", narrowChart)
		if len(c.Rows) > maxTableRows || len(c.Rows)+c.Omitted != len(h.Steps) {
			t.Errorf("%d rows and %d omitted for %d steps", len(c.Rows), c.Omitted, len(h.Steps))
		}
		for _, a := range c.Areas {
			if !strings.HasPrefix(a.Path, "M") || !strings.HasSuffix(a.Path, "Z") {
				t.Errorf("area path %q", a.Path)
			}
		}
	})
}
