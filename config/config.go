// Package config loads and validates warren's YAML subscription map.
//
// Loading goes defaults -> strict decode -> Validate. Every problem found is
// reported at once, each naming the file, line, column and YAML path.
package config

import (
	"fmt"
	"strings"
	"time"
)

// Config is a loaded, validated configuration.
type Config struct {
	Broker        Broker         `yaml:"broker"`
	Server        Server         `yaml:"server"`
	Defaults      Options        `yaml:"defaults"`
	Subscriptions []Subscription `yaml:"subscriptions"`

	// Path is the file the config was read from.
	Path string `yaml:"-"`

	// pos is where each YAML path was written, when read from a file.
	pos map[string]position
}

// Broker says where RabbitMQ is and how warren's objects are named there.
type Broker struct {
	// URL is a single broker node. URLs names the nodes of a cluster
	// instead; set one of the two (Nodes reads either).
	URL             string   `yaml:"url"`
	URLs            []string `yaml:"urls"`
	Exchange        string   `yaml:"exchange"`
	DeclareExchange bool     `yaml:"declare_exchange"`
	QueuePrefix     string   `yaml:"queue_prefix"`
	QueueType       string   `yaml:"queue_type"` // classic | quorum
	TLS             TLS      `yaml:"tls"`
	// OperatorEvents publishes warren.delivery.parked and
	// warren.subscription.* events to Exchange.
	OperatorEvents bool `yaml:"operator_events"`
}

// TLS configures amqps:// connections. Empty fields use the system defaults.
// Relative file paths are relative to the working directory.
type TLS struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}

// Server configures the warren process itself.
type Server struct {
	// Listen is the address of /metrics, /healthz and /readyz; "" turns it off.
	Listen string `yaml:"listen"`
	// ShutdownGrace bounds how long in-flight requests may run after a stop
	// signal before their messages are requeued.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
	// DedupWindow is how many recently delivered event ids are remembered per
	// process to skip a second POST after a lost ack; 0 turns it off.
	DedupWindow int `yaml:"dedup_window"`
}

// Options are the delivery settings every subscription inherits from
// defaults and may override.
type Options struct {
	Timeout        time.Duration  `yaml:"timeout"`
	Concurrency    int            `yaml:"concurrency"`
	Prefetch       int            `yaml:"prefetch"`   // 0 = 2 x Concurrency
	RateLimit      float64        `yaml:"rate_limit"` // requests per second, 0 = unlimited
	Format         string         `yaml:"format"`     // envelope | raw | cloudevents
	Source         string         `yaml:"source"`     // ce-source for the cloudevents format
	Retry          Retry          `yaml:"retry"`
	CircuitBreaker CircuitBreaker `yaml:"circuit_breaker"`
}

// Retry is the backoff schedule: one tier queue per distinct delay.
type Retry struct {
	Delays       []time.Duration `yaml:"delays"`
	DeadOnStatus []int           `yaml:"dead_on_status"`
}

// CircuitBreaker stops consuming after Failures consecutive failed attempts
// for Cooldown. Failures 0 turns it off.
type CircuitBreaker struct {
	Failures int           `yaml:"failures"`
	Cooldown time.Duration `yaml:"cooldown"`
}

// Subscription is one endpoint and the events it receives.
type Subscription struct {
	Name    string            `yaml:"name"`
	URL     string            `yaml:"url"`
	Events  []string          `yaml:"events"`
	Secrets []Secret          `yaml:"secrets"`
	Headers map[string]string `yaml:"headers"`
	Options `yaml:",inline"`
}

// Formats a subscription may use.
const (
	FormatEnvelope    = "envelope"
	FormatRaw         = "raw"
	FormatCloudEvents = "cloudevents"
)

// Queue types.
const (
	QueueClassic = "classic"
	QueueQuorum  = "quorum"
)

// Default returns the configuration every file starts from.
func Default() Config {
	return Config{
		Broker: Broker{
			URL:             "amqp://guest:guest@localhost:5672/",
			Exchange:        "events",
			DeclareExchange: true,
			QueuePrefix:     "warren",
			QueueType:       QueueClassic,
		},
		Server: Server{
			Listen:        "127.0.0.1:9464",
			ShutdownGrace: 30 * time.Second,
			DedupWindow:   100_000,
		},
		Defaults: Options{
			Timeout:     10 * time.Second,
			Concurrency: 16,
			Format:      FormatEnvelope,
			Source:      "warren",
			Retry: Retry{
				Delays: []time.Duration{
					5 * time.Second, 30 * time.Second, 2 * time.Minute,
					10 * time.Minute, time.Hour, 6 * time.Hour,
				},
				DeadOnStatus: []int{},
			},
			CircuitBreaker: CircuitBreaker{Cooldown: 30 * time.Second},
		},
	}
}

// EffectivePrefetch is the broker prefetch for these options. Under a rate
// limit the automatic prefetch is just enough to keep the workers busy, so
// throttled messages wait in RabbitMQ rather than in memory.
func (o Options) EffectivePrefetch() int {
	switch {
	case o.Prefetch != 0:
		return o.Prefetch
	case o.RateLimit > 0:
		return o.Concurrency
	}
	return 2 * o.Concurrency
}

// Subscription returns the subscription with the given name.
func (c *Config) Subscription(name string) (Subscription, bool) {
	for _, s := range c.Subscriptions {
		if s.Name == name {
			return s, true
		}
	}
	return Subscription{}, false
}

// WorkQueue is the queue a subscription consumes: P.S.
func (c *Config) WorkQueue(s Subscription) string {
	return c.Broker.QueuePrefix + "." + s.Name
}

// RetryQueue is the tier queue holding messages for delay d: P.S.retry.<d>.
func (c *Config) RetryQueue(s Subscription, d time.Duration) string {
	return c.WorkQueue(s) + ".retry." + DelayName(d)
}

// DeadQueue is the parking lot: P.S.dead.
func (c *Config) DeadQueue(s Subscription) string {
	return c.WorkQueue(s) + ".dead"
}

// Tiers lists a subscription's distinct delays in order; equal delays share
// one tier queue.
func (s Subscription) Tiers() []time.Duration {
	var tiers []time.Duration
	for _, d := range s.Retry.Delays {
		if len(tiers) == 0 || tiers[len(tiers)-1] != d {
			tiers = append(tiers, d)
		}
	}
	return tiers
}

// DelayName is a duration as Go prints it with zero units trimmed:
// 200ms, 30s, 1m30s, 10m, 1h.
func DelayName(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Nodes lists the broker URLs to connect to, in the order they are tried:
// broker.urls, or broker.url alone.
func (b Broker) Nodes() []string {
	if len(b.URLs) > 0 {
		return b.URLs
	}
	return []string{b.URL}
}

// RedactedURL is the broker URL, or the comma-separated cluster URLs, with
// passwords hidden, for logs.
func (b Broker) RedactedURL() string {
	nodes := b.Nodes()
	redacted := make([]string, len(nodes))
	for i, u := range nodes {
		redacted[i] = RedactURL(u)
	}
	return strings.Join(redacted, ", ")
}

// RedactURL is raw with its password hidden, for logs and errors.
func RedactURL(raw string) string {
	u, err := parseURL(raw)
	if err != nil {
		return "<invalid url>"
	}
	return u.Redacted()
}

// String keeps secrets out of %v.
func (s Subscription) String() string {
	return fmt.Sprintf("subscription %q -> %s", s.Name, RedactURL(s.URL))
}
