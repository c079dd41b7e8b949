package main

import (
	"strings"

	"github.com/spf13/cobra"
)

// completionShells are the shells `crkvol completion` writes scripts for.
var completionShells = []string{"bash", "zsh", "fish"}

// strictHelpAndCompletion replaces two of cobra's lenient defaults: `completion` with no
// shell, an unknown shell or extra arguments, and `help` with an unknown topic, are usage
// errors (exit status 2) instead of printing help and succeeding.
func strictHelpAndCompletion(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	root.InitDefaultHelpCmd()
	for _, c := range root.Commands() {
		switch c.Name() {
		case "completion":
			strictCompletion(c)
		case "help":
			c.Run = nil
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(c *cobra.Command, args []string) error {
				cmd, rest, err := c.Root().Find(args)
				if err != nil || cmd == nil || len(rest) > 0 {
					return usagef("unknown help topic %q", strings.Join(args, " "))
				}
				cmd.InitDefaultHelpFlag()
				return cmd.Help()
			}
		}
	}
}

// strictCompletion keeps the completion subcommands of completionShells, each taking no
// arguments, and makes the command itself fail without one of them.
func strictCompletion(c *cobra.Command) {
	want := "want " + strings.Join(completionShells[:len(completionShells)-1], ", ") + " or " + completionShells[len(completionShells)-1]
	for _, sub := range c.Commands() {
		keep := false
		for _, s := range completionShells {
			keep = keep || sub.Name() == s
		}
		if !keep {
			c.RemoveCommand(sub)
			continue
		}
		sub.Args = args(cobra.NoArgs)
	}
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(_ *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usagef("missing shell: %s", want)
		}
		return usagef("unknown shell %q: %s", args[0], want)
	}
}
