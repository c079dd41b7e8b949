// Package sim drives fleets of real crkvol volumes through months of virtual time: it runs the
// real crk key service and real LUKS2 volume images (small sparse files) under a scenario of
// rotation policies, manual rotations, attaches, volumes created and deleted, KMS faults and
// crashes inside rewraps, then audits that every volume still attaches and holds the data
// written to it. Encrypted custom images (LUKS-encrypted qcow2 files in the image catalog,
// Scenario.Images) ride along: rotations rewrap their WDEKs with the volumes, under the same
// faults, and the audit checks that each WDEK is current and unlocks its image, that no image
// file changed, and that a volume created from each image reads back its content. Nothing in
// it models the code paths it exercises: only time and faults are simulated.
package sim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"crkvol/volume"
)

// ErrScenario marks an invalid scenario.
var ErrScenario = errors.New("sim: invalid scenario")

// Scenario describes one run. Rates are per month of virtual time (30 days); the zero value of
// an optional field takes the default documented on it. A file may be YAML or JSON with the
// field names below.
type Scenario struct {
	// Seed makes the run reproducible: the same scenario and seed give the same events,
	// faults and data.
	Seed uint64 `json:"seed" yaml:"seed"`
	// Start is the virtual start time; 2026-01-01T00:00:00Z if zero.
	Start time.Time `json:"start" yaml:"start"`
	// Months is the virtual duration (1-120).
	Months int `json:"months" yaml:"months"`

	// Keys is the number of root keys (at least 1).
	Keys int `json:"keys" yaml:"keys"`
	// Volumes is the number of volumes at the start (at least 1).
	Volumes int `json:"volumes" yaml:"volumes"`
	// Mapping assigns volumes to keys: "round-robin" (default), "random", or "skewed" (key i
	// gets a share proportional to 1/(i+1)).
	Mapping string `json:"mapping" yaml:"mapping"`
	// VolumeSize is each volume's data size, e.g. "1MiB" (default) or "1GiB"; images are
	// sparse.
	VolumeSize string `json:"volumeSize" yaml:"volumeSize"`

	// PolicyMonths is the rotation policy of every key, 1-12; 0 for no policy.
	PolicyMonths int `json:"policyMonths" yaml:"policyMonths"`
	// KeyPolicyMonths overrides PolicyMonths per key (index = key number; 0 = no policy).
	KeyPolicyMonths []int `json:"keyPolicyMonths" yaml:"keyPolicyMonths"`
	// ManualRotationsPerMonth is the expected number of on-demand rotations per key per
	// month, at random times (never within an hour of the key's last rotation).
	ManualRotationsPerMonth float64 `json:"manualRotationsPerMonth" yaml:"manualRotationsPerMonth"`

	// AttachesPerMonth is the number of attaches across the fleet per month: a random volume
	// is opened through the key service, its data checked, sometimes rewritten, and closed.
	// Default min(Volumes, 500); -1 for none.
	AttachesPerMonth int `json:"attachesPerMonth" yaml:"attachesPerMonth"`
	// CreatesPerMonth and DeletesPerMonth are volumes created and deleted (crypto-erased and
	// removed) per month during the run.
	CreatesPerMonth int `json:"createsPerMonth" yaml:"createsPerMonth"`
	DeletesPerMonth int `json:"deletesPerMonth" yaml:"deletesPerMonth"`

	// Images is the number of encrypted custom images (LUKS-encrypted qcow2 files in the
	// image catalog, their passphrases wrapped by a root key as WDEKs) made at the start from
	// volumes of the fleet, on each host with Hosts: every rotation of an image's key rewraps
	// its WDEK with the key's volumes (the file is never written), under the same faults and
	// crashes, and the audit checks each image and creates a volume from it (from the first
	// eight of a catalog). 0 (the default) for none.
	Images int `json:"images,omitempty" yaml:"images"`

	// Faults between the volumes and the key service.
	Faults Faults `json:"faults" yaml:"faults"`

	// SyncEvery is how often a reconciliation job runs `key sync` on keys with volumes left
	// on older versions; 24h if zero.
	SyncEvery Duration `json:"syncEvery" yaml:"syncEvery"`
	// SampleEvery is how often the versions of the fleet are sampled for the report and the
	// chart; 7 days if zero.
	SampleEvery Duration `json:"sampleEvery" yaml:"sampleEvery"`
	// Workers is the rewrap concurrency of the volume manager; 16 if zero.
	Workers int `json:"workers" yaml:"workers"`

	// Hosts spreads the fleet over this many simulated storage hosts, each with its own
	// volume registry and manager over the one key service and its own agent (package
	// crkvol/agent): rotations and disables then reach volumes only through the key
	// service's lifecycle feed, never through an in-process rotation hook. 0 (the default)
	// runs one volume service subscribed to the rotation hook, and none of the fields below
	// apply.
	Hosts int `json:"hosts,omitempty" yaml:"hosts"`
	// AttachedPerHost is the number of volumes each host keeps attached through the run,
	// doing I/O; their attach processes follow the lifecycle feed themselves (every
	// AttachPoll) and stop serving when their key is disabled. Default 1.
	AttachedPerHost int `json:"attachedPerHost,omitempty" yaml:"attachedPerHost"`
	// DisablesPerMonth is the number of key disables per month across the keys (a key with
	// attached volumes, at random times), each enabled again after DisableLength (default
	// 1h, at least 30s). Default 1; -1 for none.
	DisablesPerMonth float64  `json:"disablesPerMonth,omitempty" yaml:"disablesPerMonth"`
	DisableLength    Duration `json:"disableLength,omitempty" yaml:"disableLength"`
	// LockoutBound is the time after a disable by which no attached volume of the key may
	// serve I/O any more; the audit fails otherwise. Default 5s.
	LockoutBound Duration `json:"lockoutBound,omitempty" yaml:"lockoutBound"`
	// AgentPoll is an agent's poll interval: after a lost answer of the feed, the agent
	// receives the events again at its next poll, this long after. Default 30s.
	AgentPoll Duration `json:"agentPoll,omitempty" yaml:"agentPoll"`
	// AttachPoll is the poll interval of an attach process following the feed. Default
	// 500ms.
	AttachPoll Duration `json:"attachPoll,omitempty" yaml:"attachPoll"`
}

