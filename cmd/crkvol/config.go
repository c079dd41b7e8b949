package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The config file gives defaults for a few global flags. It sits below the environment,
// which sits below the flags: a setting of the file is seen as the value of its environment
// variable whenever that variable is unset or empty, so every place that reads the variable
// (stateDirectory, remoteURL, openRemote, remoteTLS) honours the file unchanged.

// Config file errors, wrapped in a *configError that names the file and line.
var (
	// errConfigSyntax is a document that is not TOML, or a value of the wrong type.
	errConfigSyntax = errors.New("invalid TOML")
	// errConfigUnknown is a key the config file does not take.
	errConfigUnknown = errors.New("unknown key")
	// errConfigSecret is a credential, which belongs in the environment, not in a file.
	errConfigSecret = errors.New("secrets do not belong in the config file")
	// errConfigNotRegular is a config file that is a FIFO, a device or a directory.
	errConfigNotRegular = errors.New("not a regular file")
	// errConfigTooLarge is a config file of more than maxConfigSize bytes (configSizeError).
	errConfigTooLarge = errors.New("config file too large")
)

// maxConfigSize is the largest config file read: a handful of settings take a few hundred
// bytes.
const maxConfigSize = 64 << 10

// configSizeError is a config file larger than maxConfigSize; it matches errConfigTooLarge.
type configSizeError struct {
	File string
	Size int64
}

func (e *configSizeError) Error() string {
	return fmt.Sprintf("config file %s is %d bytes; the limit is %d KiB", e.File, e.Size, maxConfigSize>>10)
}

func (e *configSizeError) Is(target error) bool { return target == errConfigTooLarge }

// configError is a problem with the config file, at a line if Line > 0.
type configError struct {
	File string
	Line int
	Err  error
}

func (e *configError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("config file %s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("config file %s: %v", e.File, e.Err)
}

func (e *configError) Unwrap() error { return e.Err }

// configSetting is a key of the config file with the flag and the environment variable that
// override it.
type configSetting struct {
	Key, Flag, Env string
	// Path settings are resolved relative to the config file's directory.
	Path bool
}

// configSettings lists the keys the config file takes, in the order `crkvol config` shows.
func configSettings() []configSetting {
	return []configSetting{
		{Key: "state", Flag: "state", Env: "CRKVOL_STATE", Path: true},
		{Key: "kms-url", Flag: "kms-url", Env: "CRKVOL_KMS_URL"},
		{Key: "kms-instance", Flag: "kms-instance", Env: "CRKVOL_KMS_INSTANCE"},
		{Key: "kms-ca", Flag: "kms-ca", Env: "CRKVOL_KMS_CA", Path: true},
		{Key: "kms-insecure", Flag: "kms-insecure", Env: "CRKVOL_KMS_INSECURE"},
	}
}

// isSecretConfigKey tells the keys refused with errConfigSecret rather than errConfigUnknown.
func isSecretConfigKey(key string) bool {
	switch strings.ToLower(key) {
	case "apikey", "api-key", "api_key", "kms-apikey", "kms-api-key", "kms_apikey", "token", "kms-token":
		return true
	}
	return false
}

// fileConfig is the config file's schema. Pointers tell a key that is absent from one that
// is empty or false.
type fileConfig struct {
	State       *string `toml:"state"`
	KMSURL      *string `toml:"kms-url"`
	KMSInstance *string `toml:"kms-instance"`
	KMSCA       *string `toml:"kms-ca"`
	KMSInsecure *bool   `toml:"kms-insecure"`
}

// parseConfig parses a config file's contents and returns its settings as the values of
// their environment variables. Relative paths are taken relative to dir. Errors are
// *configError values naming file.
func parseConfig(file, dir string, data []byte) (map[string]string, error) {
	var fc fileConfig
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		return nil, configDecodeError(file, err)
	}
	env := map[string]string{}
	str := func(s configSetting, v *string) error {
		if v == nil {
			return nil
		}
		if *v == "" {
			return &configError{File: file, Err: fmt.Errorf("%s: %w: empty value (leave the key out for the default)", s.Key, errConfigSyntax)}
		}
		val := *v
		if s.Path && !filepath.IsAbs(val) {
			val = filepath.Join(dir, val)
		}
		env[s.Env] = val
		return nil
	}
	set := configSettings()
	for i, v := range []*string{fc.State, fc.KMSURL, fc.KMSInstance, fc.KMSCA} {
		if err := str(set[i], v); err != nil {
			return nil, err
		}
	}
	if fc.KMSInsecure != nil {
		env[set[4].Env] = "0"
		if *fc.KMSInsecure {
			env[set[4].Env] = "1"
		}
	}
	return env, nil
}

