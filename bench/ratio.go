package bench

// Ratio is one comparison a section of a run reports: crkvol's figure divided by a reference
// figure measured in the same run (or, for a ceiling, computed from a measurement of the same
// run). The chart (--chart) draws every ratio of a run; the tables print them beside the
// figures they come from.
type Ratio struct {
	// Section is the section that measured it: "sector", "io", "rewrap", "kms" or "nbd".
	Section string `json:"section"`
	// Name says what was measured, short enough for a chart label, such as
	// "vaes encrypt 4096" or "random 4 KiB write, dirty".
	Name string `json:"name"`
	// Value is crkvol's figure over the reference's.
	Value float64 `json:"value"`
	// Against names the reference, such as "openssl", "raw file", "ceiling" or "1 caller".
	Against string `json:"against"`
	// Target is the ratio the project aims at, 0 if none.
	Target float64 `json:"target,omitempty"`
}
