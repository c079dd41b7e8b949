package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/chrometest"
	"crkvol/internal/tooltest"
)

// chartReport is a report with ratios of every kind a chart must draw: above and below 1×,
// targets met and missed, none, extreme values, and names that need escaping.
func chartReport() *Report {
	return &Report{
		Machine: Machine{CPU: "Test CPU <v2> & co", Cores: 2, MemoryBytes: 8 << 30, Kernel: "Linux 6.1", FileSystem: "ext4 /dev/vda1 on /", GoVersion: "go1.26"},
		Ratios: []Ratio{
			{Section: "sector", Name: "vaes encrypt 4096", Value: 3.6, Against: "openssl", Target: 2.1},
			{Section: "sector", Name: "aesni encrypt 512", Value: 0.93, Against: "openssl", Target: 0.95},
			{Section: "sector", Name: "vaes encrypt 4096", Value: 0.89, Against: "ceiling"},
			{Section: "io", Name: "random 4 KiB write, dirty", Value: 0.21, Against: "raw file", Target: 0.8},
			{Section: "io", Name: "sequential 1 MiB read, clean", Value: 1.02, Against: "raw file", Target: 0.8},
			{Section: "kms", Name: "HTTP, 32 callers", Value: 14.2, Against: "1 caller", Target: 10},
			{Section: "kms", Name: "not measured", Value: math.NaN(), Against: "1 caller"},
			{Section: "kms", Name: "zero", Value: 0, Against: "1 caller"},
			{Section: "rewrap", Name: "local <fleet> & co", Value: 0.64, Against: "2-flush ceiling", Target: 0.6},
			{Section: "nbd", Name: "encrypted volume write", Value: 1630, Against: "qemu-nbd"},
			{Section: "nbd", Name: "tiny", Value: 1e-5, Against: "qemu-nbd"},
		},
	}
}

// TestChartIsValidSVG draws a chart and reads it back with encoding/xml: it is well-formed
// XML, an SVG root with a size, one bar per drawable ratio (NaN and zero are left out, values
// beyond the axis are clamped to it) grouped under its section's heading, a tick per target,
// the 1× line, escaped text; drawing the same report twice gives the same bytes.
func TestChartIsValidSVG(t *testing.T) {
	t.Parallel()
	r := chartReport()
	var a, b bytes.Buffer
	require.NoError(t, r.WriteChart(&a))
	require.NoError(t, r.WriteChart(&b))
	assert.Equal(t, a.String(), b.String(), "the same report draws the same bytes")

	type element struct {
		name  string
		attrs map[string]string
		text  string
	}
	var elems []element
	dec := xml.NewDecoder(bytes.NewReader(a.Bytes()))
	dec.Strict = true
	var stack []int
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		switch tok := tok.(type) {
		case xml.StartElement:
			e := element{name: tok.Name.Local, attrs: map[string]string{}}
			for _, at := range tok.Attr {
				e.attrs[at.Name.Local] = at.Value
			}
			elems = append(elems, e)
			stack = append(stack, len(elems)-1)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 {
				elems[stack[len(stack)-1]].text += string(tok)
			}
		}
	}
	require.NotEmpty(t, elems)
	root := elems[0]
	assert.Equal(t, "svg", root.name)
	assert.Equal(t, "1000", root.attrs["width"])
	assert.Regexp(t, `^\d+$`, root.attrs["height"])

	var bars, texts []element
	lines := 0
	for _, e := range elems {
		switch {
		case e.name == "rect" && strings.HasPrefix(e.attrs["y"], "") && e.attrs["height"] == "12" && e.attrs["width"] != "14":
			bars = append(bars, e)
		case e.name == "text":
			texts = append(texts, e)
		case e.name == "line":
			lines++
		}
	}
	assert.Len(t, bars, 9, "one bar per drawable ratio: NaN and 0 have none")
	var all []string
	for _, e := range texts {
		all = append(all, e.text)
	}
	joined := strings.Join(all, "\n")
	for _, want := range []string{
		"Test CPU <v2> & co, 2 cores, 8.0 GiB, Linux 6.1, ext4 /dev/vda1 on /, go1.26",
		"sector", "io", "kms", "rewrap", "nbd",
		"local <fleet> & co vs 2-flush ceiling", "0.64×, target 0.60×", "vaes encrypt 4096 vs openssl", "3.60×, target 2.10×",
		"1630×", "1e-05×", "14.2×, target 10.0×", "1×",
	} {
		assert.Contains(t, joined, want)
	}
	assert.NotContains(t, joined, "not measured")
	assert.NotContains(t, joined, "NaN")
	// Headings come before their bars, in the ratios' order.
	assert.Less(t, strings.Index(joined, "\nsector\n"), strings.Index(joined, "vaes encrypt 4096"))
	assert.Less(t, strings.Index(joined, "\nio\n"), strings.Index(joined, "random 4 KiB write, dirty"))
	assert.Less(t, strings.Index(joined, "random 4 KiB write, dirty"), strings.Index(joined, "\nkms\n"))

	// Colours: met, missed, none.
	fills := map[string]int{}
	for _, b := range bars {
		fills[b.attrs["fill"]]++
	}
	assert.Equal(t, map[string]int{colourMet: 4, colourMissed: 2, colourNone: 3}, fills)

	// Every coordinate is inside the image.
	num := regexp.MustCompile(`^-?\d+(\.\d+)?$`)
	for _, e := range elems {
		for _, k := range []string{"x", "x1", "x2"} {
			if v, ok := e.attrs[k]; ok {
				require.Regexp(t, num, v)
				assert.False(t, strings.HasPrefix(v, "-"), "%s %s=%s", e.name, k, v)
			}
		}
	}
	for _, b := range bars {
		x, w := mustFloat(t, b.attrs["x"]), mustFloat(t, b.attrs["width"])
		assert.GreaterOrEqual(t, x, float64(chartPlotX))
		assert.LessOrEqual(t, x+w, float64(chartPlotX+chartPlotW)+0.1)
	}
}

