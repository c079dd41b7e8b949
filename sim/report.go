package sim

import (
	"fmt"
	"html"
	"io"
	"slices"
	"sort"
	"strings"
	"time"
)

// Report is what a run found. Its JSON form is the `--report` file.
type Report struct {
	Scenario    Scenario `json:"scenario"`
	WallSeconds float64  `json:"wallSeconds"`

	// Rotations counts key rotations (policy and manual).
	Rotations       int `json:"rotations"`
	PolicyRotations int `json:"policyRotations"`
	ManualRotations int `json:"manualRotations"`
	// Rewraps counts volumes rewrapped to a new version, over every pass.
	Rewraps int `json:"rewraps"`
	// RewrapFailures counts volumes a pass could not rewrap after its retries (they kept
	// their old, valid wrapping until a later pass); RewrapsAborted those a crash cut off.
	RewrapFailures int `json:"rewrapFailures"`
	RewrapsAborted int `json:"rewrapsAborted"`
	// StaleAtEnd counts volumes still on an older version when the run ended, before the
	// fault-free reconciliation that precedes the audit.
	StaleAtEnd int `json:"staleAtEnd"`
	// Retries counts rewrap attempts beyond the first.
	Retries int `json:"retries"`
	// BytesWritten is the header metadata written by rewraps (data is never touched).
	BytesWritten int64 `json:"bytesWritten"`
	// BytesPerRewrap is BytesWritten / Rewraps.
	BytesPerRewrap float64 `json:"bytesPerRewrap"`
	// Restarts counts simulated process restarts after crashes; SyncFailures the
	// reconciliation passes that could not start (the key service refused to list).
	Restarts     int `json:"restarts"`
	SyncFailures int `json:"syncFailures"`

	FaultsInjected int         `json:"faultsInjected"`
	Faults         FaultCounts `json:"faults"`

	Attaches Attaches `json:"attaches"`
	Fleet    Fleet    `json:"fleet"`
	// MaxOnOldVersions is the most volumes seen on an older key version at one sample.
	MaxOnOldVersions int `json:"maxOnOldVersions"`

	Keys    []KeyReport  `json:"keys"`
	Passes  []PassReport `json:"passes"`
	Samples []Sample     `json:"samples"`
	Audit   Audit        `json:"audit"`

	// Hosts is the run on hosts (Scenario.Hosts): the agents, the feed's deliveries,
	// convergence and lockout times. Absent without hosts.
	Hosts *HostsReport `json:"hosts,omitempty"`
	// Images is the encrypted custom images of the run (Scenario.Images): their WDEKs'
	// rewraps and their audit. Absent without images.
	Images *ImagesReport `json:"images,omitempty"`
}

// HostsReport describes a run on hosts, where rotations and disables reach the volumes only
// through the key service's lifecycle feed.
type HostsReport struct {
	Hosts int `json:"hosts"`
	// Notifications counts the feed's answers that reached an agent with new events; Lost
	// those lost on the way (agents and attach processes), received again at a later poll.
	Notifications int `json:"notifications"`
	Lost          int `json:"lost"`
	// PagesRetried counts pages an agent could not handle (the key service failed) and
	// handled again at its next poll.
	PagesRetried int `json:"pagesRetried"`
	// AgentDowntimes counts agents stopped for a while; each restart reconciled and handled
	// the events after its saved cursor. Reconciles counts the reconciliations of every
	// agent (at restarts, daily, and the final one).
	AgentDowntimes int `json:"agentDowntimes"`
	Reconciles     int `json:"reconciles"`
	// Disables and Enables count the key disables and the enables that followed them.
	Disables int `json:"disables"`
	Enables  int `json:"enables"`
	// AttachesRefused counts attaches refused because the volume's key was not usable;
	// Reattaches the attached volumes attached again after their key's enable.
	AttachesRefused int `json:"attachesRefused"`
	Reattaches      int `json:"reattaches"`
	// IOServed and IORefused count the I/O of attached volumes (after a disable, every
	// quarter of a second until past the lockout bound); LateIO the I/O served later than a
	// disable plus the lockout bound (the audit fails if there is any).
	IOServed       int     `json:"ioServed"`
	IORefused      int     `json:"ioRefused"`
	LateIO         int     `json:"lateIO"`
	LockoutBoundMs float64 `json:"lockoutBoundMs"`
	// Acks counts the acknowledgements the agents made to the key service (AckFailures
	// those that failed); Confirmed the keys of each host whose state the host's latest
	// acknowledgement confirmed at the end (the audit fails for any other), of HostKeys.
	Acks        int `json:"acks"`
	AckFailures int `json:"ackFailures"`
	Confirmed   int `json:"confirmed"`
	// HostKeys counts the keys of each host's volumes, summed over the hosts.
	HostKeys int `json:"hostKeys"`
	// Convergence has one entry per rotation; Lockouts one per disable.
	Convergence []Convergence `json:"convergence"`
	Lockouts    []Lockout     `json:"lockouts"`
}

