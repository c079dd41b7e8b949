package console

import (
	"fmt"
	"strings"
	"time"
)

// The Fleet chart is drawn on the server as SVG, so that it needs no script and no style
// attribute (the console's CSP forbids both): colours are SVG presentation attributes
// (fill=, stroke=), which style-src does not govern. The chart is one stacked step area per
// key version, oldest at the bottom, over the key's lifetime; a table below it gives the
// same numbers to screen readers and to people who prefer numbers.

// chartLayout is a chart's geometry, in SVG user units (the SVG scales to its container),
// and how many time labels its axis holds.
type chartLayout struct {
	ID                                       string // the SVG element's id
	Class                                    string // its class attribute
	Width, Height                            int
	PlotLeft, PlotRight, PlotTop, PlotBottom float64
	TimeTicks                                int
}

// The two layouts of the chart. The page draws both and the style sheet shows one: on a
// wide screen the wide one at up to its drawn size; on a phone the narrow one, whose 360
// units span about the screen's width, so that its 12-unit labels stay about 12 px tall
// (the wide chart shrunk to a phone's width would make them 6 px).
var (
	wideChart   = chartLayout{ID: "fleet-chart", Class: "fleet-chart", Width: 720, Height: 280, PlotLeft: 48, PlotRight: 704, PlotTop: 16, PlotBottom: 244, TimeTicks: 6}
	narrowChart = chartLayout{ID: "fleet-chart-narrow", Class: "fleet-chart fleet-chart-narrow", Width: 360, Height: 240, PlotLeft: 44, PlotRight: 348, PlotTop: 16, PlotBottom: 204, TimeTicks: 3}
)

// chartCharWidth is a generous estimate, in user units, of the width of one character of
// the chart's 12-unit labels (digits and capitals of a sans-serif face are about 0.6 em).
const chartCharWidth = 7.5

// versionColours fill the areas of older versions, in turn; latestColour fills the latest
// version and unknownColour the registrations of unknown version. Each has a contrast of
// at least 4.5:1 against white (WCAG asks 3:1 of graphics), and a white line parts the
// bands, so that neighbouring versions stay apart.
var versionColours = [...]string{"#0969da", "#bc4c00", "#8250df", "#bf3989", "#0a6e74", "#953800"}

const (
	latestColour  = "#1a7f37"
	unknownColour = "#57606a"
)

// chartArea is one version's band of the stacked chart.
type chartArea struct {
	Path  string // an SVG path
	Fill  string
	Label string // the version, for the area's <title>
}

// chartTick is one labelled position on an axis.
type chartTick struct {
	Pos   float64 // x for the time axis, y for the count axis
	Label string
	// Anchor is the label's text-anchor: "middle" under its tick, or "start" or "end" for
	// a label that would otherwise cross the chart's left or right edge.
	Anchor string
}

// legendEntry names one version of the chart and its count now.
type legendEntry struct {
	Label  string
	ID     string // the full version id; "" for the unknown version
	Fill   string
	Now    int
	Latest bool
}

// chartRow is one row of the chart's data table: the counts from a time on.
type chartRow struct {
	Time   time.Time
	Counts []int // one per column
	Total  int
}

// fleetChart is everything the template needs to draw a [fleetHistory].
type fleetChart struct {
	chartLayout
	// DescID is the id of the SVG's description.
	DescID         string
	Areas          []chartArea
	XTicks, YTicks []chartTick
	Legend         []legendEntry
	Title, Desc    string
	// Columns and Rows are the data table; Omitted counts the oldest rows left out.
	Columns []legendEntry
	Rows    []chartRow
	Omitted int
}

// maxTableRows bounds the data table under the chart: the most recent changes.
const maxTableRows = 50

