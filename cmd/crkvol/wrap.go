package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"crkvol/crk"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// Envelope encryption by hand, as `ibmcloud kp key wrap` and `unwrap` do it: key wrap
// encrypts a data encryption key (DEK) given in base64 or in a file, or a new 32-byte DEK it
// generates, with the latest version of a root key; key unwrap decrypts a ciphertext with the
// version that made it. Both go through the key service of the other commands (embedded, or
// remote with --kms-url), so a ciphertext made one way unwraps the other. The WDEK of
// `crkvol image import --wdek` is such a ciphertext.

const (
	// maxWrapPlaintext is the largest plaintext a key service wraps: Key Protect's limit,
	// which the embedded service keeps too.
	maxWrapPlaintext = 7168
	// generatedDEKSize is the size of the DEK key wrap makes when given no plaintext, as Key
	// Protect's wrap does.
	generatedDEKSize = 32
	// maxCiphertextText bounds the base64 text read from --ciphertext-file: a ciphertext of
	// the largest plaintext is well under 10 KiB.
	maxCiphertextText = 64 << 10
)

// keyVersionRef is a key version as Key Protect's wrap and unwrap answers name it.
type keyVersionRef struct {
	ID string `json:"id"`
}

// wrapJSON is `key wrap --json`: Key Protect's wrap answer (the plaintext only for a DEK the
// command generated).
type wrapJSON struct {
	Plaintext  string        `json:"plaintext,omitempty"`
	Ciphertext string        `json:"ciphertext"`
	KeyVersion keyVersionRef `json:"keyVersion"`
}

// unwrapJSON is `key unwrap --json`: Key Protect's unwrap answer (the ciphertext rewrapped
// with the latest version when an older one made it), with the plaintext left out when it
// went to --output.
type unwrapJSON struct {
	Plaintext           string         `json:"plaintext,omitempty"`
	KeyVersion          keyVersionRef  `json:"keyVersion"`
	Ciphertext          string         `json:"ciphertext,omitempty"`
	RewrappedKeyVersion *keyVersionRef `json:"rewrappedKeyVersion,omitempty"`
	Output              string         `json:"output,omitempty"`
	Bytes               int            `json:"bytes,omitempty"`
	Mode                string         `json:"mode,omitempty"`
}

// keyService is the open app's key service, embedded or remote, as volumes use it.
func (a *app) keyService() volume.KeyService {
	if a.remote != nil {
		return a.remote
	}
	return kms.NewLocal(a.svc)
}

// hintCiphertext explains a ciphertext the key service cannot authenticate.
const hintCiphertext = "a ciphertext unwraps only with the root key that wrapped it and the same --aad values, in the same order"