// Convergence is the time a rotation took to reach the volumes of its key: per volume, the
// virtual time from the rotation's event to the volume's token on the new version (or a
// later one).
type Convergence struct {
	At         time.Time `json:"at"`
	Key        string    `json:"key"`
	Generation int       `json:"generation"`
	Trigger    string    `json:"trigger"` // "policy" or "manual"
	// Volumes is the number of volumes of the key at the rotation; Converged those that
	// reached the version (all of them, or the audit fails).
	Volumes   int     `json:"volumes"`
	Converged int     `json:"converged"`
	P50Ms     float64 `json:"p50Ms"`
	P99Ms     float64 `json:"p99Ms"`
	MaxMs     float64 `json:"maxMs"`
}

// Lockout is the time a disable took to stop the attached volumes of its key: per volume,
// the virtual time from the disable's event to the volume's master key wiped.
type Lockout struct {
	At  time.Time `json:"at"`
	Key string    `json:"key"`
	// Attached is the number of volumes of the key attached at the disable; LockedOut those
	// that stopped serving; LateIO the I/O they served after the lockout bound.
	Attached  int `json:"attached"`
	LockedOut int `json:"lockedOut"`
	LateIO    int `json:"lateIO"`
	// AgentsDown is the number of hosts whose agent was down at the disable (their attach
	// processes stop their volumes all the same).
	AgentsDown int     `json:"agentsDown"`
	P50Ms      float64 `json:"p50Ms"`
	P99Ms      float64 `json:"p99Ms"`
	MaxMs      float64 `json:"maxMs"`
}

// Attaches are the attaches of a run.
type Attaches struct {
	Total int `json:"total"`
	// UnwrapFailures are attaches refused because the key service failed (injected faults).
	UnwrapFailures int `json:"unwrapFailures"`
	// OtherFailures and DataMismatches are defects: they fail the audit.
	OtherFailures  int `json:"otherFailures"`
	DataMismatches int `json:"dataMismatches"`
	Writes         int `json:"writes"`
	// Detached counts attachments closed at their detach event (data checked again);
	// Dropped those lost when the volume service crashed; WhileDown attaches not tried
	// because it was down.
	Detached  int      `json:"detached"`
	Dropped   int      `json:"dropped"`
	WhileDown int      `json:"whileDown"`
	Errors    []string `json:"errors,omitempty"`
}

// Fleet counts volumes created and deleted during the run.
type Fleet struct {
	Created        int `json:"created"`
	CreateFailures int `json:"createFailures"`
	Deleted        int `json:"deleted"`
	DeleteRetries  int `json:"deleteRetries"`
	// SkippedWhileDown counts creates and deletes not tried while the service was down.
	SkippedWhileDown int `json:"skippedWhileDown"`
}

// KeyReport describes one root key over the run.
type KeyReport struct {
	Name         string `json:"name"`
	ID           string `json:"id"`
	PolicyMonths int    `json:"policyMonths"`
	Rotations    int    `json:"rotations"`
	Versions     int    `json:"versions"`
	Volumes      int    `json:"volumes"`
	// Images is the number of catalog images of the key at the end.
	Images                   int `json:"images,omitempty"`
	MaxVersionsOutstanding   int `json:"maxVersionsOutstanding"`
	FinalVersionsOutstanding int `json:"finalVersionsOutstanding"`
}