// configDecodeError turns go-toml's errors into a *configError with the line at fault.
func configDecodeError(file string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		// Report the first unknown key; a secret anywhere takes precedence, so that the
		// message says where it belongs.
		first := &strict.Errors[0]
		for i := range strict.Errors {
			e := &strict.Errors[i]
			key := strings.Join(e.Key(), ".")
			if isSecretConfigKey(key) {
				line, _ := e.Position()
				return &configError{File: file, Line: line,
					Err: fmt.Errorf("%s: %w; give the API key in CRKVOL_KMS_APIKEY (or a token in CRKVOL_KMS_TOKEN)", key, errConfigSecret)}
			}
		}
		line, _ := first.Position()
		known := []string{}
		for _, s := range configSettings() {
			known = append(known, s.Key)
		}
		return &configError{File: file, Line: line,
			Err: fmt.Errorf("%w %q (the file takes %s)", errConfigUnknown, strings.Join(first.Key(), "."), strings.Join(known, ", "))}
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		if key := strings.Join(de.Key(), "."); key != "" {
			// A value of the wrong type: say what the key takes rather than go-toml's
			// message, which names Go types.
			want := "a quoted string"
			if key == "kms-insecure" {
				want = "true or false"
			}
			return &configError{File: file, Line: line, Err: fmt.Errorf("%s: %w: want %s", key, errConfigSyntax, want)}
		}
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		return &configError{File: file, Line: line, Err: fmt.Errorf("%w: %s", errConfigSyntax, msg)}
	}
	return &configError{File: file, Err: fmt.Errorf("%w: %w", errConfigSyntax, err)}
}

// configState is what an invocation knows of its config file.
type configState struct {
	flag string // --config
	// flags are the global flags, to tell a flag given on the command line (flagGiven).
	flags  *pflag.FlagSet
	loaded bool
	file   string            // the file read; "" if there was none
	looked string            // the default path looked at when there was none
	env    map[string]string // its settings as environment variable values
	// getenv is the process environment alone, without the file's settings.
	getenv func(string) string
}

// configPath returns the config file to read and whether it was asked for explicitly
// (--config, CRKVOL_CONFIG: then it must exist).
func (a *app) configPath(getenv func(string) string) (path string, explicit bool) {
	switch {
	case a.config.flag != "":
		return a.config.flag, true
	case getenv("CRKVOL_CONFIG") != "":
		return getenv("CRKVOL_CONFIG"), true
	case getenv("XDG_CONFIG_HOME") != "":
		return filepath.Join(getenv("XDG_CONFIG_HOME"), "crkvol", "config.toml"), false
	case getenv("HOME") != "":
		return filepath.Join(getenv("HOME"), ".config", "crkvol", "config.toml"), false
	}
	return "", false
}

// loadConfig reads the config file once and lays its settings under the environment.
func (a *app) loadConfig() error {
	if a.config.loaded {
		return nil
	}
	getenv := a.getenv
	path, explicit := a.configPath(getenv)
	if path == "" {
		a.config = configState{flag: a.config.flag, flags: a.config.flags, loaded: true, getenv: getenv}
		return nil
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	data, err := readConfigFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		a.config = configState{flag: a.config.flag, flags: a.config.flags, loaded: true, looked: path, getenv: getenv}
		return nil
	}
	if err != nil {
		return err
	}
	env, err := parseConfig(path, filepath.Dir(path), data)
	if err != nil {
		return err
	}
	a.config = configState{flag: a.config.flag, flags: a.config.flags, loaded: true, file: path, env: env, getenv: getenv}
	a.getenv = func(name string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return env[name]
	}
	return nil
}

// readConfigFile reads the config file at path: a regular file (a FIFO would block the open,
// a device never end) of at most maxConfigSize bytes. Errors name the file.
func readConfigFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, &configError{File: path, Err: err}
	}
	if !st.Mode().IsRegular() {
		return nil, &configError{File: path, Err: errConfigNotRegular}
	}
	// O_NONBLOCK: a FIFO swapped in after the Stat does not block the open either.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, &configError{File: path, Err: err}
	}
	defer f.Close()
	if st, err = f.Stat(); err != nil {
		return nil, &configError{File: path, Err: err}
	}
	if !st.Mode().IsRegular() {
		return nil, &configError{File: path, Err: errConfigNotRegular}
	}
	if st.Size() > maxConfigSize {
		return nil, &configSizeError{File: path, Size: st.Size()}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, &configError{File: path, Err: err}
	}
	if len(data) > maxConfigSize { // grew since the Stat
		return nil, &configSizeError{File: path, Size: int64(len(data))}
	}
	return data, nil
}

