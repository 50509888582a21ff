package config

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
)

const (
	secretPrefix = "whsec_"
	redacted     = "<secret>"

	// Key sizes the Standard Webhooks libraries accept.
	minSecretBytes = 24
	maxSecretBytes = 64
)

// Secret is a Standard Webhooks signing key. Every way of printing it,
// logging it or marshalling it shows <secret>, so a Config can be logged or
// rendered without leaking keys.
type Secret struct {
	key string // decoded bytes; a string keeps Secret comparable and immutable
}

// ParseSecret decodes "whsec_" followed by the standard base64 (padded or
// not) of 24 to 64 bytes. Its error never contains the secret.
func ParseSecret(s string) (Secret, error) {
	encoded, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return Secret{}, secretError(s, "missing whsec_ prefix")
	}
	key, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		key, err = base64.RawStdEncoding.DecodeString(encoded)
	}
	if err != nil {
		return Secret{}, secretError(s, "not valid base64")
	}
	if len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return Secret{}, secretError(s, fmt.Sprintf("decodes to %d bytes", len(key)))
	}
	return Secret{key: string(key)}, nil
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
	if strings.HasPrefix(s, secretPrefix) {
		shown = secretPrefix
	}
	return fmt.Sprintf("%q (%d chars)", shown+"…", len(s))
}

// Key returns the HMAC key. Callers must not modify it.
func (s Secret) Key() []byte { return []byte(s.key) }

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
