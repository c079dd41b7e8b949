// Command crkvol creates, attaches and rotates encrypted volume images whose LUKS passphrase
// is wrapped by a customer root key. Run `crkvol demo` for a tour and `crkvol help` for the
// commands.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}
