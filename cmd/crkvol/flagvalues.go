package main

import (
	"reflect"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// plainValue wraps one of pflag's own value types (int, float64, duration, bool) so that a
// value that does not parse fails with a flagSyntaxError naming the flag and the form wanted,
// not with Go's strconv or time text. Everything else is the wrapped value's.
type plainValue struct {
	pflag.Value
	name, want string
}

// Set parses s with the wrapped value.
func (v *plainValue) Set(s string) error {
	if err := v.Value.Set(s); err != nil {
		return &flagSyntaxError{flag: v.name, value: s, want: v.want}
	}
	return nil
}

// plainWants are the forms, by pflag type name, that a flag of that type takes.
var plainWants = map[string]string{
	"int":      "an integer",
	"int64":    "an integer",
	"uint":     "a non-negative integer",
	"uint64":   "a non-negative integer",
	"float64":  "a number such as 0.05",
	"duration": "a duration such as 90s, 15m or 1h",
	"bool":     "true or false",
}

// plainFlagErrors wraps every flag of cmd and its subcommands whose type is one of
// pflag's own (plainWants) in a plainValue. Call it once the command tree is complete.
func plainFlagErrors(cmd *cobra.Command) {
	pflagPath := reflect.TypeOf(pflag.Flag{}).PkgPath()
	wrap := func(f *pflag.Flag) {
		if t := reflect.TypeOf(f.Value); t.Kind() != reflect.Pointer || t.Elem().PkgPath() != pflagPath {
			return // crkvol's own value types (sizes, sector sizes) have their own messages
		}
		if want, ok := plainWants[f.Value.Type()]; ok {
			f.Value = &plainValue{Value: f.Value, name: f.Name, want: want}
		}
	}
	cmd.Flags().VisitAll(wrap)
	cmd.PersistentFlags().VisitAll(wrap)
	for _, c := range cmd.Commands() {
		plainFlagErrors(c)
	}
}