// keyWrapCommands returns key wrap and key unwrap.
func (a *app) keyWrapCommands() (wrap, unwrap *cobra.Command) {
	var plaintextB64, plaintextFile string
	var aad []string
	wrap = &cobra.Command{Use: "wrap ID", Short: "Wrap a data encryption key (given, or a new 32-byte one) with a root key's latest version", Args: args(cobra.ExactArgs(1)),
		Long: `Wrap a data encryption key (DEK) with the latest version of a root key, as Key Protect's wrap
action (ibmcloud kp key wrap) does: the DEK in base64 (--plaintext) or the bytes of a file
(--plaintext-file), 1 to 7168 bytes. With neither, a new 32-byte DEK is generated and both it
and its ciphertext are printed. The ciphertext (a WDEK) unwraps with key unwrap and the same
--aad values, in the same order; crkvol image import --wdek takes it.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var pt []byte
			generated := false
			switch {
			case cmd.Flags().Changed("plaintext") && plaintextFile != "":
				return usagef("give --plaintext or --plaintext-file, not both")
			case cmd.Flags().Changed("plaintext"):
				b, err := base64.StdEncoding.DecodeString(plaintextB64)
				if err != nil {
					return usagef("--plaintext is not standard base64")
				}
				if err := checkPlaintextSize("--plaintext", len(b)); err != nil {
					clear(b)
					return err
				}
				pt = b
			case plaintextFile != "":
				b, err := readPlaintextFile(plaintextFile)
				if err != nil {
					return err
				}
				pt = b
			default:
				pt = make([]byte, generatedDEKSize)
				if _, err := rand.Read(pt); err != nil {
					return fmt.Errorf("generating a DEK: %w", err)
				}
				generated = true
			}
			defer clear(pt)
			ctx := cmd.Context()
			id, err := a.openKey(ctx, args[0])
			if err != nil {
				return err
			}
			w, err := a.keyService().Wrap(ctx, id, pt, aad)
			if err != nil {
				return err
			}
			out := wrapJSON{Ciphertext: base64.StdEncoding.EncodeToString(w.Ciphertext), KeyVersion: keyVersionRef{w.VersionID}}
			if generated {
				out.Plaintext = base64.StdEncoding.EncodeToString(pt)
			}
			if a.asJSON {
				return a.emit(out)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			if generated {
				fmt.Fprintf(tw, "Plaintext\t%s\n", out.Plaintext)
			}
			fmt.Fprintf(tw, "Ciphertext\t%s\n", out.Ciphertext)
			fmt.Fprintf(tw, "Key version\t%s\n", shown(w.VersionID))
			return tw.Flush()
		}}
	wrap.Flags().StringVar(&plaintextB64, "plaintext", "", "the DEK to wrap, in standard base64 (1 to 7168 bytes)")
	wrap.Flags().StringVar(&plaintextFile, "plaintext-file", "", "wrap the bytes of this file, as they are (1 to 7168 bytes)")
	wrap.Flags().StringArrayVar(&aad, "aad", nil, "additional authenticated data bound to the ciphertext; repeat for several strings (unwrap needs the same, in the same order)")

	var ciphertextB64, ciphertextFile, output string
	var force bool
	unwrap = &cobra.Command{Use: "unwrap ID", Short: "Unwrap a ciphertext made by key wrap: print the plaintext in base64 (or write it to --output)", Args: args(cobra.ExactArgs(1)),
		Long: `Unwrap a ciphertext (a WDEK) with the root key version that wrapped it, as Key Protect's
unwrap action (ibmcloud kp key unwrap) does, and print the plaintext in base64 and that
version; with --output the plaintext's bytes go to a new file of mode 0600 instead. The
ciphertext is the base64 text key wrap printed, given with --ciphertext or in a file
(--ciphertext-file); the --aad values must be those it was wrapped with, in the same order.
When an older version made it, the ciphertext rewrapped with the latest version is printed
too, to be stored in place of the old one.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var ct []byte
			switch {
			case cmd.Flags().Changed("ciphertext") && ciphertextFile != "":
				return usagef("give --ciphertext or --ciphertext-file, not both")
			case cmd.Flags().Changed("ciphertext"):
				b, err := base64.StdEncoding.DecodeString(ciphertextB64)
				if err != nil || len(b) == 0 {
					return usagef("--ciphertext is not standard base64")
				}
				ct = b
			case ciphertextFile != "":
				b, err := readCiphertextFile(ciphertextFile)
				if err != nil {
					return err
				}
				ct = b
			default:
				return usagef("give the ciphertext with --ciphertext B64 or --ciphertext-file FILE")
			}
			toStdout := output == "-"
			switch {
			case toStdout && a.asJSON:
				return usagef("--json needs --output FILE: the plaintext would go to stdout with the JSON")
			case toStdout && isTerminal(a.stdout):
				return withHint(fmt.Errorf("--output -: %w", errTerminal), "give --output FILE, or redirect stdout to a pipe or a file; without --output the plaintext is printed in base64")
			}
			// The output is checked before the ciphertext is unwrapped.
			opts := a.outputOptions(force, 0o600)
			if output != "" && !toStdout {
				if err := checkOutputFree("output", output, opts); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			id, err := a.openKey(ctx, args[0])
			if err != nil {
				return err
			}
			u, err := a.keyService().Unwrap(ctx, id, ct, aad)
			if errors.Is(err, crk.ErrAuth) {
				return withHint(err, hintCiphertext)
			}
			if err != nil {
				return err
			}
			defer clear(u.Plaintext)
			out := unwrapJSON{KeyVersion: keyVersionRef{u.VersionID}}
			if u.Rewrapped != nil {
				out.Ciphertext = base64.StdEncoding.EncodeToString(u.Rewrapped.Ciphertext)
				out.RewrappedKeyVersion = &keyVersionRef{u.Rewrapped.VersionID}
			}
			if toStdout {
				// The plaintext's bytes alone on stdout (not a terminal), as volume
				// passphrase --output - writes; what else unwrap tells goes to stderr.
				if _, err := a.stdout.Write(u.Plaintext); err != nil {
					return err
				}
				fmt.Fprintf(a.stderr, "wrote the %d-byte plaintext to stdout; key version %s\n", len(u.Plaintext), shown(u.VersionID))
				if u.Rewrapped != nil {
					fmt.Fprintf(a.stderr, "rewrapped ciphertext (key version %s): %s\n", shown(u.Rewrapped.VersionID), out.Ciphertext)
				}
				return nil
			}
			var file *outputFile
			if output != "" {
				if file, err = createOutput("output", output, opts); err != nil {
					return err
				}
				if _, err := file.Write(u.Plaintext); err != nil {
					file.Abort()
					return file.fail(err)
				}
				if err := file.Close(); err != nil {
					return err
				}
				out.Output, out.Bytes = absPath(output), len(u.Plaintext)
				if !file.stream {
					out.Mode = "0600"
				}
			} else {
				out.Plaintext = base64.StdEncoding.EncodeToString(u.Plaintext)
			}
			if a.asJSON {
				return a.emit(out)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			if file == nil {
				fmt.Fprintf(tw, "Plaintext\t%s\n", out.Plaintext)
			}
			fmt.Fprintf(tw, "Key version\t%s\n", shown(u.VersionID))
			if u.Rewrapped != nil {
				fmt.Fprintf(tw, "Rewrapped ciphertext\t%s\n", out.Ciphertext)
				fmt.Fprintf(tw, "Rewrapped version\t%s\n", shown(u.Rewrapped.VersionID))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if file != nil {
				fmt.Fprintf(a.stderr, "wrote the %d-byte plaintext to %s%s\n", len(u.Plaintext), out.Output, file.describe(0o600))
			}
			return nil
		}}
	unwrap.Flags().StringVar(&ciphertextB64, "ciphertext", "", "the ciphertext, as key wrap printed it (standard base64)")
	unwrap.Flags().StringVar(&ciphertextFile, "ciphertext-file", "", "read the ciphertext's base64 text from this file (surrounding white space ignored)")
	unwrap.Flags().StringArrayVar(&aad, "aad", nil, "additional authenticated data the ciphertext was wrapped with; repeat for several strings, in the same order")
	unwrap.Flags().StringVar(&output, "output", "", "write the plaintext's bytes to this new file (mode 0600), or - for stdout when it is not a terminal, instead of printing them in base64")
	unwrap.Flags().BoolVar(&force, "force", false, "replace the --output file if it exists (with a new 0600 file)")
	return wrap, unwrap
}

// openKey opens the key service and resolves a key argument (id or unique name).
func (a *app) openKey(ctx context.Context, ref string) (string, error) {
	if err := a.open(ctx); err != nil {
		return "", err
	}
	return a.resolveKey(ctx, ref, false)
}

// checkPlaintextSize refuses a plaintext a key service does not wrap: empty, or over Key
// Protect's 7168 bytes.
func checkPlaintextSize(what string, n int) error {
	switch {
	case n == 0:
		return fmt.Errorf("%s: empty; a key service wraps 1 to %d bytes", what, maxWrapPlaintext)
	case n > maxWrapPlaintext:
		return fmt.Errorf("%s: %d bytes is too large; a key service wraps at most %d bytes (Key Protect's limit)", what, n, maxWrapPlaintext)
	}
	return nil
}

// readPlaintextFile reads the plaintext of --plaintext-file, refusing one too large to wrap
// without reading it all.
func readPlaintextFile(path string) ([]byte, error) {
	what := "--plaintext-file " + absPath(path)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--plaintext-file: %w", err)
	}
	defer f.Close()
	// One buffer sized in advance (never grown, so no copy of the secret is left behind),
	// one byte over the limit so that a larger file is seen.
	buf := make([]byte, maxWrapPlaintext+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		clear(buf)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	b := buf[:n]
	if len(b) > maxWrapPlaintext {
		clear(buf)
		return nil, fmt.Errorf("%s: more than %d bytes; a key service wraps at most %d bytes (Key Protect's limit)", what, maxWrapPlaintext, maxWrapPlaintext)
	}
	if err := checkPlaintextSize(what, len(b)); err != nil {
		clear(buf)
		return nil, err
	}
	return b, nil
}

// readCiphertextFile reads the base64 text of --ciphertext-file.
func readCiphertextFile(path string) ([]byte, error) {
	what := "--ciphertext-file " + absPath(path)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--ciphertext-file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCiphertextText+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(b) > maxCiphertextText {
		return nil, fmt.Errorf("%s: more than %d bytes: not a ciphertext made by key wrap", what, maxCiphertextText)
	}
	ct, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b)))
	if err != nil || len(ct) == 0 {
		return nil, usagef("%s: not standard base64", what)
	}
	return ct, nil
}
