package main

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"crkvol/crk"
)

// masterKeyEnv names the environment variable that may hold the key service's master key
// (32 bytes, standard base64) instead of the key file beside the store. The crk library reads
// no environment variable: the command passes the key in crk.Options.
const masterKeyEnv = "CRKVOL_MASTER_KEY"

// masterKey returns the master key from CRKVOL_MASTER_KEY, or nil when it is unset or empty
// (the store's key file is used then).
func masterKey(getenv func(string) string) ([]byte, error) {
	env := getenv(masterKeyEnv)
	if env == "" {
		return nil, nil
	}
	k, err := base64.StdEncoding.DecodeString(env)
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("%s must be 32 bytes in standard base64", masterKeyEnv)
	}
	return k, nil
}

// crkOptions configures the embedded key service: its clock, the master key from
// CRKVOL_MASTER_KEY (else the key file) and the event retention from --event-max-age and
// --event-max-count (or their environment variables).
func (a *app) crkOptions(clock crk.Clock) (crk.Options, error) {
	mk, err := masterKey(a.getenv)
	if err != nil {
		return crk.Options{}, err
	}
	ret, err := a.eventRetention()
	if err != nil {
		return crk.Options{}, err
	}
	return crk.Options{Clock: clock, Initiator: crk.PrincipalLocal, MasterKey: mk, EventRetention: ret}, nil
}

// eventRetention reads --event-max-age / CRKVOL_EVENT_MAX_AGE (a Go duration, or a number of
// days such as 90d; 0 keeps events of any age) and --event-max-count / CRKVOL_EVENT_MAX_COUNT
// (0: the library's default, -1: no limit).
func (a *app) eventRetention() (crk.EventRetention, error) {
	var ret crk.EventRetention
	age := a.eventMaxAge
	if age == "" {
		age = a.getenv("CRKVOL_EVENT_MAX_AGE")
	}
	if age != "" {
		d, err := parseAge(age)
		if err != nil {
			return ret, usagef("--event-max-age %q: want a duration such as 720h or 90d", age)
		}
		ret.MaxAge = d
	}
	count := a.eventMaxCount
	if count == "" {
		count = a.getenv("CRKVOL_EVENT_MAX_COUNT")
	}
	if count != "" {
		n, err := strconv.Atoi(count)
		if err != nil || n < -1 {
			return ret, usagef("--event-max-count %q: want a number of events, 0 for the default or -1 for no limit", count)
		}
		ret.MaxCount = n
	}
	return ret, nil
}

// parseAge parses a non-negative Go duration or a whole number of days ("90d").
func parseAge(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100*365 {
			return 0, fmt.Errorf("bad number of days %q", days)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration %s", s)
	}
	return d, nil
}