// TestChartWithoutRatios: a run that measured nothing still draws a valid image that says so.
func TestChartWithoutRatios(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	require.NoError(t, (&Report{Machine: Machine{CPU: "x", Cores: 1, GoVersion: "go"}}).WriteChart(&b))
	assert.Contains(t, b.String(), "no ratios")
	dec := xml.NewDecoder(&b)
	for {
		_, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
	}
}

func mustFloat(t *testing.T, s string) float64 {
	t.Helper()
	var f float64
	_, err := fmt.Sscan(s, &f)
	require.NoError(t, err)
	return f
}

// TestChartInBrowser renders the chart in chromium (long test) and writes a PNG of it, to
// the file CRKVOL_CHART_PNG names if set (to look at), else under the test's directory: the
// SVG loads as an image of its declared size, every bar has a size on screen, and no label
// is cut off at the left or right edge.
func TestChartInBrowser(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("browser test: set CRKVOL_LONG_TESTS=1")
	}
	var svg bytes.Buffer
	require.NoError(t, chartReport().WriteChart(&svg))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/svg+xml")
		_, _ = w.Write(svg.Bytes())
	}))
	defer srv.Close()
	b := chrometest.Start(t, 0)
	b.Do("opening the chart", chromedp.Navigate(srv.URL+"/bench.svg"), chromedp.WaitReady(chromedp.CSS("svg")))
	eval := func(expr string) any {
		t.Helper()
		v, err := chromedp.Run(b.Context(), chromedp.Evaluate[any](expr))
		require.NoError(t, err, "evaluating %s", expr)
		return v
	}
	width := eval(`document.documentElement.getBoundingClientRect().width`)
	bars := eval(`[...document.querySelectorAll('rect[height="12"]')].filter(r => r.getBBox().width > 0 && r.getAttribute('width') !== '14').length`)
	outside := eval(`[...document.querySelectorAll('text')].filter(t => { const b = t.getBBox(); return b.x < 0 || b.x + b.width > 1000 }).map(t => t.textContent)`)
	assert.Equal(t, 1000.0, width)
	assert.Equal(t, 9.0, bars)
	assert.Empty(t, outside, "labels cut off at an edge")
	png := os.Getenv("CRKVOL_CHART_PNG")
	if png == "" {
		png = filepath.Join(t.TempDir(), "chart.png")
	}
	b.FullScreenshot(png)
	st, err := os.Stat(png)
	require.NoError(t, err)
	assert.Positive(t, st.Size())
}
