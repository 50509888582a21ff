package config

import "testing"

func TestExpand(t *testing.T) {
	env := map[string]string{"A": "alpha", "EMPTY": "", "DOLLAR": "${A}$$"}
	lookup := func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}
	tests := []struct {
		in, want, wantErr string
	}{
		{in: "plain", want: "plain"},
		{in: "${A}", want: "alpha"},
		{in: "x-${A}-${A}", want: "x-alpha-alpha"},
		{in: "${A:-fallback}", want: "alpha"},
		{in: "${UNSET:-fallback}", want: "fallback"},
		{in: "${EMPTY:-fallback}", want: "fallback"}, // empty counts as unset for :-
		{in: "${EMPTY}", want: ""},
		{in: "${UNSET:-}", want: ""},
		{in: "${UNSET:-a:-b}", want: "a:-b"}, // the default is everything after the first :-
		{in: "${UNSET:-$$}", want: "$$"},     // and is taken literally
		{in: "${DOLLAR}", want: "${A}$$"},    // expanded values are not expanded again
		{in: "$$", want: "$"},
		{in: "$${A}", want: "${A}"},
		{in: "$$${A}", want: "$alpha"},
		{in: "$$$${A}", want: "$${A}"},
		{in: "5$", want: "5$"},
		{in: "$A", want: "$A"},
		{in: "a $ b", want: "a $ b"},
		{in: "${UNSET}", wantErr: "environment variable UNSET is not set (want it set, or a default such as ${UNSET:-value})"},
		{in: "x ${A", wantErr: `unterminated "${" (want ${VAR} or ${VAR:-default}, or $$ for a literal $)`},
		{in: "${}", wantErr: `invalid variable name "" (want ${NAME} or ${NAME:-default}, NAME made of letters, digits and _)`},
		{in: "${1A}", wantErr: `invalid variable name "1A" (want ${NAME} or ${NAME:-default}, NAME made of letters, digits and _)`},
		{in: "${A-b}", wantErr: `invalid variable name "A-b" (want ${NAME} or ${NAME:-default}, NAME made of letters, digits and _)`},
	}
	for _, tt := range tests {
		got, err := expand(tt.in, lookup)
		switch {
		case tt.wantErr != "":
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("expand(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
		case err != nil:
			t.Errorf("expand(%q): %v", tt.in, err)
		case got != tt.want:
			t.Errorf("expand(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestExpandRetypes checks that an expanded plain scalar is read by its new
// value, while a quoted one stays a string.
func TestExpandRetypes(t *testing.T) {
	env := func(name string) (string, bool) { return map[string]string{"C": "8", "TRUE": "true"}[name], true }
	data := `
broker:
  declare_exchange: ${TRUE}
defaults:
  concurrency: ${C}
  prefetch: ${P:-24}
subscriptions:
  - name: '${C}'
    url: https://example.com/
    events: [a]
`
	c, err := Parse("test.yaml", []byte(data), env)
	if err != nil {
		t.Fatal(err)
	}
	if c.Defaults.Concurrency != 8 || c.Defaults.Prefetch != 24 || !c.Broker.DeclareExchange || c.Subscriptions[0].Name != "8" {
		t.Errorf("got concurrency %d, prefetch %d, declare_exchange %t, name %q; want 8, 24, true, \"8\"",
			c.Defaults.Concurrency, c.Defaults.Prefetch, c.Broker.DeclareExchange, c.Subscriptions[0].Name)
	}
}
