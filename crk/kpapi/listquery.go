package kpapi

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"crkvol/crk"
)

// maxStateParam bounds the state parameter: the five states, each once, with room for
// spaces.
const maxStateParam = 64

// listQuery reads the selection and order of GET /api/v2/keys from its query parameters as
// keyprotect-go-client v0.15.1 sends them (ListKeysOptions): state (states separated by
// commas, at most maxStateParam characters; a state given twice counts once), extractable (true or false), search, filter and sort (crk.ParseKeySearch,
// crk.ParseKeyFilter, crk.ParseKeySort). A bad value is refused with 400
// INVALID_QUERY_PARAM_ERR naming the parameter and what is wrong with it.
func listQuery(v url.Values) (crk.ListOptions, error) {
	opts := crk.ListOptions{Live: true} // a purged key is not listed, whatever the states
	if st := v.Get("state"); st != "" {
		if len(st) > maxStateParam {
			return opts, badRequest("INVALID_QUERY_PARAM_ERR", fmt.Sprintf("state is %d characters long, at most %d: list each key state (0, 1, 2, 3, 5) once", len(st), maxStateParam), "state")
		}
		for p := range strings.SplitSeq(st, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil || (n != 0 && n != 1 && n != 2 && n != 3 && n != 5) {
				return opts, badRequest("INVALID_QUERY_PARAM_ERR", "state must list key states (0, 1, 2, 3, 5)", "state")
			}
			if !slices.Contains(opts.States, crk.State(n)) { // at most the five states
				opts.States = append(opts.States, crk.State(n))
			}
		}
	}
	if v.Has("extractable") {
		x, err := boolParam(v, "extractable")
		if err != nil {
			return opts, err
		}
		opts.Extractable = &x
	}
	var err error
	if v.Has("search") {
		if opts.Search, err = crk.ParseKeySearch(v.Get("search")); err != nil {
			return opts, queryError("search", err)
		}
	}
	if v.Has("filter") {
		if opts.Filter, err = crk.ParseKeyFilter(v.Get("filter")); err != nil {
			return opts, queryError("filter", err)
		}
	}
	if v.Has("sort") {
		if opts.Sort, err = crk.ParseKeySort(v.Get("sort")); err != nil {
			return opts, queryError("sort", err)
		}
	}
	return opts, nil
}

// queryError is a refused query parameter: crk's error row (400 INVALID_QUERY_PARAM_ERR,
// with its id) naming the parameter as its target. It is an apiError, so that the server
// audits the refusal, which never reached the service.
func queryError(param string, err error) error {
	ae := statusOf(err)
	ae.target = param
	return ae
}

// boolParam reads an optional boolean query parameter, exactly true or false (false when
// absent); anything else, an empty value included, is refused naming the parameter. Every
// route reads its boolean parameters with it.
func boolParam(v url.Values, name string) (bool, error) {
	if !v.Has(name) {
		return false, nil
	}
	switch v.Get(name) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, badRequest("INVALID_QUERY_PARAM_ERR", fmt.Sprintf("%s must be true or false, not %q", name, v.Get(name)), name)
}
