package config

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
)

const (
	secretPrefix     = "whsec_" // HMAC-SHA256 key, signatures "v1,"
	signingKeyPrefix = "whsk_"  // ed25519 private key, signatures "v1a,"
	publicKeyPrefix  = "whpk_"  // ed25519 public key, for receivers
	redacted         = "<secret>"

	// Key sizes the Standard Webhooks libraries accept.
	minSecretBytes = 24
	maxSecretBytes = 64
)

// Secret is a Standard Webhooks signing key: an HMAC secret (whsec_) or an
// ed25519 private key (whsk_). Every way of printing it, logging it or
// marshalling it shows <secret>, so a Config can be logged or rendered
// without leaking keys.
type Secret struct {
	key string // decoded bytes; a string keeps Secret comparable and immutable
	ed  bool   // key is an ed25519 private key (seed and public key)
}

// ParseSecret decodes a signing secret: "whsec_" followed by the standard
// base64 (padded or not) of 24 to 64 bytes, or "whsk_" followed by the
// base64 of an ed25519 private key (its 32-byte seed, or the 64 bytes of
// seed and public key). Its error never contains the secret.
func ParseSecret(s string) (Secret, error) {
	if encoded, ok := strings.CutPrefix(s, signingKeyPrefix); ok {
		return parseSigningKey(s, encoded)
	}
	if strings.HasPrefix(s, publicKeyPrefix) {
		return Secret{}, fmt.Errorf("invalid secret: a whpk_ public key cannot sign (got %s, want the whsk_ private key; receivers verify with whpk_)", maskSecret(s))
	}
	encoded, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return Secret{}, fmt.Errorf("invalid secret: missing whsec_ or whsk_ prefix (got %s, want whsec_ followed by the base64 of %d to %d random bytes, or whsk_ and an ed25519 private key)",
			maskSecret(s), minSecretBytes, maxSecretBytes)
	}
	key, ok := decodeBase64(encoded)
	if !ok {
		return Secret{}, secretError(s, "not valid base64")
	}
	if len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return Secret{}, secretError(s, fmt.Sprintf("decodes to %d bytes", len(key)))
	}
	return Secret{key: string(key)}, nil
}

func parseSigningKey(s, encoded string) (Secret, error) {
	fail := func(reason string) (Secret, error) {
		return Secret{}, fmt.Errorf("invalid secret: %s (got %s, want whsk_ followed by the base64 of an ed25519 private key: its 32-byte seed or 64 bytes of seed and public key)",
			reason, maskSecret(s))
	}
	key, ok := decodeBase64(encoded)
	if !ok {
		return fail("not valid base64")
	}
	var priv ed25519.PrivateKey
	switch len(key) {
	case ed25519.SeedSize:
		priv = ed25519.NewKeyFromSeed(key)
	case ed25519.PrivateKeySize:
		priv = ed25519.NewKeyFromSeed(key[:ed25519.SeedSize])
		if !bytes.Equal(priv[ed25519.SeedSize:], key[ed25519.SeedSize:]) {
			return fail("public half does not match the seed")
		}
	default:
		return fail(fmt.Sprintf("decodes to %d bytes", len(key)))
	}
	return Secret{key: string(priv), ed: true}, nil
}

func decodeBase64(s string) ([]byte, bool) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	return b, err == nil
}

func secretError(s, reason string) error {
	return fmt.Errorf("invalid secret: %s (got %s, want whsec_ followed by the base64 of %d to %d random bytes)",
		reason, maskSecret(s), minSecretBytes, maxSecretBytes)
}

// maskSecret quotes a would-be secret without revealing it: only the prefix,
// if present, and the length are shown.
func maskSecret(s string) string {
	if s == "" {
		return `""`
	}
	shown := ""
	for _, p := range []string{secretPrefix, signingKeyPrefix, publicKeyPrefix} {
		if strings.HasPrefix(s, p) {
			shown = p
		}
	}
	return fmt.Sprintf("%q (%d chars)", shown+"…", len(s))
}

// Key returns the HMAC key of a whsec_ secret, nil for a whsk_ key.
func (s Secret) Key() []byte {
	if s.ed {
		return nil
	}
	return []byte(s.key)
}

// Ed25519 returns the private key of a whsk_ secret, nil for a whsec_ one.
func (s Secret) Ed25519() ed25519.PrivateKey {
	if !s.ed {
		return nil
	}
	return ed25519.PrivateKey(s.key)
}

// String implements fmt.Stringer.
func (Secret) String() string { return redacted }

// GoString implements fmt.GoStringer, for %#v.
func (Secret) GoString() string { return redacted }

// Format implements fmt.Formatter so that no verb (%d, %x, ...) can reach
// the key through fmt's default struct printing.
func (Secret) Format(f fmt.State, _ rune) { fmt.Fprint(f, redacted) }

// MarshalYAML implements yaml.Marshaler.
func (Secret) MarshalYAML() (any, error) { return redacted, nil }

// MarshalText implements encoding.TextMarshaler, covering JSON as well.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }
