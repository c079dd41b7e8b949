package bench

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
)

// The chart's geometry, in SVG user units (pixels at 100%).
const (
	chartWidth   = 1000
	chartLabelX  = 390 // labels end here (right-aligned)
	chartPlotX   = 400 // the plot runs from here...
	chartPlotW   = 420 // ...this wide
	chartTextX   = 834 // the value column starts here
	chartRowH    = 20
	chartHeadH   = 28
	chartBarH    = 12
	chartTopY    = 104 // the first section's heading starts here
	chartBottomH = 40
)

// The chart's colours: a ratio that meets its target, one that misses it, one without a
// target; the grid and the 1× line.
const (
	colourMet    = "#2e7d32"
	colourMissed = "#c62828"
	colourNone   = "#4a6fa5"
	colourGrid   = "#d0d0d0"
	colourText   = "#202020"
)

// chartTicks are the values the log axis can start, end and be marked at.
var chartTicks = []float64{0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000}

// WriteChart draws every ratio of the run as an SVG image: one horizontal bar per ratio,
// grouped by section in run order, on a logarithmic axis with a line at 1× (the reference),
// bars growing right of it where crkvol is faster and left where it is slower, a tick at
// each target, bars green where the target is met, red where it is missed and blue where
// there is none, and the machine in the title. The output is a function of the report alone
// (the same report draws the same bytes) and is plain SVG 1.1 with no script or external
// resource.
func (r *Report) WriteChart(w io.Writer) error {
	mode := ""
	if r.Quick {
		mode = " (quick run)"
	}
	return writeChart(w, "crkvol bench"+mode+": each ratio is crkvol over a reference measured in the same run", r.Machine.String(), r.Ratios)
}

