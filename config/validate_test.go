package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, data string) *Config {
	t.Helper()
	c, err := Parse("test.yaml", []byte(data), lookupTestEnv)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestWarnings(t *testing.T) {
	const orders = "subscriptions: [{name: orders, url: 'https://orders.example.com/', events: [a]}]\n"
	tests := []struct {
		name, config string
		want         []string // prefixes of the warnings, in order
	}{
		{"none", orders, nil},
		{
			"tls without amqps",
			"broker: {url: 'amqp://localhost/', tls: {server_name: rabbit}}\n" + orders,
			[]string{"broker.tls: set, but broker.url uses amqp://"},
		},
		{
			"prefetch wait at defaults only",
			`defaults: {timeout: 5m, concurrency: 8, prefetch: 64}
subscriptions:
  - {name: a, url: 'https://a.example.com/', events: [a]}
  - {name: b, url: 'https://b.example.com/', events: [b]}
`,
			[]string{"defaults: a prefetched message may wait 40m unacked (timeout 5m x ceil(prefetch 64 / concurrency 8))"},
		},
		{
			"prefetch wait in a subscription",
			"subscriptions: [{name: orders, url: 'https://orders.example.com/', events: [a], concurrency: 1, prefetch: 200}]\n",
			[]string{"subscriptions[0]: a prefetched message may wait 33m20s unacked (timeout 10s x ceil(prefetch 200 / concurrency 1))"},
		},
		{
			"rate limit wait",
			"subscriptions: [{name: orders, url: 'https://orders.example.com/', events: [a], rate_limit: 0.005}]\n",
			[]string{"subscriptions[0]: a prefetched message may wait 53m20s unacked (prefetch 16 at rate_limit 0.005 per second)"},
		},
		{
			"plain http",
			`subscriptions:
  - {name: remote, url: 'http://orders.internal/', events: [a]}
  - {name: signed, url: 'http://orders.internal/', events: [a], secrets: ['${ORDERS_SECRET}']}
  - {name: local4, url: 'http://127.0.0.1:8080/', events: [a]}
  - {name: local6, url: 'http://[::1]:8080/', events: [a]}
  - {name: localhost, url: 'http://localhost:8080/', events: [a]}
`,
			[]string{"subscriptions[0].url: plain http to a non-loopback host without secrets"},
		},
		{
			"priority without max_in_flight",
			`defaults: {priority: low}
subscriptions:
  - {name: a, url: 'https://a.example.com/', events: [a], priority: high}
  - {name: b, url: 'https://b.example.com/', events: [b], priority: normal}
  - {name: c, url: 'https://c.example.com/', events: [c]}
`,
			[]string{
				"defaults.priority: low has no effect without server.max_in_flight",
				"subscriptions[0].priority: high has no effect without server.max_in_flight",
			},
		},
		{
			"priority with max_in_flight",
			"server: {max_in_flight: 10}\nsubscriptions: [{name: a, url: 'https://a.example.com/', events: [a], priority: high}]\n",
			nil,
		},
		{
			"many priority levels",
			"subscriptions: [{name: a, url: 'https://a.example.com/', events: [a], max_priority: 11}]\n",
			[]string{"subscriptions[0].max_priority: 11 priority levels, each costs"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustParse(t, tt.config).Warnings()
			if len(got) != len(tt.want) {
				t.Fatalf("Warnings() = %q, want %d warnings", got, len(tt.want))
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("warning %d = %q, want prefix %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

// TestValidateInCode checks a Config built without a file: problems carry
// no position and every subscription option is checked.
func TestValidateInCode(t *testing.T) {
	c := Default()
	sub := Subscription{Name: "orders", URL: "https://orders.example.com/", Events: []string{"a"}, Options: c.Defaults}
	sub.Concurrency = 0
	c.Subscriptions = []Subscription{sub, {Name: "payments"}}
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() = nil, want problems")
	}
	want := []string{
		`subscriptions[0].concurrency: out of range (got "0", want 1 to 1000)`,
		"subscriptions[1].url: missing (want an http:// or https:// URL)",
	}
	for _, w := range want {
		if !slices.Contains(strings.Split(err.Error(), "\n"), w) {
			t.Errorf("Validate() =\n%v\nwant a line %q", err, w)
		}
	}
}

func TestProblemString(t *testing.T) {
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{"f.yaml", 3, 7, "a.b", "bad"}, "f.yaml:3:7: a.b: bad"},
		{Problem{"f.yaml", 3, 0, "", "bad"}, "f.yaml:3: bad"},
		{Problem{"f.yaml", 0, 0, "", "bad"}, "f.yaml: bad"},
		{Problem{"", 0, 0, "a.b", "bad"}, "a.b: bad"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

// TestInheritCopies checks that subscriptions do not share slices with
// defaults: the agent may sort or append to them.
func TestInheritCopies(t *testing.T) {
	c := mustParse(t, `
subscriptions:
  - {name: a, url: 'https://a.example.com/', events: [a]}
  - {name: b, url: 'https://b.example.com/', events: [b]}
`)
	c.Subscriptions[0].Retry.Delays[0] = time.Hour
	if c.Defaults.Retry.Delays[0] == time.Hour || c.Subscriptions[1].Retry.Delays[0] == time.Hour {
		t.Error("changing one subscription's delays changed another's or the defaults'")
	}
}

func TestCheckPattern(t *testing.T) {
	tests := []struct{ in, want string }{
		{"order.*", ""},
		{"#", ""},
		{"*.*.created", ""},
		{"order..created", ""}, // an empty word is legal in AMQP
		{"order*", `wildcard must be a whole word (got "order*", want e.g. "order.*")`},
		{"*order", `wildcard must be a whole word (got "*order", want e.g. "*.order")`},
		{"or#der", `wildcard must be a whole word (got "or#der", want e.g. "or.#.der")`},
		{"order.**", `wildcard must be a whole word (got "order.**", want e.g. "order.*.*")`},
		{"", `empty pattern (want a routing-key pattern such as "order.*")`},
		{strings.Repeat("a", 256), "too long (got 256 bytes, want at most 255)"},
		{"a.\xff", `not valid UTF-8 (got "a.\xff")`},
	}
	for _, tt := range tests {
		if got := checkPattern(tt.in); got != tt.want {
			t.Errorf("checkPattern(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMaskURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://example.com/a@b?c=d@e", "https://example.com/a@b?c=d@e"},
		{"amqp://guest:hunter2@localhost:5672/", "amqp://guest:xxxxx@localhost:5672/"},
		{"amqp://guest:hunt@r2@localhost/", "amqp://guest:xxxxx@localhost/"},
		{"https://tok_live_1@example.com/", "https://xxxxx@example.com/"},
		{"guest:hunter2@localhost:5672", "guest:xxxxx@localhost:5672"}, // no scheme: does not parse
		{"amqp://guest:hunter2@[::1", "amqp://guest:xxxxx@[::1"},
	}
	for _, tt := range tests {
		if got := maskURL(tt.in); got != tt.want {
			t.Errorf("maskURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestBrokerNodes(t *testing.T) {
	single := mustParse(t, "subscriptions: [{name: a, url: 'https://a.example.com/', events: [a]}]\n")
	if got := single.Broker.Nodes(); !slices.Equal(got, []string{"amqp://guest:guest@localhost:5672/"}) {
		t.Errorf("default Nodes() = %q, want the default url", got)
	}
	cluster := mustParse(t, `broker:
  urls: ['amqp://u:p1@r1/', 'amqp://u:p2@r2/']
subscriptions: [{name: a, url: 'https://a.example.com/', events: [a]}]
`)
	if got := cluster.Broker.Nodes(); !slices.Equal(got, []string{"amqp://u:p1@r1/", "amqp://u:p2@r2/"}) {
		t.Errorf("Nodes() = %q, want the urls in order", got)
	}
	if got, want := cluster.Broker.RedactedURL(), "amqp://u:xxxxx@r1/, amqp://u:xxxxx@r2/"; got != want {
		t.Errorf("RedactedURL() = %q, want %q", got, want)
	}

	// In code, setting URLs means clearing the default URL.
	c := Default()
	c.Broker.URLs = []string{"amqp://r1/", "amqp://r2/"}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "broker.urls: set together with broker.url") {
		t.Errorf("Validate() = %v, want the url/urls conflict", err)
	}
}