// chartVersionLabel returns the first 8 characters of a version id, as the legend shows it.
func chartVersionLabel(id string) string {
	if id == fleetUnknownVersion {
		return "unknown"
	}
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// buildChart lays out h for a key named keyName in layout l.
func buildChart(h fleetHistory, keyName string, l chartLayout) fleetChart {
	c := fleetChart{chartLayout: l, DescID: l.ID + "-desc"}
	plotLeft, plotRight, plotTop, plotBottom := l.PlotLeft, l.PlotRight, l.PlotTop, l.PlotBottom
	start, end := h.Start, h.End
	if !end.After(start) {
		end = start.Add(time.Minute)
	}
	x := func(t time.Time) float64 {
		return plotLeft + float64(t.Sub(start))/float64(end.Sub(start))*(plotRight-plotLeft)
	}
	yMax, yStep := countScale(h.maxTotal())
	y := func(n int) float64 {
		return plotBottom - float64(n)/float64(yMax)*(plotBottom-plotTop)
	}

	// Which versions appear: any with registrations at some step, and the latest.
	shown := make([]bool, len(h.Versions))
	for i, v := range h.Versions {
		shown[i] = v.Latest
		for _, s := range h.Steps {
			if s.Counts[i] > 0 {
				shown[i] = true
			}
		}
	}
	colour := make([]string, len(h.Versions))
	older := 0
	for i, v := range h.Versions {
		switch {
		case v.ID == fleetUnknownVersion:
			colour[i] = unknownColour
		case v.Latest:
			colour[i] = latestColour
		default:
			colour[i] = versionColours[older%len(versionColours)]
			older++
		}
	}

	now := h.latest()
	lower := make([]int, len(h.Steps))
	for i, v := range h.Versions {
		if !shown[i] {
			continue
		}
		label := chartVersionLabel(v.ID)
		if v.Latest {
			label += " (latest)"
		}
		entry := legendEntry{Label: label, ID: v.ID, Fill: colour[i], Now: now[i], Latest: v.Latest}
		c.Legend = append(c.Legend, entry)
		c.Columns = append(c.Columns, entry)
		upper := make([]int, len(h.Steps))
		used := false
		for j, s := range h.Steps {
			upper[j] = lower[j] + s.Counts[i]
			used = used || s.Counts[i] > 0
		}
		if used {
			c.Areas = append(c.Areas, chartArea{Path: stepBand(h, x, y, lower, upper, end), Fill: colour[i], Label: label})
		}
		lower = upper
	}
	// The newest version's legend entry first: it is the one a reader looks for.
	for i, j := 0, len(c.Legend)-1; i < j; i, j = i+1, j-1 {
		c.Legend[i], c.Legend[j] = c.Legend[j], c.Legend[i]
	}

	for n := 0; n <= yMax; n += yStep {
		c.YTicks = append(c.YTicks, chartTick{Pos: y(n), Label: fmt.Sprint(n)})
	}
	for _, t := range timeTicks(start, end, l.TimeTicks) {
		pos, anchor := x(t.at), "middle"
		half := float64(len(t.label)) * chartCharWidth / 2
		switch {
		case pos-half < 0:
			anchor = "start"
		case pos+half > float64(l.Width):
			anchor = "end"
		}
		c.XTicks = append(c.XTicks, chartTick{Pos: pos, Label: t.label, Anchor: anchor})
	}

	c.Title = "Registered volumes per version of key " + keyName
	c.Desc = chartDescription(h, c.Legend)

	rows := make([]chartRow, 0, len(h.Steps))
	for _, s := range h.Steps {
		row := chartRow{Time: s.Time, Total: s.total()}
		for i := range h.Versions {
			if shown[i] {
				row.Counts = append(row.Counts, s.Counts[i])
			}
		}
		rows = append(rows, row)
	}
	if len(rows) > maxTableRows {
		c.Omitted = len(rows) - maxTableRows
		rows = rows[c.Omitted:]
	}
	c.Rows = rows
	return c
}

// stepBand draws the band between lower and upper, step counts per history step: along
// the top from left to right, down, and back along the bottom.
func stepBand(h fleetHistory, x func(time.Time) float64, y func(int) float64, lower, upper []int, end time.Time) string {
	var b strings.Builder
	n := len(h.Steps)
	fmt.Fprintf(&b, "M%.1f %.1f", x(h.Steps[0].Time), y(upper[0]))
	for j := 1; j < n; j++ {
		fmt.Fprintf(&b, "H%.1fV%.1f", x(h.Steps[j].Time), y(upper[j]))
	}
	fmt.Fprintf(&b, "H%.1fV%.1f", x(end), y(lower[n-1]))
	for j := n - 1; j >= 1; j-- {
		fmt.Fprintf(&b, "H%.1fV%.1f", x(h.Steps[j].Time), y(lower[j-1]))
	}
	fmt.Fprintf(&b, "H%.1fZ", x(h.Steps[0].Time))
	return b.String()
}

// countScale returns the top of the count axis and its tick step: a round step (1, 2, 5,
// 10, 20, 50...) giving at most five intervals, and the top a multiple of it at or above
// most (1 when there is nothing to count).
func countScale(most int) (top, step int) {
	most = max(most, 1)
	for base := 1; ; base *= 10 {
		for _, m := range []int{1, 2, 5} {
			step = base * m
			if (most+step-1)/step <= 5 {
				return (most + step - 1) / step * step, step
			}
		}
	}
}

// timeTick is one labelled time of the time axis.
type timeTick struct {
	at    time.Time
	label string
}

// tickSpacings are the candidate spacings of the time axis; months are counted by the
// calendar.
var tickSpacings = [...]struct {
	d      time.Duration
	months int
}{
	{time.Second, 0}, {5 * time.Second, 0}, {15 * time.Second, 0}, {30 * time.Second, 0},
	{time.Minute, 0}, {5 * time.Minute, 0}, {15 * time.Minute, 0}, {30 * time.Minute, 0},
	{time.Hour, 0}, {3 * time.Hour, 0}, {6 * time.Hour, 0}, {12 * time.Hour, 0},
	{24 * time.Hour, 0}, {2 * 24 * time.Hour, 0}, {7 * 24 * time.Hour, 0}, {14 * 24 * time.Hour, 0},
	{0, 1}, {0, 2}, {0, 3}, {0, 6}, {0, 12}, {0, 24}, {0, 60},
}

// timeTicks returns round times between start and end (UTC), at most maxTimeTicks of them
// (at least 2); a span under a second gets its two ends.
func timeTicks(start, end time.Time, maxTimeTicks int) []timeTick {
	maxTimeTicks = max(maxTimeTicks, 2)
	start, end = start.UTC(), end.UTC()
	if end.Sub(start) < time.Second {
		return []timeTick{{start, start.Format("Jan 2 15:04:05.000")}, {end, end.Format("15:04:05.000")}}
	}
	span := end.Sub(start)
	for _, sp := range tickSpacings {
		var ts []time.Time
		if sp.months == 0 {
			if int64(span/sp.d)+1 > int64(maxTimeTicks) {
				continue
			}
			for t := start.Truncate(sp.d); !t.After(end); t = t.Add(sp.d) {
				if !t.Before(start) {
					ts = append(ts, t)
				}
			}
		} else {
			months := (end.Year()-start.Year())*12 + int(end.Month()-start.Month())
			if months/sp.months+1 > maxTimeTicks {
				continue
			}
			first := time.Date(start.Year(), start.Month(), 1, 0, 0, 0, 0, time.UTC)
			for i := 0; ; i++ {
				t := first.AddDate(0, i, 0)
				if t.After(end) {
					break
				}
				m := (t.Year()*12 + int(t.Month()) - 1)
				if !t.Before(start) && m%sp.months == 0 {
					ts = append(ts, t)
				}
			}
		}
		if len(ts) > maxTimeTicks {
			continue
		}
		out := make([]timeTick, len(ts))
		for i, t := range ts {
			out[i] = timeTick{at: t, label: tickLabel(t, sp.d, sp.months, i == 0 || t.YearDay() != ts[i-1].YearDay())}
		}
		return out
	}
	return nil
}

// tickLabel formats a tick for its spacing: the time of day (with seconds under a minute,
// and the date at the first tick of a day) under a day, the date under a month, the month
// beyond.
func tickLabel(t time.Time, d time.Duration, months int, newDay bool) string {
	switch {
	case months > 0:
		return t.Format("Jan 2006")
	case d >= 24*time.Hour:
		return t.Format("Jan 2")
	case d < time.Minute && newDay:
		return t.Format("Jan 2 15:04:05")
	case d < time.Minute:
		return t.Format("15:04:05")
	case newDay:
		return t.Format("Jan 2 15:04")
	default:
		return t.Format("15:04")
	}
}

// chartDescription states in words what the chart shows, for its <desc> and aria-label.
func chartDescription(h fleetHistory, legend []legendEntry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From %s to %s UTC.", h.Start.UTC().Format("2006-01-02 15:04"), h.End.UTC().Format("2006-01-02 15:04"))
	total, latest := 0, 0
	for _, e := range legend {
		total += e.Now
		if e.Latest {
			latest = e.Now
		}
	}
	fmt.Fprintf(&b, " Now %d registered %s", total, chartPlural(total, "volume", "volumes"))
	for _, e := range legend {
		if e.Latest {
			fmt.Fprintf(&b, ", %d on the latest version %s", e.Now, chartVersionLabel(e.ID))
		}
	}
	if behind := total - latest; behind > 0 {
		fmt.Fprintf(&b, ", %d behind it", behind)
	}
	b.WriteString(".")
	return b.String()
}

// plural picks the singular or plural noun for n.
func chartPlural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
