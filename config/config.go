// Package config loads and validates warren's YAML subscription map.
//
// Loading goes defaults -> strict decode -> Validate. Every problem found is
// reported at once, each naming the file, line, column and YAML path.
package config

import (
	"crypto/tls"
	"fmt"
	"slices"
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
	// Journal keeps every event in a stream for replay; nil: off.
	Journal *Journal `yaml:"journal"`
}

// Journal sizes the streams P.journal (every event published to the
// exchange) and P.attempts (every delivery attempt's outcome).
type Journal struct {
	MaxAge   time.Duration `yaml:"max_age"`
	MaxBytes ByteSize      `yaml:"max_bytes"`
}

// Journal defaults, used when broker.journal is written without them.
const (
	DefaultJournalMaxAge   = 7 * 24 * time.Hour
	DefaultJournalMaxBytes = 10 * 1000 * 1000 * 1000
)

func (j *Journal) setDefaults() {
	j.MaxAge, j.MaxBytes = DefaultJournalMaxAge, DefaultJournalMaxBytes
}

// TLS configures amqps:// connections to the broker, or https:// requests to
// an endpoint (mutual TLS with cert_file and key_file). Empty fields use the
// system defaults. Relative file paths are relative to the working directory.
type TLS struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
	// MinVersion is the oldest TLS version accepted: "1.2" or "1.3"; ""
	// means 1.2.
	MinVersion string `yaml:"min_version"`
}

// TLS versions min_version may name.
const (
	TLS12 = "1.2"
	TLS13 = "1.3"
)

// Version returns MinVersion as a crypto/tls version number.
func (t TLS) Version() uint16 {
	if t.MinVersion == TLS13 {
		return tls.VersionTLS13
	}
	return tls.VersionTLS12
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
	// MaxInFlight caps the attempts in flight across all subscriptions
	// together; 0 means no cap. Under it, priority orders who waits.
	MaxInFlight int `yaml:"max_in_flight"`
	// MemoryLimit bounds what warren holds: message bodies in flight and
	// prefetched are kept under about half of it, and it is the Go
	// runtime's soft memory limit. auto: the container's memory limit less
	// a margin, or none outside a container; 0: none.
	MemoryLimit ByteSize `yaml:"memory_limit"`
}

// Options are the delivery settings every subscription inherits from
// defaults and may override.
type Options struct {
	Timeout     time.Duration `yaml:"timeout"`
	Concurrency int           `yaml:"concurrency"`
	Prefetch    int           `yaml:"prefetch"`   // 0 = 2 x Concurrency
	RateLimit   float64       `yaml:"rate_limit"` // requests per second, 0 = unlimited
	Format      string        `yaml:"format"`     // envelope | raw | cloudevents
	Source      string        `yaml:"source"`     // ce-source for the cloudevents format
	// MaxBodyBytes parks a larger message at once; 0 = no limit.
	MaxBodyBytes   ByteSize       `yaml:"max_body_bytes"`
	Retry          Retry          `yaml:"retry"`
	CircuitBreaker CircuitBreaker `yaml:"circuit_breaker"`

	// ForwardHeaders names AMQP message headers sent on as HTTP headers.
	ForwardHeaders []string `yaml:"forward_headers"`
	// TLS is the client side of https:// endpoints: CA, client certificate.
	TLS TLS `yaml:"tls"`
	// Proxy is an http:// or https:// forward proxy for the endpoint; ""
	// uses HTTPS_PROXY, HTTP_PROXY and NO_PROXY from the environment.
	Proxy string `yaml:"proxy"`
	// APIVersion delivers only events whose api_version header equals it,
	// and events without one; "" delivers every version.
	APIVersion string `yaml:"api_version"`
	// Priority orders waiting attempts under server.max_in_flight.
	Priority string `yaml:"priority"` // high | normal | low
	// MaxPriority declares the work queue with x-max-priority; 0 = none.
	MaxPriority int `yaml:"max_priority"`
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

	// The routing rules below are CEL expressions about this endpoint's own
	// events, so they are never inherited from defaults.

	// Filter is a bool expression: events for which it is false are acked
	// without a request.
	Filter string `yaml:"filter"`
	// Transform is an expression whose JSON value replaces data in the
	// envelope, or the body in raw and cloudevents.
	Transform string   `yaml:"transform"`
	Ordering  Ordering `yaml:"ordering"`
}

// Ordering delivers events with equal keys one at a time, in queue order.
type Ordering struct {
	// Key is a CEL expression giving a string or a number; "" = unordered.
	Key string `yaml:"key"`
}

// Formats a subscription may use.
const (
	FormatEnvelope    = "envelope"
	FormatRaw         = "raw"
	FormatCloudEvents = "cloudevents"
)

// Priorities a subscription may have.
const (
	PriorityHigh   = "high"
	PriorityNormal = "normal"
	PriorityLow    = "low"
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
			MemoryLimit:   AutoSize,
		},
		Defaults: Options{
			Timeout:      10 * time.Second,
			Concurrency:  16,
			Format:       FormatEnvelope,
			Source:       "warren",
			MaxBodyBytes: 1 << 20,
			Retry: Retry{
				Delays: []time.Duration{
					5 * time.Second, 30 * time.Second, 2 * time.Minute,
					10 * time.Minute, time.Hour, 6 * time.Hour,
				},
				DeadOnStatus: []int{},
			},
			CircuitBreaker: CircuitBreaker{Cooldown: 30 * time.Second},
			ForwardHeaders: []string{},
			TLS:            TLS{MinVersion: TLS12},
			Priority:       PriorityNormal,
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

// JournalStream is the stream holding every event: P.journal.
func (c *Config) JournalStream() string {
	return c.Broker.QueuePrefix + ".journal"
}

// AttemptsStream is the stream holding every attempt's outcome: P.attempts.
func (c *Config) AttemptsStream() string {
	return c.Broker.QueuePrefix + ".attempts"
}

// RetryQueue is the tier holding messages for delay d, shared by every
// subscription of the prefix: P.retry.<d>. The queue and the fanout
// exchange that feeds it share the name.
func (c *Config) RetryQueue(d time.Duration) string {
	return c.Broker.QueuePrefix + ".retry." + DelayName(d)
}

// Tiers lists every distinct delay of every subscription, shortest first.
func (c *Config) Tiers() []time.Duration {
	var tiers []time.Duration
	for _, s := range c.Subscriptions {
		for _, d := range s.Tiers() {
			if !slices.Contains(tiers, d) {
				tiers = append(tiers, d)
			}
		}
	}
	slices.Sort(tiers)
	return tiers
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
	return fmt.Sprintf("subscription %q -> %s", s.Name, EndpointURL(s.URL))
}