// PassReport is one rewrap pass: the rewrap of a rotation, or a sync.
type PassReport struct {
	At time.Time `json:"at"`
	// Trigger is "policy", "manual" (rotations), "sync" (the reconciliation job), "restart"
	// (after a crash), "final" (the fault-free reconciliation before the audit) or "lazy".
	Trigger        string `json:"trigger"`
	Key            string `json:"key"`
	Generation     int    `json:"generation"` // the key version the pass brought volumes to, 1 = first
	Volumes        int    `json:"volumes"`
	Rewrapped      int    `json:"rewrapped"`
	AlreadyCurrent int    `json:"alreadyCurrent"`
	Retries        int    `json:"retries"`
	Failed         int    `json:"failed"`  // failed after their retries (faults)
	Aborted        int    `json:"aborted"` // cut off by a crash of the pass
	// Images is the number of catalog images the pass looked at (not among Volumes):
	// ImagesRewrapped got a new WDEK, ImagesAlreadyCurrent had it already, ImagesFailed
	// failed after their retries and ImagesAborted were cut off by a crash.
	Images               int     `json:"images,omitempty"`
	ImagesRewrapped      int     `json:"imagesRewrapped,omitempty"`
	ImagesAlreadyCurrent int     `json:"imagesAlreadyCurrent,omitempty"`
	ImagesFailed         int     `json:"imagesFailed,omitempty"`
	ImagesAborted        int     `json:"imagesAborted,omitempty"`
	Crashed              string  `json:"crashed,omitempty"` // the crash point that aborted the pass
	FirstFailure         string  `json:"firstFailure,omitempty"`
	BytesWritten         int64   `json:"bytesWritten"`
	WallMs               float64 `json:"wallMs"`
	// FleetMs is the time to rewrap the pass's volumes: wall time plus the injected
	// key-service latency, spread over the workers.
	FleetMs float64 `json:"fleetMs"`
	// P50Ms and P99Ms are per-volume rewrap latencies (wall time with retries, plus injected
	// latency).
	P50Ms float64 `json:"p50Ms"`
	P99Ms float64 `json:"p99Ms"`
}

// Sample is the fleet's registrations at one moment.
type Sample struct {
	At            time.Time   `json:"at"`
	Volumes       int         `json:"volumes"`
	OnOldVersions int         `json:"onOldVersions"`
	ByGeneration  map[int]int `json:"byGeneration"` // key version generation (1 = first) -> volumes
	// Images and ImagesOnOldVersions count the catalog images likewise (not in the above).
	Images              int `json:"images,omitempty"`
	ImagesOnOldVersions int `json:"imagesOnOldVersions,omitempty"`
}

// Audit is the final check of every volume.
type Audit struct {
	// Passed is true when every volume attached and its data matched.
	Passed             bool     `json:"passed"`
	Volumes            int      `json:"volumes"`
	Attached           int      `json:"attached"`
	DataVerified       int      `json:"dataVerified"`
	Failed             int      `json:"failed"`
	StrayRegistrations int      `json:"strayRegistrations"`
	Failures           []string `json:"failures,omitempty"`
}

func newReport(sc Scenario) *Report { return &Report{Scenario: sc} }

func (r *Report) addPass(p PassReport) {
	r.Passes = append(r.Passes, p)
	r.Rewraps += p.Rewrapped
	r.RewrapFailures += p.Failed
	r.RewrapsAborted += p.Aborted
	if r.Images != nil {
		r.Images.Rewraps += p.ImagesRewrapped
		r.Images.RewrapFailures += p.ImagesFailed
		r.Images.RewrapsAborted += p.ImagesAborted
	}
	r.Retries += p.Retries
	r.BytesWritten += p.BytesWritten
	if r.Rewraps > 0 {
		r.BytesPerRewrap = float64(r.BytesWritten) / float64(r.Rewraps)
	}
}

// Err returns an error when the audit failed, or when attaches found defects.
func (r *Report) Err() error {
	if h := r.Hosts; h != nil && h.LateIO > 0 {
		return fmt.Errorf("sim: audit failed: attached volumes served %d I/O after the lockout bound (%s after their key's disable); %d of %d volumes failed",
			h.LateIO, time.Duration(h.LockoutBoundMs*float64(time.Millisecond)), r.Audit.Failed, r.Audit.Volumes)
	}
	if !r.Audit.Passed || r.Attaches.OtherFailures > 0 || r.Attaches.DataMismatches > 0 {
		images := ""
		if im := r.Images; im != nil && im.Failed > 0 {
			images = fmt.Sprintf(" (%d of %d images failed)", im.Failed, im.Images)
		}
		return fmt.Errorf("sim: audit failed: %d of %d volumes failed%s, %d attach failures, %d data mismatches",
			r.Audit.Failed-r.imagesFailed(), r.Audit.Volumes, images, r.Attaches.OtherFailures, r.Attaches.DataMismatches)
	}
	return nil
}

