package cli_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/signing"
	"github.com/warren-hq/warren/config"
)

// TestKeysGenerate: the printed whsk_ key is one warren accepts in secrets,
// `keys public` derives the printed whpk_ key from it, and what warren signs
// with it verifies with plain crypto/ed25519 against that public key.
func TestKeysGenerate(t *testing.T) {
	r := execute(t, nil, "keys", "generate")
	r.wantCode(t, 0)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "whsk_") || !strings.HasPrefix(lines[1], "whpk_") {
		t.Fatalf("stdout %q, want a whsk_ line and a whpk_ line", r.stdout)
	}
	sk, pk := lines[0], lines[1]
	secret, err := config.ParseSecret(sk)
	if err != nil {
		t.Fatalf("ParseSecret(generated key): %v", err)
	}
	if secret.Ed25519() == nil {
		t.Fatal("generated key parsed as an HMAC secret, want ed25519")
	}
	if other := execute(t, nil, "keys", "generate"); other.stdout == r.stdout {
		t.Fatal("two runs printed the same key pair")
	}

	for name, run := range map[string]func() result{
		"argument": func() result { return execute(t, nil, "keys", "public", sk) },
		"stdin":    func() result { return execute(t, strings.NewReader(sk+"\n"), "keys", "public", "-") },
	} {
		got := run()
		got.wantCode(t, 0)
		if got.stdout != pk+"\n" {
			t.Errorf("keys public (%s) printed %q, want %q", name, got.stdout, pk+"\n")
		}
	}

	pub, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(pk, "whpk_"))
	if err != nil || len(pub) != ed25519.PublicKeySize {
		t.Fatalf("whpk_ key decodes to %d bytes (err %v), want %d", len(pub), err, ed25519.PublicKeySize)
	}
	id, ts, body := "msg_1", time.Unix(1_700_000_000, 0), []byte(`{"a":1}`)
	header := signing.NewKeySigner([]signing.Key{{Ed25519: secret.Ed25519()}}).Sign(id, ts, body)
	sig, ok := strings.CutPrefix(header, "v1a,")
	if !ok {
		t.Fatalf("signature header %q, want v1a,...", header)
	}
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte(id + ".1700000000." + string(body))
	if !ed25519.Verify(pub, msg, raw) {
		t.Error("warren's v1a signature does not verify against the printed public key")
	}
	if ed25519.Verify(pub, append(msg, '!'), raw) {
		t.Error("signature verifies for another message too")
	}
}

// TestKeysBadInput: what is not a whsk_ key, or wrong arguments, is bad
// usage with a message that says what was wanted and never echoes the key.
func TestKeysBadInput(t *testing.T) {
	hmac := testSecret
	cases := []struct {
		name  string
		stdin string
		args  []string
		want  string
	}{
		{"no argument", "", []string{"keys", "public"}, "want one whsk_ key, or - to read it from stdin"},
		{"garbage", "", []string{"keys", "public", "nope"}, "missing whsec_ or whsk_ prefix"},
		{"bad base64", "", []string{"keys", "public", "whsk_!!!"}, "not valid base64"},
		{"short key", "", []string{"keys", "public", "whsk_AAAA"}, "decodes to 3 bytes"},
		{"hmac secret", "", []string{"keys", "public", hmac}, "a whsec_ HMAC secret has no public key"},
		{"public key", "", []string{"keys", "public", "whpk_AAAA"}, "already a whpk_ public key"},
		{"empty stdin", "", []string{"keys", "public", "-"}, "missing whsec_ or whsk_ prefix"},
		{"generate argument", "", []string{"keys", "generate", "x"}, "want no arguments"},
		{"unknown", "", []string{"keys", "rotate"}, `unknown command "rotate"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := execute(t, strings.NewReader(tc.stdin), tc.args...)
			r.wantCode(t, 2)
			r.noUsage(t)
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr %q, want it to contain %q", r.stderr, tc.want)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			if strings.Contains(r.stderr, strings.TrimPrefix(hmac, "whsec_")) {
				t.Error("the secret appears in the error")
			}
		})
	}
}
