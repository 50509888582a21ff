package config

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

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
		{in: base64.StdEncoding.EncodeToString(key(32)), wantErr: "missing whsec_ prefix"},
		{in: "whsec_not*base64*at*all*not*base64*at*all", wantErr: "not valid base64"},
		{in: "", wantErr: "missing whsec_ prefix"},
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