// flagGiven reports whether the global flag name was given on the command line (even as
// false or empty): then it beats its environment variable and the config file.
func (a *app) flagGiven(name string) bool {
	return a.config.flags != nil && a.config.flags.Changed(name)
}

// redactURL masks a password in a URL's userinfo (https://user:xxxxx@host); anything that
// does not parse as a URL with a password is returned as it is.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); !ok {
		return s
	}
	return u.Redacted()
}

// addConfig gives root the --config flag and the config command, and makes every command
// read the config file before it runs.
func (a *app) addConfig(root *cobra.Command) {
	a.config.flags = root.PersistentFlags()
	root.PersistentFlags().StringVar(&a.config.flag, "config", "", "read settings from this file (env CRKVOL_CONFIG; default $XDG_CONFIG_HOME/crkvol/config.toml or ~/.config/crkvol/config.toml)")
	root.AddCommand(a.configCommand())
	// These run without reading the config file, so that a broken file does not keep them
	// from working.
	noConfig := []string{"version", "completion", "man", "help"}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if run := c.RunE; run != nil && c != root && !slices.Contains(noConfig, c.Name()) {
			c.RunE = func(cmd *cobra.Command, args []string) error {
				if err := a.loadConfig(); err != nil {
					return err
				}
				return run(cmd, args)
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// configCommand is `crkvol config`: the settings in effect and where each comes from.
func (a *app) configCommand() *cobra.Command {
	return &cobra.Command{Use: "config", Short: "Show the config file and the settings in effect, with where each comes from",
		Long: `Show the config file and the settings in effect, with where each comes from.

The config file is --config FILE, else $CRKVOL_CONFIG, else $XDG_CONFIG_HOME/crkvol/config.toml,
else ~/.config/crkvol/config.toml. It is TOML with these keys, each a default for the flag of
the same name: state, kms-url, kms-instance, kms-ca (strings; relative paths are relative to
the file's directory) and kms-insecure (true or false). A flag beats its environment variable,
which beats the file. Secrets never go in the file: give the API key in CRKVOL_KMS_APIKEY.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return a.showConfig(cmd) }}
}

// configEntry is one setting as `crkvol config` shows it.
type configEntry struct {
	Name   string `json:"name"`
	Value  string `json:"value,omitempty"`
	Source string `json:"source"`
}

func (a *app) showConfig(cmd *cobra.Command) error {
	state, err := a.stateDirectoryPath() // shown even when it is refused: this is the diagnosis
	if err != nil {
		return err
	}
	if state, err = filepath.Abs(state); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	inst := a.kmsInst
	if inst == "" {
		inst = a.getenv("CRKVOL_KMS_INSTANCE")
	}
	ca, insecure, err := a.remoteTLS()
	if err != nil {
		return err
	}
	if ca != "" {
		if ca, err = filepath.Abs(ca); err != nil {
			return fmt.Errorf("kms-ca: %w", err)
		}
	}
	values := map[string]string{"state": state, "kms-url": redactURL(a.remoteURL()), "kms-instance": inst, "kms-ca": ca}
	var entries []configEntry
	for _, s := range configSettings() {
		src := "default"
		switch {
		case cmd.Flags().Changed(s.Flag):
			src = "flag --" + s.Flag
		case a.config.getenv(s.Env) != "":
			src = "env " + s.Env
		case a.config.env[s.Env] != "":
			src = "config file"
		}
		if s.Key == "kms-insecure" && (insecure || src != "default") {
			values[s.Key] = strconv.FormatBool(insecure)
		}
		entries = append(entries, configEntry{Name: s.Key, Value: values[s.Key], Source: src})
	}
	if a.asJSON {
		return a.emit(struct {
			File     string        `json:"file,omitempty"`
			Settings []configEntry `json:"settings"`
		}{a.config.file, entries})
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	switch {
	case a.config.file != "":
		fmt.Fprintf(w, "Config file\t%s\n", a.config.file)
	case a.config.looked != "":
		fmt.Fprintf(w, "Config file\tnone (%s does not exist)\n", a.config.looked)
	default:
		fmt.Fprintf(w, "Config file\tnone\n")
	}
	for _, e := range entries {
		v := e.Value
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t(%s)\n", e.Name, v, e.Source)
	}
	return w.Flush()
}