// Faults are the injected failures.
type Faults struct {
	// FailRate is the probability that a key-service call fails (a retryable error).
	FailRate float64 `json:"failRate" yaml:"failRate"`
	// Latency is added (in virtual time) to every key-service call, with up to as much
	// again of random jitter.
	Latency Duration `json:"latency" yaml:"latency"`
	// Outages are windows, from the start of the run, during which the key service is
	// unreachable.
	Outages []Outage `json:"outages" yaml:"outages"`
	// RandomOutages adds this many outages at random times, each OutageLength long (6h if
	// zero).
	RandomOutages int      `json:"randomOutages" yaml:"randomOutages"`
	OutageLength  Duration `json:"outageLength" yaml:"outageLength"`
	// CrashRate is the probability that the process crashes during a volume's rewrap, at
	// one of the crash points: before the key-service rewrap, after it (before the header
	// commit), in the middle of the header write (a torn write), or after the commit (before
	// the registration update). The crash aborts the whole rewrap pass, like a killed
	// process; the simulated restart runs `key sync`.
	CrashRate float64 `json:"crashRate" yaml:"crashRate"`
	// CorruptData overwrites the stored (encrypted) data of this many volumes at random
	// times, behind crkvol's back, as failing storage would: a check that the audit finds
	// lost data (the run must then fail).
	CorruptData int `json:"corruptData" yaml:"corruptData"`

	// The faults of the lifecycle feed's delivery, with Hosts only.
	//
	// DeliveryDelay is the mean virtual delay between a lifecycle event's commit and a
	// follower (an agent, an attach process) receiving it: uniform between 0 and twice it.
	// Default 100ms.
	DeliveryDelay Duration `json:"deliveryDelay,omitempty" yaml:"deliveryDelay"`
	// NotificationLoss is the probability that an answer of the feed is lost on its way to a
	// follower: the feed is durable, so the follower receives the events again at its next
	// poll (the loss delays, it never drops).
	NotificationLoss float64 `json:"notificationLoss,omitempty" yaml:"notificationLoss"`
	// AgentDowntimes stops an agent this many times at random times (a random host each),
	// each for AgentDowntimeLength (default 1h): events pile up in the feed; at its restart
	// the agent reconciles and handles them from its saved cursor.
	AgentDowntimes      int      `json:"agentDowntimes,omitempty" yaml:"agentDowntimes"`
	AgentDowntimeLength Duration `json:"agentDowntimeLength,omitempty" yaml:"agentDowntimeLength"`
}

