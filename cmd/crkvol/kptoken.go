package main

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"strconv"
	"strings"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/spf13/cobra"

	"crkvol/crk/kpapi"
)

// kpImportTokenCommands are the subcommands of `kp import-token`: create and show talk to
// the key service; key-encrypt and nonce-encrypt run here alone, with the client's helpers.
func (a *app) kpImportTokenCommands(f *kpFlags) []*cobra.Command {
	var expiration, retrievals int
	create := &cobra.Command{Use: "create", Short: "Create an import token (a transport key and a nonce) for a secure key import", Args: args(cobra.NoArgs),
		PreRunE: func(*cobra.Command, []string) error {
			// The client leaves a zero out of the request, which the service would read as
			// the default: refuse it here.
			if expiration <= 0 || retrievals <= 0 {
				return usagef("--expiration and --max-retrievals must be positive (300-86400 seconds; 1-500 retrievals)")
			}
			return nil
		},
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, _ []string) error {
			a.kpProgress("Creating import token in instance: %s...", s.instance)
			var t *kp.ImportTokenMetadata
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
				t, err = c.CreateImportToken(ctx, expiration, retrievals)
				return err
			})
			if err := a.kpDone(err); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(t)
			}
			return kpTable(a.stdout, []string{"Created", "Expires", "Max Retrievals", "Remaining Retrievals"},
				[]string{kpTime(t.CreationDate), kpTime(t.ExpirationDate), strconv.Itoa(t.MaxAllowedRetrievals), strconv.Itoa(t.RemainingRetrievals)})
		})}
	create.Flags().IntVarP(&expiration, "expiration", "e", 600, "seconds the token stays valid (300 to 86400)")
	create.Flags().IntVarP(&retrievals, "max-retrievals", "m", 1, "how many times the token may be retrieved (kp import-token show)")

	show := &cobra.Command{Use: "show", Short: "Retrieve the import token: its transport key (base64 PEM) and nonce; each retrieval counts", Args: args(cobra.NoArgs),
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, _ []string) error {
			a.kpProgress("Retrieving import token of instance: %s...", s.instance)
			var t *kp.ImportTokenKeyResponse
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
				t, err = c.GetImportTokenTransportKey(ctx)
				return err
			})
			if err := a.kpDone(err); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]string{"nonce": t.Nonce, "payload": t.Payload})
			}
			// The payload (a PEM public key in base64) is longer than kpText keeps.
			return kpTable(a.stdout, []string{"Nonce", "Payload"}, []string{kpText(t.Nonce), kpapi.Printable(t.Payload, 16<<10)})
		})}

	var material, pubkey, hash string
	keyEncrypt := &cobra.Command{Use: "key-encrypt", Short: "Encrypt key material with the import token's transport key (RSA-OAEP)", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkTokenBase64("key", material); err != nil {
				return err
			}
			if err := checkTransportKey(pubkey); err != nil {
				return err
			}
			var enc string
			var err error
			switch strings.ToLower(strings.ReplaceAll(hash, "-", "")) {
			case "", "sha256":
				enc, err = kp.EncryptKey(material, pubkey)
			case "sha1":
				enc, err = kp.EncryptKeyWithSHA1(material, pubkey)
			default:
				return usagef("--hash %q: want sha256 (the default) or sha1", hash)
			}
			a.kpProgress("Encrypting key...")
			if err != nil {
				err = fmt.Errorf("encrypting the key material: %w", err)
			}
			if err := a.kpDone(err); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]string{"encryptedKey": enc})
			}
			return kpTable(a.stdout, []string{"Encrypted Key"}, []string{enc})
		}}
	keyEncrypt.Flags().StringVarP(&material, "key", "k", "", "the base64 key material")
	keyEncrypt.Flags().StringVarP(&pubkey, "pubkey", "p", "", "the transport key: the payload of kp import-token show")
	keyEncrypt.Flags().StringVarP(&hash, "hash", "a", "sha256", "the OAEP hash: sha256, or sha1 for services that want RSAES_OAEP_SHA_1")
	requireFlags(keyEncrypt, "key", "pubkey")

	var nonceMaterial, nonce string
	nonceEncrypt := &cobra.Command{Use: "nonce-encrypt", Short: "Encrypt the import token's nonce with the key material (AES-GCM)", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkTokenBase64("key", nonceMaterial); err != nil {
				return err
			}
			if err := checkTokenBase64("nonce", nonce); err != nil {
				return err
			}
			a.kpProgress("Encrypting nonce...")
			var enc, iv string
			err := recoverClient(func() (err error) {
				enc, iv, err = kp.EncryptNonce(nonceMaterial, nonce, "")
				return err
			})
			if err != nil {
				err = fmt.Errorf("encrypting the nonce: %w", err)
			}
			if err := a.kpDone(err); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]string{"encryptedNonce": enc, "iv": iv})
			}
			return kpTable(a.stdout, []string{"Encrypted Nonce", "IV"}, []string{enc, iv})
		}}
	nonceEncrypt.Flags().StringVarP(&nonceMaterial, "key", "k", "", "the base64 key material")
	nonceEncrypt.Flags().StringVarP(&nonce, "nonce", "n", "", "the import token's nonce (kp import-token show)")
	requireFlags(nonceEncrypt, "key", "nonce")
	return []*cobra.Command{create, show, keyEncrypt, nonceEncrypt}
}

// checkTokenBase64 checks the base64 value of a required flag of the import token helpers:
// given empty, it is refused as if missing.
func checkTokenBase64(flag, v string) error {
	if v == "" {
		return usagef("--%s is empty: give its base64 value", flag)
	}
	return checkBase64(flag, v)
}

// checkTransportKey checks --pubkey of kp import-token key-encrypt before the client's
// EncryptKey sees it, so that a wrong value is named plainly: it must be the base64 of the
// PEM RSA public key that kp import-token show prints as its payload.
func checkTransportKey(pub string) error {
	const want = "give the payload of kp import-token show (the base64 of the transport key's PEM)"
	if pub == "" {
		return usagef("--pubkey is empty: %s", want)
	}
	raw, err := base64.StdEncoding.DecodeString(pub)
	if err != nil {
		return usagef("--pubkey: not base64 (standard encoding, with padding): %s", want)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return usagef("--pubkey is not a PEM public key once decoded from base64: %s", want)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return usagef("--pubkey: the PEM block (%s) does not hold a public key: %s", kpapi.Printable(block.Type, 40), want)
	}
	if _, ok := key.(*rsa.PublicKey); !ok {
		return usagef("--pubkey is not an RSA public key: %s", want)
	}
	return nil
}
