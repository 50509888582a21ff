package cli

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warren-hq/warren/config"
)

func (a *app) keysCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Make ed25519 signing keys (whsk_) and their public keys (whpk_)",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRunE("COMMAND"),
	}
	cmd.AddCommand(a.keysGenerateCommand(), a.keysPublicCommand())
	return cmd
}

func (a *app) keysGenerateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "generate",
		Short: "Print a new whsk_ signing key (for secrets) and its whpk_ public key (for receivers), one per line",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			pub, priv, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.env.Stdout, "whsk_%s\n%s\n", base64.StdEncoding.EncodeToString(priv.Seed()), publicKey(pub))
			return nil
		},
	}
}

func (a *app) keysPublicCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "public whsk_...|-",
		Short: "Print the whpk_ public key of a whsk_ signing key (- reads it from stdin)",
		Args:  exactArgs(1, "one whsk_ key, or - to read it from stdin"),
		RunE: func(_ *cobra.Command, args []string) error {
			s := args[0]
			if s == "-" {
				// A key is a few dozen bytes; more is not a key.
				b, err := io.ReadAll(io.LimitReader(a.env.Stdin, 4096))
				if err != nil {
					return fmt.Errorf("read stdin: %w", err)
				}
				s = strings.TrimSpace(string(b))
			}
			if strings.HasPrefix(s, "whsec_") {
				return usagef("a whsec_ HMAC secret has no public key (want a whsk_ ed25519 signing key)")
			}
			if strings.HasPrefix(s, "whpk_") {
				return usagef("already a whpk_ public key (want the whsk_ signing key)")
			}
			secret, err := config.ParseSecret(s)
			if err != nil {
				return usageError{err}
			}
			fmt.Fprintln(a.env.Stdout, publicKey(secret.Ed25519().Public().(ed25519.PublicKey)))
			return nil
		},
	}
}

// publicKey encodes an ed25519 public key the way Standard Webhooks
// receivers take it.
func publicKey(pub ed25519.PublicKey) string {
	return "whpk_" + base64.StdEncoding.EncodeToString(pub)
}