// WriteSummary prints the human summary.
func (r *Report) WriteSummary(w io.Writer) error {
	sc := r.Scenario
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("crkvol sim: %d volumes (%s, sparse) on %d keys, %d months from %s, seed %d; wall time %.1f s",
		sc.Volumes, sc.VolumeSize, sc.Keys, sc.Months, sc.Start.Format("2006-01-02"), sc.Seed, r.WallSeconds)
	p("")
	p("Rotations       %d (%d by policy, %d manual)", r.Rotations, r.PolicyRotations, r.ManualRotations)
	p("Rewraps         %d volumes rewrapped, %d retries, %d failed after retries and %d cut off by crashes (all kept their old wrapping until a later pass)", r.Rewraps, r.Retries, r.RewrapFailures, r.RewrapsAborted)
	p("Bytes written   %d of header metadata (%.0f per rewrap), 0 bytes of data", r.BytesWritten, r.BytesPerRewrap)
	var rot []PassReport
	for _, ps := range r.Passes {
		if ps.Trigger == "policy" || ps.Trigger == "manual" {
			rot = append(rot, ps)
		}
	}
	if len(rot) > 0 {
		fleet := make([]float64, len(rot))
		p50 := make([]float64, len(rot))
		p99 := make([]float64, len(rot))
		for i, ps := range rot {
			fleet[i], p50[i], p99[i] = ps.FleetMs, ps.P50Ms, ps.P99Ms
		}
		p("Per rotation    fleet rewrap time median %.0f ms (max %.0f ms); per-volume p50 %.1f ms, p99 %.1f ms (medians over rotations)",
			median(fleet), slices.Max(fleet), median(p50), median(p99))
	}
	p("Faults          %d injected: %d KMS errors, %d calls during outages, %d crashes%s, %d data corruptions, %s of added latency",
		r.FaultsInjected, r.Faults.KMSErrors, r.Faults.Unavailable, sumCrashes(r.Faults.Crashes), crashList(r.Faults.Crashes), r.Faults.Corruptions, r.Faults.LatencyAdded.Round(time.Millisecond))
	p("Recovery        %d restarts after crashes, %d sync passes, %d syncs refused", r.Restarts, countTrigger(r.Passes, "sync", "restart"), r.SyncFailures)
	p("Attaches        %d (%d refused by KMS faults, %d other failures, %d data mismatches, %d with writes; %d detached, %d dropped by crashes, %d not tried while down)",
		r.Attaches.Total, r.Attaches.UnwrapFailures, r.Attaches.OtherFailures, r.Attaches.DataMismatches, r.Attaches.Writes, r.Attaches.Detached, r.Attaches.Dropped, r.Attaches.WhileDown)
	p("Fleet changes   %d created (%d failed), %d deleted (%d delete retries), %d skipped while down", r.Fleet.Created, r.Fleet.CreateFailures, r.Fleet.Deleted, r.Fleet.DeleteRetries, r.Fleet.SkippedWhileDown)
	p("Old versions    at most %d volumes on an older key version at a sample (after every rotation, restart and sync, and weekly); %d at the end, before the final reconciliation", r.MaxOnOldVersions, r.StaleAtEnd)
	r.writeImages(p)
	r.writeHosts(p)
	p("")
	p("%-8s %6s %9s %8s %8s %12s %12s", "key", "policy", "rotations", "versions", "volumes", "max outst.", "final outst.")
	for _, k := range r.Keys {
		pol := "-"
		if k.PolicyMonths > 0 {
			pol = fmt.Sprintf("%dmo", k.PolicyMonths)
		}
		p("%-8s %6s %9d %8d %8d %12d %12d", k.Name, pol, k.Rotations, k.Versions, k.Volumes, k.MaxVersionsOutstanding, k.FinalVersionsOutstanding)
	}
	p("")
	status := "PASSED"
	if r.Err() != nil {
		status = "FAILED"
	}
	p("Audit %s: %d volumes, %d attach and verify, %d failed, %d stray registrations", status, r.Audit.Volumes, r.Audit.DataVerified, r.Audit.Failed-r.imagesFailed(), r.Audit.StrayRegistrations)
	if im := r.Images; im != nil {
		status := "PASSED"
		if im.Failed > 0 {
			status = "FAILED"
		}
		p("Image audit %s: %d images, %d with their WDEK on their key's latest version, %d unlock their LUKS1 header, %d files unchanged, %d volumes created from them read back, %d failed",
			status, im.Images, im.Current, im.Unlocked, im.Unchanged, im.VolumesCreated, im.Failed)
	}
	for _, f := range r.Audit.Failures {
		p("  %s", f)
	}
	for _, e := range r.Attaches.Errors {
		p("  attach: %s", e)
	}
	return nil
}

