package main

import (
	"cmp"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"crkvol/crk"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// Shell completion: cobra's `completion bash|zsh|fish` scripts call the hidden __complete
// command, which asks the functions here for key ids and names, registered volumes and image
// files. A completion never fails loudly and never waits long: the stores are opened
// read-only for at most completionLockWait (a command that holds them, such as kms serve or
// attach, makes the completion come back empty), a remote service gets completionRemoteWait,
// and every error yields no candidates.
const (
	completionLockWait   = 250 * time.Millisecond
	completionRemoteWait = 2 * time.Second
	// completionMaxFiles bounds the directory entries an image completion reads.
	completionMaxFiles = 2000
)

// addCompletion gives every command that takes a key or an image its completion: the ID
// argument of key subcommands and every --key flag complete key ids and names; IMG
// arguments complete registered volumes and files (volume create's new IMG, the shell's own
// file completion); DIR arguments complete directories; other arguments (names, API key ids)
// and commands without arguments complete nothing.
func (a *app) addCompletion(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if f := c.Flags().Lookup("key"); f != nil && f.Value.Type() == "string" {
			// The error says only that the flag already has a completion; keep that one.
			_ = c.RegisterFlagCompletionFunc("key", func(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				return a.completeKeys(cmd.Context(), toComplete)
			})
		}
		if f := c.Flags().Lookup("from-image"); f != nil {
			_ = c.RegisterFlagCompletionFunc("from-image", func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				return a.completeImageNames(toComplete)
			})
		}
		if c.ValidArgsFunction == nil && !c.HasSubCommands() && c != root {
			fields := strings.Fields(c.Use)
			switch {
			case len(fields) == 1:
				c.ValidArgsFunction = cobra.NoFileCompletions
			case fields[1] == "ID" && c.Parent() != nil && c.Parent().Name() == "key":
				c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
					if len(args) > 0 {
						return nil, cobra.ShellCompDirectiveNoFileComp
					}
					return a.completeKeys(cmd.Context(), toComplete)
				}
			case fields[1] == "IMG" && c.Name() != "create":
				c.ValidArgsFunction = func(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
					if len(args) > 0 {
						return nil, cobra.ShellCompDirectiveNoFileComp
					}
					return a.completeImages(toComplete)
				}
			case fields[1] == "NAME" && c.Parent() != nil && c.Parent().Name() == "image":
				c.ValidArgsFunction = func(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
					if len(args) > 0 {
						return nil, cobra.ShellCompDirectiveNoFileComp
					}
					return a.completeImageNames(toComplete)
				}
			case fields[1] == "DIR":
				c.ValidArgsFunction = func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
					return nil, cobra.ShellCompDirectiveFilterDirs
				}
			case fields[1] != "IMG":
				c.ValidArgsFunction = cobra.NoFileCompletions
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// completeKeys returns the keys whose id or (unique) name starts with toComplete, each with
// the other as its description.
func (a *app) completeKeys(ctx context.Context, toComplete string) ([]string, cobra.ShellCompDirective) {
	keys := a.completionKeys(ctx)
	names := map[string]int{}
	for _, k := range keys {
		names[k.Name]++
	}
	var out []string
	for _, k := range keys {
		note := k.Name
		if k.Deleted {
			note += " (deleted)"
		}
		if strings.HasPrefix(k.ID, toComplete) {
			out = append(out, k.ID+"\t"+oneLine(note))
		}
		if k.Name != "" && names[k.Name] == 1 && strings.HasPrefix(k.Name, toComplete) && !strings.ContainsAny(k.Name, "\t\n\r") {
			note := k.ID
			if k.Deleted {
				note += " (deleted)"
			}
			out = append(out, k.Name+"\t"+note)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completionKeys lists the keys of the key service in use, or nothing on any error.
func (a *app) completionKeys(ctx context.Context) []crk.KeyName {
	if ctx == nil {
		ctx = context.Background()
	}
	if a.loadConfig() != nil {
		return nil
	}
	if url := a.remoteURL(); url != "" {
		return a.completionRemoteKeys(ctx, url)
	}
	dir, err := a.stateDirectory()
	if err != nil {
		return nil
	}
	keys, err := crk.ListKeyNames(filepath.Join(dir, "crk.db"), completionLockWait)
	if err != nil {
		return nil
	}
	return keys
}

// completionRemoteKeys lists the keys of a remote service, or nothing on any error.
func (a *app) completionRemoteKeys(ctx context.Context, url string) []crk.KeyName {
	inst := a.kmsInst
	if inst == "" {
		inst = a.getenv("CRKVOL_KMS_INSTANCE")
	}
	ca, insecure, err := a.remoteTLS()
	if inst == "" || err != nil {
		return nil
	}
	remote, err := kms.NewRemote(kms.RemoteConfig{
		URL: url, Instance: inst, APIKey: a.getenv("CRKVOL_KMS_APIKEY"), Token: a.getenv("CRKVOL_KMS_TOKEN"),
		TokenURL: a.getenv("CRKVOL_KMS_TOKEN_URL"), CAFile: ca, Insecure: insecure,
	})
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, completionRemoteWait)
	defer cancel()
	keys, err := remote.ListKeys(ctx)
	if err != nil || keys == nil {
		return nil
	}
	var out []crk.KeyName
	for _, k := range keys.Keys {
		// The service's text, unchecked: control characters escaped.
		out = append(out, crk.KeyName{ID: shown(k.ID), Name: shown(k.Name), Deleted: k.Deleted != nil && *k.Deleted})
	}
	return out
}

// completeImages returns the registered volumes whose path starts with toComplete, then the
// regular files and directories that toComplete names the start of. With a directory among
// them, the shell adds no space, so that the completion can go on inside it.
func (a *app) completeImages(toComplete string) ([]string, cobra.ShellCompDirective) {
	var out []string
	seen := map[string]bool{}
	for _, e := range a.completionVolumes() {
		if strings.HasPrefix(e.Path, toComplete) && !seen[e.Path] && !strings.ContainsAny(e.Path, "\t\n\r") {
			seen[e.Path] = true
			out = append(out, e.Path+"\tregistered volume, key "+e.KeyID)
		}
	}
	dir, prefix := "", toComplete
	if i := strings.LastIndex(toComplete, "/"); i >= 0 {
		dir, prefix = toComplete[:i+1], toComplete[i+1:]
	}
	directive := cobra.ShellCompDirectiveNoFileComp
	f, err := os.Open(cmp.Or(dir, "."))
	if err != nil {
		return out, directive
	}
	defer f.Close()
	entries, _ := f.ReadDir(completionMaxFiles)
	slices.SortFunc(entries, func(x, y os.DirEntry) int { return strings.Compare(x.Name(), y.Name()) })
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, prefix) || (strings.HasPrefix(name, ".") && !strings.HasPrefix(prefix, ".")) || strings.ContainsAny(name, "\t\n\r") {
			continue
		}
		st, err := os.Stat(filepath.Join(cmp.Or(dir, "."), name)) // follows symbolic links
		switch {
		case err != nil:
		case st.IsDir():
			out = append(out, dir+name+"/")
			directive |= cobra.ShellCompDirectiveNoSpace
		case st.Mode().IsRegular() && !seen[dir+name]:
			out = append(out, dir+name)
		}
	}
	return out, directive
}

// completionVolumes lists the registered volumes, or nothing on any error.
func (a *app) completionVolumes() []volume.Entry {
	if a.loadConfig() != nil {
		return nil
	}
	dir, err := a.stateDirectory()
	if err != nil {
		return nil
	}
	entries, err := volume.ListRegistry(filepath.Join(dir, "volumes.db"), completionLockWait)
	if err != nil {
		return nil
	}
	return entries
}

// completeImageNames returns the catalog images whose name starts with toComplete, each with
// its key and path as its description.
func (a *app) completeImageNames(toComplete string) ([]string, cobra.ShellCompDirective) {
	var out []string
	for _, e := range a.completionImages() {
		if strings.HasPrefix(e.Name, toComplete) {
			out = append(out, e.Name+"\t"+oneLine("key "+e.KeyID+", "+e.Path))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completionImages lists the catalog's images, or nothing on any error or when the registry
// is not free within completionLockWait (the open goes on in the background: the completion
// process exits as soon as it has answered).
func (a *app) completionImages() []volume.ImageEntry {
	if a.loadConfig() != nil {
		return nil
	}
	dir, err := a.stateDirectory()
	if err != nil {
		return nil
	}
	done := make(chan []volume.ImageEntry, 1)
	go func() {
		reg, err := volume.OpenRegistryReadOnly(filepath.Join(dir, "volumes.db"))
		if err != nil {
			done <- nil
			return
		}
		defer reg.Close()
		images, _ := reg.Images()
		done <- images
	}()
	select {
	case images := <-done:
		return images
	case <-time.After(completionLockWait):
		return nil
	}
}

// oneLine replaces the line and tab breaks of a completion's description, which would end it.
func oneLine(s string) string {
	return strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
}