// Outage is a window of key-service unavailability.
type Outage struct {
	After    Duration `json:"after" yaml:"after"`
	Duration Duration `json:"duration" yaml:"duration"`
}

// Duration is a time.Duration written as "36h" or "90m" in scenario files.
type Duration time.Duration

// UnmarshalText parses "36h", "90m" or "7d" (days).
func (d *Duration) UnmarshalText(b []byte) error {
	s := string(b)
	if n := len(s); n > 1 && s[n-1] == 'd' {
		var days float64
		if _, err := fmt.Sscanf(s[:n-1], "%g", &days); err != nil {
			return fmt.Errorf("%w: duration %q", ErrScenario, s)
		}
		*d = Duration(time.Duration(days * float64(24*time.Hour)))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%w: duration %q: %v", ErrScenario, s, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as time.Duration does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// LoadScenario reads a YAML or JSON scenario file.
func LoadScenario(path string) (Scenario, error) {
	return LoadScenarioOver(path, Scenario{})
}

// LoadScenarioOver reads a YAML or JSON scenario file over base: the fields the file does not
// set keep base's values (a command line's defaults, say).
func LoadScenarioOver(path string, base Scenario) (Scenario, error) {
	s := base
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("sim: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true) // a misspelt field is an error, not a silent default
	if err := dec.Decode(&s); err != nil && !errors.Is(err, io.EOF) {
		return s, fmt.Errorf("%w: %s: %v", ErrScenario, path, err)
	}
	return s, nil
}

// normalize fills defaults and checks ranges.
func (s *Scenario) normalize() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrScenario, fmt.Sprintf(format, args...))
	}
	if s.Start.IsZero() {
		s.Start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	switch {
	case s.Months < 1 || s.Months > 120:
		return bad("months %d: want 1-120", s.Months)
	case s.Keys < 1:
		return bad("keys %d: want at least 1", s.Keys)
	case s.Volumes < 1:
		return bad("volumes %d: want at least 1", s.Volumes)
	case s.PolicyMonths < 0 || s.PolicyMonths > 12:
		return bad("policy months %d: want 1-12, or 0 for none", s.PolicyMonths)
	case len(s.KeyPolicyMonths) > s.Keys:
		return bad("%d per-key policies for %d keys", len(s.KeyPolicyMonths), s.Keys)
	case s.ManualRotationsPerMonth < 0 || s.ManualRotationsPerMonth > 24*30:
		return bad("manual rotations per month %g: want 0-720 (one an hour at most)", s.ManualRotationsPerMonth)
	case s.CreatesPerMonth < 0 || s.DeletesPerMonth < 0 || s.AttachesPerMonth < -1:
		return bad("negative creates, deletes or attaches per month")
	case s.Images < 0 || s.Images > maxImages:
		return bad("images %d: want 0-%d", s.Images, maxImages)
	case s.Faults.FailRate < 0 || s.Faults.FailRate >= 1:
		return bad("KMS fail rate %g: want 0 <= rate < 1", s.Faults.FailRate)
	case s.Faults.CrashRate < 0 || s.Faults.CrashRate >= 1:
		return bad("crash rate %g: want 0 <= rate < 1", s.Faults.CrashRate)
	case s.Faults.Latency < 0 || s.Faults.RandomOutages < 0 || s.Faults.CorruptData < 0:
		return bad("negative latency or outage count")
	}
	if err := s.normalizeHosts(bad); err != nil {
		return err
	}
	for i, m := range s.KeyPolicyMonths {
		if m < 0 || m > 12 {
			return bad("policy months %d of key %d: want 1-12, or 0 for none", m, i)
		}
	}
	for _, o := range s.Faults.Outages {
		if o.After < 0 || o.Duration <= 0 {
			return bad("outage after %s for %s", time.Duration(o.After), time.Duration(o.Duration))
		}
	}
	switch s.Mapping {
	case "":
		s.Mapping = "round-robin"
	case "round-robin", "random", "skewed":
	default:
		return bad("mapping %q: want round-robin, random or skewed", s.Mapping)
	}
	if s.VolumeSize == "" {
		s.VolumeSize = "1MiB"
	}
	size, err := volume.ParseSize(s.VolumeSize)
	if err != nil {
		return bad("volume size: %v", err)
	}
	if size < 64<<10 {
		return bad("volume size %s: want at least 64KiB", s.VolumeSize)
	}
	if s.AttachesPerMonth == 0 {
		s.AttachesPerMonth = min(s.Volumes, 500)
	}
	if s.Faults.OutageLength == 0 {
		s.Faults.OutageLength = Duration(6 * time.Hour)
	}
	if s.SyncEvery <= 0 {
		s.SyncEvery = Duration(24 * time.Hour)
	}
	if s.SampleEvery <= 0 {
		s.SampleEvery = Duration(7 * 24 * time.Hour)
	}
	if s.Workers <= 0 {
		s.Workers = 16
	}
	return nil
}

// maxImages bounds Scenario.Images (each image is a file of up to the volume size).
const maxImages = 1000

// images is the number of images made at the start (of each host, with hosts).
func (s *Scenario) images() int { return s.Images }

// policyOf returns key i's rotation policy in months (0: none).
func (s *Scenario) policyOf(i int) int {
	if i < len(s.KeyPolicyMonths) {
		return s.KeyPolicyMonths[i]
	}
	return s.PolicyMonths
}

// end is the virtual end time.
func (s *Scenario) end() time.Time { return s.Start.AddDate(0, s.Months, 0) }

// normalizeHosts checks and defaults the fields of a run on hosts (bad makes the error).
func (s *Scenario) normalizeHosts(bad func(string, ...any) error) error {
	f := &s.Faults
	switch {
	case s.Hosts < 0:
		return bad("hosts %d: want 1 or more, or 0 for one volume service", s.Hosts)
	case f.NotificationLoss < 0 || f.NotificationLoss >= 1:
		return bad("notification loss %g: want 0 <= rate < 1", f.NotificationLoss)
	case f.DeliveryDelay < 0 || f.AgentDowntimes < 0 || f.AgentDowntimeLength < 0 || s.DisableLength < 0 ||
		s.LockoutBound < 0 || s.AgentPoll < 0 || s.AttachPoll < 0 || s.AttachedPerHost < 0 || s.DisablesPerMonth < -1:
		return bad("negative delivery delay, downtime, disable, lockout bound, poll interval or attached volumes")
	}
	if s.Hosts == 0 {
		if f.DeliveryDelay != 0 || f.NotificationLoss != 0 || f.AgentDowntimes != 0 || f.AgentDowntimeLength != 0 ||
			s.DisablesPerMonth != 0 || s.DisableLength != 0 || s.LockoutBound != 0 || s.AgentPoll != 0 ||
			s.AttachPoll != 0 || s.AttachedPerHost != 0 {
			return bad("delivery delay, notification loss, agent downtime, disables, lockout bound, poll intervals and attached volumes need hosts")
		}
		return nil
	}
	switch {
	case f.CrashRate > 0 || f.CorruptData > 0:
		return bad("crashes and data corruption are not simulated with hosts (agent downtime is)")
	case s.CreatesPerMonth > 0 || s.DeletesPerMonth > 0:
		return bad("creates and deletes are not simulated with hosts")
	case s.DisableLength != 0 && s.DisableLength < Duration(30*time.Second):
		return bad("disable length %s: want at least 30s (a key cannot be enabled sooner)", time.Duration(s.DisableLength))
	}
	if s.AttachedPerHost == 0 {
		s.AttachedPerHost = 1
	}
	if s.DisablesPerMonth == 0 {
		s.DisablesPerMonth = 1
	}
	if s.DisableLength == 0 {
		s.DisableLength = Duration(time.Hour)
	}
	if s.LockoutBound == 0 {
		s.LockoutBound = Duration(5 * time.Second)
	}
	if s.AgentPoll == 0 {
		s.AgentPoll = Duration(30 * time.Second)
	}
	if s.AttachPoll == 0 {
		s.AttachPoll = Duration(500 * time.Millisecond)
	}
	if f.DeliveryDelay == 0 {
		f.DeliveryDelay = Duration(100 * time.Millisecond)
	}
	if f.AgentDowntimeLength == 0 {
		f.AgentDowntimeLength = Duration(time.Hour)
	}
	return nil
}