// imagesFailed is the number of images that failed the audit (among Audit.Failed).
func (r *Report) imagesFailed() int {
	if r.Images == nil {
		return 0
	}
	return r.Images.Failed
}

// writeImages prints the line of the images.
func (r *Report) writeImages(p func(string, ...any)) {
	im := r.Images
	if im == nil {
		return
	}
	p("Images          %d encrypted qcow2 images in the catalog (%d exported into it, %d imported with their WDEK): %d WDEKs rewrapped with their keys' volumes, %d failed after retries and %d cut off by crashes; at most %d on an older key version at a sample, %d at the end; image files never written",
		im.Images, im.Exported, im.Imported, im.Rewraps, im.RewrapFailures, im.RewrapsAborted, im.MaxOnOldVersions, im.StaleAtEnd)
}

func countTrigger(ps []PassReport, triggers ...string) int {
	n := 0
	for _, p := range ps {
		if slices.Contains(triggers, p.Trigger) {
			n++
		}
	}
	return n
}

func sumCrashes(m map[string]int) int {
	n := 0
	for _, c := range m {
		n += c
	}
	return n
}

func crashList(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for _, k := range crashPoints {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	sort.Float64s(s)
	return s[len(s)/2]
}

// WriteChart draws an SVG stacked-area chart of volumes per key version generation over
// time (generation 1 is each key's first version, 2 its second, …; all keys together).
func (r *Report) WriteChart(w io.Writer) error {
	const (
		width, height            = 900, 420
		left, right, top, bottom = 70, 170, 40, 50
	)
	samples := r.Samples
	if len(samples) == 0 {
		return fmt.Errorf("sim: no samples to chart")
	}
	maxGen, maxVol := 1, 1
	for _, s := range samples {
		for g := range s.ByGeneration {
			maxGen = max(maxGen, g)
		}
		maxVol = max(maxVol, s.Volumes)
	}
	t0, t1 := samples[0].At, samples[len(samples)-1].At
	span := max(t1.Sub(t0), time.Hour)
	pw, ph := float64(width-left-right), float64(height-top-bottom)
	x := func(t time.Time) float64 { return float64(left) + pw*float64(t.Sub(t0))/float64(span) }
	y := func(v float64) float64 { return float64(top) + ph*(1-v/float64(maxVol)) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15">%s</text>`+"\n", left, html.EscapeString(fmt.Sprintf(
		"Volumes per key version over time (%d volumes, %d keys, seed %d)", r.Scenario.Volumes, r.Scenario.Keys, r.Scenario.Seed)))
	// Stacked areas, oldest generation at the bottom.
	lower := make([]float64, len(samples))
	for g := 1; g <= maxGen; g++ {
		upper := make([]float64, len(samples))
		for i, s := range samples {
			upper[i] = lower[i] + float64(s.ByGeneration[g])
		}
		var pts []string
		for i, s := range samples {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.At), y(upper[i])))
		}
		for i := len(samples) - 1; i >= 0; i-- {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(samples[i].At), y(lower[i])))
		}
		color := palette[(g-1)%len(palette)]
		fmt.Fprintf(&b, `<polygon points="%s" fill="%s" stroke="%s" stroke-width="0.5"><title>version %d</title></polygon>`+"\n", strings.Join(pts, " "), color, color, g)
		ly := top + 18*(g-1)
		if ly < height-bottom {
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">version %d</text>`+"\n", width-right+20, ly, color, width-right+38, ly+11, g)
		}
		lower = upper
	}
	// Axes: volumes on the left, months along the bottom.
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, height-bottom)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, height-bottom, width-right, height-bottom)
	for i := 0; i <= 4; i++ {
		v := float64(maxVol) * float64(i) / 4
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left-6, y(v)+4, v)
	}
	months := int(span.Hours()/24/30) + 1
	step := max(1, months/12)
	for m := 0; m <= months; m += step {
		t := t0.AddDate(0, m, 0)
		if t.After(t1) {
			break
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x(t), height-bottom+18, t.Format("2006-01"))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">virtual time</text>`+"\n", left+int(pw/2), height-10)
	fmt.Fprintf(&b, `<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">volumes</text>`+"\n", top+int(ph/2), top+int(ph/2))
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

var palette = []string{"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728"}

// writeHosts prints the lines of a run on hosts.
func (r *Report) writeHosts(p func(string, ...any)) {
	h := r.Hosts
	if h == nil {
		return
	}
	sc := r.Scenario
	p("Hosts           %d, each with an agent following the lifecycle feed: %d answers with events, %d lost (received again a poll later), %d pages retried, %d agent downtimes (%s each), %d reconciliations",
		h.Hosts, h.Notifications, h.Lost, h.PagesRetried, h.AgentDowntimes, time.Duration(sc.Faults.AgentDowntimeLength), h.Reconciles)
	if len(h.Convergence) > 0 {
		var p50, p99, mx []float64
		volumes, converged := 0, 0
		for _, c := range h.Convergence {
			volumes += c.Volumes
			converged += c.Converged
			if c.Converged > 0 {
				p50, p99, mx = append(p50, c.P50Ms), append(p99, c.P99Ms), append(mx, c.MaxMs)
			}
		}
		line := fmt.Sprintf("Convergence     %d rotations, %d of %d volumes converged", len(h.Convergence), converged, volumes)
		if len(p50) > 0 {
			line += fmt.Sprintf("; time to the new version per volume: p50 %s (median over rotations), p99 %s (median), max %s (worst rotation)",
				msDur(median(p50)), msDur(median(p99)), msDur(slices.Max(mx)))
		}
		p("%s", line)
	}
	var p50, p99, mx []float64
	attached, locked := 0, 0
	for _, l := range h.Lockouts {
		attached += l.Attached
		locked += l.LockedOut
		if l.LockedOut > 0 {
			p50, p99, mx = append(p50, l.P50Ms), append(p99, l.P99Ms), append(mx, l.MaxMs)
		}
	}
	line := fmt.Sprintf("Lockout         %d disables (%d enables), %d of %d attached volumes stopped", h.Disables, h.Enables, locked, attached)
	if len(p50) > 0 {
		line += fmt.Sprintf("; time to stop: p50 %s (median over disables), p99 %s (median), max %s (worst disable)",
			msDur(median(p50)), msDur(median(p99)), msDur(slices.Max(mx)))
	}
	p("%s; bound %s: %d I/O served after it, %d served before, %d refused; %d attaches refused, %d re-attached after an enable",
		line, msDur(h.LockoutBoundMs), h.LateIO, h.IOServed-h.LateIO, h.IORefused, h.AttachesRefused, h.Reattaches)
	p("Acks            %d acknowledgements of the agents to the key service (%d failed); at the end, %d of %d keys of the hosts' volumes confirmed by their host",
		h.Acks, h.AckFailures, h.Confirmed, h.HostKeys)
	if len(h.Convergence) > 0 {
		p("")
		p("%-20s %-8s %3s %-7s %7s %9s %10s %10s %10s", "rotation", "key", "gen", "trigger", "volumes", "converged", "p50", "p99", "max")
		for _, c := range h.Convergence {
			p("%-20s %-8s %3d %-7s %7d %9d %10s %10s %10s", c.At.UTC().Format("2006-01-02T15:04:05Z"), c.Key, c.Generation, c.Trigger,
				c.Volumes, c.Converged, msDur(c.P50Ms), msDur(c.P99Ms), msDur(c.MaxMs))
		}
	}
	if len(h.Lockouts) > 0 {
		p("")
		p("%-20s %-8s %8s %7s %7s %11s %10s %10s %10s", "disable", "key", "attached", "stopped", "late IO", "agents down", "p50", "p99", "max")
		for _, l := range h.Lockouts {
			p("%-20s %-8s %8d %7d %7d %11d %10s %10s %10s", l.At.UTC().Format("2006-01-02T15:04:05Z"), l.Key, l.Attached, l.LockedOut, l.LateIO, l.AgentsDown,
				msDur(l.P50Ms), msDur(l.P99Ms), msDur(l.MaxMs))
		}
	}
}

// msDur prints milliseconds as a duration, rounded to the millisecond.
func msDur(m float64) string {
	return time.Duration(m * float64(time.Millisecond)).Round(time.Millisecond).String()
}
