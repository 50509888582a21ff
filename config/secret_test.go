package config

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestParseSigningKey: whsk_ takes an ed25519 seed or whole private key;
// whpk_ (a public key) and sizes or halves that do not fit are refused.
func TestParseSigningKey(t *testing.T) {
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	priv := ed25519.NewKeyFromSeed(seed)
	b64 := base64.StdEncoding.EncodeToString
	for _, in := range []string{"whsk_" + b64(seed), "whsk_" + b64(priv), "whsk_" + base64.RawStdEncoding.EncodeToString(priv)} {
		s, err := ParseSecret(in)
		if err != nil {
			t.Fatalf("ParseSecret(%q): %v", in, err)
		}
		if !bytes.Equal(s.Ed25519(), priv) || s.Key() != nil {
			t.Errorf("ParseSecret(%q) = ed25519 %x, HMAC %x; want the private key only", in, s.Ed25519(), s.Key())
		}
	}
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, ed25519.SeedSize))
	mixed := append(append([]byte{}, seed...), other.Public().(ed25519.PublicKey)...)
	for in, want := range map[string]string{
		"whsk_" + b64(seed[:31]): "decodes to 31 bytes",
		"whsk_" + b64(mixed):     "public half does not match the seed",
		"whsk_***":               "not valid base64",
		"whpk_" + b64(priv.Public().(ed25519.PublicKey)): "a whpk_ public key cannot sign",
	} {
		_, err := ParseSecret(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSecret(%q) = %v, want error containing %q", in, err, want)
		}
		if err != nil && len(in) > 10 && strings.Contains(err.Error(), in[5:15]) {
			t.Errorf("ParseSecret error reveals the key: %v", err)
		}
	}
	if s, _ := ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"); s.Ed25519() != nil {
		t.Error("a whsec_ secret has an ed25519 key")
	}
}

func TestParseSecret(t *testing.T) {
	key := func(n int) []byte { return bytes.Repeat([]byte{0xa5}, n) }
	padded := func(n int) string { return "whsec_" + base64.StdEncoding.EncodeToString(key(n)) }
	tests := []struct {
		in      string
		wantLen int    // decoded key length when valid
		wantErr string // substring of the error when invalid
	}{
		{in: padded(32), wantLen: 32},
		{in: padded(24), wantLen: 24},
		{in: padded(64), wantLen: 64},
		{in: "whsec_" + base64.RawStdEncoding.EncodeToString(key(32)), wantLen: 32},
		{in: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", wantLen: 24},
		{in: padded(23), wantErr: "decodes to 23 bytes"},
		{in: padded(65), wantErr: "decodes to 65 bytes"},
		{in: base64.StdEncoding.EncodeToString(key(32)), wantErr: "missing whsec_ or whsk_ prefix"},
		{in: "whsec_not*base64*at*all*not*base64*at*all", wantErr: "not valid base64"},
		{in: "", wantErr: "missing whsec_ or whsk_ prefix"},
	}
	for _, tt := range tests {
		s, err := ParseSecret(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseSecret(%q) = %v, want error containing %q", tt.in, err, tt.wantErr)
			}
			if payload := strings.TrimPrefix(tt.in, "whsec_"); payload != "" && err != nil && strings.Contains(err.Error(), payload) {
				t.Errorf("ParseSecret error reveals the secret: %v", err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseSecret(%q): %v", tt.in, err)
			continue
		}
		if !bytes.Equal(s.Key(), key(tt.wantLen)) && tt.in != "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" {
			t.Errorf("ParseSecret(%q).Key() = %x, want %d bytes of a5", tt.in, s.Key(), tt.wantLen)
		}
		if len(s.Key()) != tt.wantLen {
			t.Errorf("ParseSecret(%q) key is %d bytes, want %d", tt.in, len(s.Key()), tt.wantLen)
		}
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	s, err := ParseSecret(testEnv["ORDERS_SECRET"])
	if err != nil {
		t.Fatal(err)
	}
	holder := struct{ Secrets []Secret }{[]Secret{s}}

	outputs := []string{s.String(), s.GoString()}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		outputs = append(outputs, fmt.Sprintf(verb, s), fmt.Sprintf(verb, holder))
	}
	y, err := yaml.Marshal(holder)
	if err != nil {
		t.Fatal(err)
	}
	var j bytes.Buffer
	enc := json.NewEncoder(&j)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(holder); err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("x", "secret", s, "all", holder)
	outputs = append(outputs, string(y), j.String(), logged.String())

	forbidden := []string{string(s.Key()), fmt.Sprintf("%x", s.Key()), strings.TrimPrefix(testEnv["ORDERS_SECRET"], "whsec_")}
	for _, out := range outputs {
		if !strings.Contains(out, "<secret>") {
			t.Errorf("output %q does not show <secret>", out)
		}
		for _, f := range forbidden {
			if strings.Contains(out, f) {
				t.Errorf("output %q reveals the key", out)
			}
		}
	}
}

// TestEndpointURLHidesTokens: validate -v and logs show an endpoint without
// the tokens webhook URLs carry in their path and query.
func TestEndpointURLHidesTokens(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"https://hooks.example.com/services/T000/B000/XXXXsecret?token=abc&x=1", "https://hooks.example.com/services/xxxxx/xxxxx/xxxxx?token=xxxxx&x=xxxxx"},
		{"https://user:pw@orders.example.com/webhooks", "https://xxxxx@orders.example.com/webhooks"},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080"},
		{"https://example.com/hooks/", "https://example.com/hooks/"},
	} {
		if got := EndpointURL(tt.in); got != tt.want {
			t.Errorf("EndpointURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