// writeChart draws ratios under the title and subtitle (see Report.WriteChart).
func writeChart(out io.Writer, title, subtitle string, ratios []Ratio) error {
	var drawable []Ratio
	lo, hi := 1.0, 1.0
	for _, x := range ratios {
		if !(x.Value > 0) || math.IsInf(x.Value, 0) {
			continue // nothing to draw; the table says why
		}
		drawable = append(drawable, x)
		lo, hi = math.Min(lo, x.Value), math.Max(hi, x.Value)
		if x.Target > 0 && !math.IsInf(x.Target, 0) {
			lo, hi = math.Min(lo, x.Target), math.Max(hi, x.Target)
		}
	}
	lo, hi = math.Min(lo, 0.5), math.Max(hi, 2)
	axisLo, axisHi := chartTicks[0], chartTicks[len(chartTicks)-1]
	for _, t := range chartTicks {
		if t <= lo {
			axisLo = t
		}
	}
	for i := len(chartTicks) - 1; i >= 0; i-- {
		if chartTicks[i] >= hi {
			axisHi = chartTicks[i]
		}
	}
	xOf := func(v float64) float64 {
		v = math.Min(math.Max(v, axisLo), axisHi)
		return chartPlotX + chartPlotW*(math.Log(v)-math.Log(axisLo))/(math.Log(axisHi)-math.Log(axisLo))
	}

	// The rows: a heading for each section, then its bars.
	type row struct {
		heading string
		ratio   Ratio
		y       float64
	}
	var rows []row
	y := float64(chartTopY)
	for i, x := range drawable {
		if i == 0 || x.Section != drawable[i-1].Section {
			rows = append(rows, row{heading: x.Section, y: y})
			y += chartHeadH
		}
		rows = append(rows, row{ratio: x, y: y})
		y += chartRowH
	}
	if len(drawable) == 0 {
		rows = append(rows, row{heading: "no ratios: no section of this run measured anything", y: y})
		y += chartHeadH
	}
	plotTop, plotBottom := float64(chartTopY)-8, y+4
	height := y + chartBottomH

	w := bufio.NewWriter(out)
	f := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	f(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	f(`<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="%d" height="%.0f" viewBox="0 0 %d %.0f" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12" fill="%s">`+"\n",
		chartWidth, height, chartWidth, height, colourText)
	f(`<title>%s</title>`+"\n", esc(title+" ("+subtitle+")"))
	f(`<rect x="0" y="0" width="%d" height="%.0f" fill="#ffffff"/>`+"\n", chartWidth, height)
	f(`<text x="12" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", esc(title))
	f(`<text x="12" y="44">%s</text>`+"\n", esc(subtitle))
	// The legend.
	lx := 12.0
	for _, l := range []struct{ colour, text string }{
		{colourMet, "meets its target"}, {colourMissed, "below its target"}, {colourNone, "no target"},
	} {
		f(`<rect x="%.0f" y="56" width="14" height="%d" fill="%s"/>`+"\n", lx, chartBarH, l.colour)
		f(`<text x="%.0f" y="67">%s</text>`+"\n", lx+20, esc(l.text))
		lx += 150
	}
	f(`<line x1="%.0f" y1="54" x2="%.0f" y2="70" stroke="%s" stroke-width="2"/>`+"\n", lx+6, lx+6, colourText)
	f(`<text x="%.0f" y="67">target</text>`+"\n", lx+14)
	f(`<text x="%.0f" y="67">%s</text>`+"\n", lx+80, esc("log scale; 1× = the reference"))

	// Every other row is shaded, so that the eye follows it from label to value.
	shade := false
	for _, rw := range rows {
		if rw.heading != "" {
			shade = false
			continue
		}
		if shade {
			f(`<rect x="12" y="%.1f" width="%d" height="%d" fill="#f3f3f3"/>`+"\n", rw.y, chartWidth-24, chartRowH)
		}
		shade = !shade
	}
	// The grid, with the axis labelled above and below the plot: every tick has a line, and
	// a label where there is room for one (the decades first, then 2× and 5×).
	var ticks []float64
	for _, t := range chartTicks {
		if t >= axisLo && t <= axisHi {
			ticks = append(ticks, t)
		}
	}
	labelled := map[float64]bool{}
	for _, decades := range []bool{true, false} {
		for _, t := range ticks {
			d := math.Log10(t)
			if (math.Abs(d-math.Round(d)) < 1e-9) != decades {
				continue
			}
			room := true
			for l, on := range labelled {
				room = room && (!on || math.Abs(xOf(l)-xOf(t)) >= 34)
			}
			labelled[t] = room
		}
	}
	for _, t := range ticks {
		x := xOf(t)
		stroke, width := colourGrid, 1
		if t == 1 {
			stroke, width = colourText, 2
		}
		f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%d"/>`+"\n", x, plotTop, x, plotBottom, stroke, width)
		if !labelled[t] {
			continue
		}
		for _, ty := range []float64{plotTop - 6, plotBottom + 16} {
			f(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="11">%s</text>`+"\n", x, ty, esc(formatTick(t)))
		}
	}

	// The grid goes over the shading, the bars over the grid.
	for _, rw := range rows {
		if rw.heading != "" {
			f(`<text x="12" y="%.1f" font-size="13" font-weight="bold">%s</text>`+"\n", rw.y+18, esc(rw.heading))
			continue
		}
		x := rw.ratio
		mid := rw.y + chartRowH/2
		colour := colourNone
		if x.Target > 0 {
			colour = colourMet
			if x.Value < x.Target {
				colour = colourMissed
			}
		}
		f(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", chartLabelX, mid+4, esc(x.Name+" vs "+x.Against))
		x0, x1 := xOf(1), xOf(x.Value)
		if x1 < x0 {
			x0, x1 = x1, x0
		}
		f(`<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="%s"><title>%s</title></rect>`+"\n",
			x0, mid-chartBarH/2, math.Max(x1-x0, 1), chartBarH, colour, esc(x.Name+" vs "+x.Against+": "+formatRatio(x.Value)))
		// A cap at the value's end: a ratio near 1× has a bar too short to see.
		cap := xOf(x.Value)
		f(`<rect x="%.1f" y="%.1f" width="2" height="%d" fill="%s"/>`+"\n", math.Min(cap, chartPlotX+chartPlotW-2), mid-chartBarH/2-2, chartBarH+4, colour)
		if x.Target > 0 {
			tx := xOf(x.Target)
			f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`+"\n", tx, rw.y+1, tx, rw.y+chartRowH-1, colourText)
		}
		text := formatRatio(x.Value)
		if x.Target > 0 {
			text += ", target " + formatRatio(x.Target)
		}
		f(`<text x="%d" y="%.1f">%s</text>`+"\n", chartTextX, mid+4, esc(text))
	}
	f("</svg>\n")
	return w.Flush()
}

// formatTick writes an axis value the short way: 0.5×, 1×, 20×.
func formatTick(t float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", t), "0"), ".") + "×"
}

// formatRatio writes a ratio with three significant digits or two decimals, whichever is
// longer: 0.93×, 3.60×, 14.2×, 1630×, 0.00123×.
func formatRatio(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f×", v)
	case v >= 10:
		return fmt.Sprintf("%.1f×", v)
	case v >= 0.01:
		return fmt.Sprintf("%.2f×", v)
	}
	return fmt.Sprintf("%.3g×", v)
}

// esc escapes s for XML text and attribute values.
func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
