package config

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Limits RabbitMQ and AMQP impose, and warren's own cap on workers.
const (
	maxNameBytes   = 255                            // exchange, queue and routing-key names
	maxPrefetch    = 65535                          // basic.qos prefetch-count is a uint16
	maxTTL         = (1<<32 - 1) * time.Millisecond // x-message-ttl
	maxConcurrency = 1000
	maxPriority    = 255 // x-max-priority
)

var subscriptionName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// Validate checks c against every rule and returns all problems as an
// *Error, or nil. Load and Parse call it; call it again after changing a
// Config in code.
func (c *Config) Validate() error {
	if ps := c.problems(); len(ps) > 0 {
		return &Error{Problems: ps}
	}
	return nil
}

// problems lists what Validate finds, in file order.
func (c *Config) problems() []Problem {
	v := &checker{c: c}
	v.broker()
	v.server()
	v.options("defaults", c.Defaults, func(string) bool { return true })
	v.subscriptions()
	slices.SortStableFunc(v.problems, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	return v.problems
}

// checker collects problems, each placed where its path was written.
type checker struct {
	c        *Config
	problems []Problem
}

func (v *checker) add(path, format string, args ...any) {
	p := v.c.position(path)
	v.problems = append(v.problems, Problem{
		File: v.c.Path, Line: p.line, Column: p.column,
		Path: path, Message: fmt.Sprintf(format, args...),
	})
}

// required reports a required value that is absent or written empty.
func (v *checker) required(path, want string) {
	what := "missing"
	if _, written := v.c.pos[path]; written {
		what = "empty"
	}
	v.add(path, "%s (want %s)", what, want)
}

func (v *checker) broker() {
	b := v.c.Broker
	_, written := v.c.pos["broker.urls"]
	list := len(b.URLs) > 0 || written
	switch {
	case list && b.URL != "":
		v.add("broker.urls", "set together with broker.url (want one of them: url for a single node, urls for the nodes of a cluster)")
	case !list:
		v.brokerURL("broker.url", b.URL)
	}
	if list && len(b.URLs) == 0 {
		v.required("broker.urls", "a list of amqp:// or amqps:// URLs, one per cluster node")
	}
	first := make(map[string]int, len(b.URLs))
	for i, u := range b.URLs {
		path := fmt.Sprintf("broker.urls[%d]", i)
		if j, dup := first[u]; dup {
			v.add(path, "duplicate URL (got %q, first at %s)", maskURL(u), v.c.firstAt(fmt.Sprintf("broker.urls[%d]", j)))
			continue
		}
		first[u] = i
		v.brokerURL(path, u)
	}

	v.objectName("broker.exchange", b.Exchange, "an exchange name such as events", "-_.:")
	if b.DeclareExchange && strings.HasPrefix(b.Exchange, "amq.") {
		v.add("broker.exchange", "reserved for RabbitMQ's built-in exchanges (got %q, want another name, or declare_exchange: false to use it as is)", b.Exchange)
	}
	v.objectName("broker.queue_prefix", b.QueuePrefix, "a prefix such as warren", "-_.")
	if strings.HasPrefix(b.QueuePrefix, "amq.") {
		v.add("broker.queue_prefix", "reserved for RabbitMQ's own queues (got %q, want another prefix)", b.QueuePrefix)
	}
	if b.QueueType != QueueClassic && b.QueueType != QueueQuorum {
		v.add("broker.queue_type", "unknown queue type (got %q, want classic or quorum)", b.QueueType)
	}
	v.tls("broker.tls", b.TLS, func(string) bool { return true })
	if b.Journal != nil {
		v.journal(*b.Journal)
	}
}

// journal checks the stream retention: x-max-age is a whole number of
// seconds at least, and a stream with neither limit would grow until the
// broker's disk alarm stops every publisher.
func (v *checker) journal(j Journal) {
	switch {
	case j.MaxAge <= 0:
		v.add("broker.journal.max_age", "must be positive (got %q, want a duration such as 168h)", DelayName(j.MaxAge))
	case j.MaxAge%time.Second != 0:
		v.add("broker.journal.max_age", "not a whole number of seconds (got %q, want e.g. 168h; RabbitMQ keeps stream ages in seconds)", DelayName(j.MaxAge))
	}
	if j.MaxBytes <= 0 {
		v.add("broker.journal.max_bytes", "must be positive (got %q, want a size such as 10GB)", j.MaxBytes)
	}
}

// brokerURL checks the address of one broker node.
func (v *checker) brokerURL(path, raw string) {
	u, err := parseURL(raw)
	switch {
	case raw == "":
		v.required(path, "an amqp:// or amqps:// URL")
	case err != nil:
		v.add(path, "invalid URL: %s (got %q, want amqp://user:password@host:port/vhost)", err, maskURL(raw))
	case u.Scheme != "amqp" && u.Scheme != "amqps":
		v.add(path, "unsupported scheme (got %q, want amqp:// or amqps://)", maskURL(raw))
	case strings.ContainsAny(raw, " \t"):
		v.add(path, "contains whitespace (got %q, want it percent-encoded as %%20)", maskURL(raw))
	}
}

// objectName checks an exchange name or queue prefix: ASCII letters, digits
// and the given punctuation, which keeps names safe in URLs and metrics.
func (v *checker) objectName(path, name, want, punct string) {
	if name == "" {
		v.required(path, want)
		return
	}
	if len(name) > maxNameBytes {
		v.add(path, "too long (got %d bytes, want at most %d)", len(name), maxNameBytes)
		return
	}
	for _, r := range name {
		if !isAlnum(r) && !strings.ContainsRune(punct, r) {
			v.add(path, "invalid character %q (got %q, want letters, digits, %s)", r, name, quoteChars(punct))
			return
		}
	}
}

// tls checks TLS files written under path; own says whether a key was
// written there (see options).
func (v *checker) tls(path string, t TLS, own func(key string) bool) {
	files := []struct{ key, file string }{
		{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile},
	}
	for _, f := range files {
		if f.file == "" || !own("tls."+f.key) {
			continue
		}
		if err := readable(f.file); err != nil {
			v.add(path+"."+f.key, "cannot read file: %s (got %q, want a readable PEM file)", err, f.file)
		}
	}
	if own("tls.min_version") && t.MinVersion != TLS12 && t.MinVersion != TLS13 && t.MinVersion != "" {
		v.add(path+".min_version", "unsupported TLS version (got %q, want 1.2 or 1.3)", t.MinVersion)
	}
	switch {
	case t.CertFile != "" && t.KeyFile == "" && (own("tls.cert_file") || own("tls.key_file")):
		v.add(path+".key_file", "missing (want key_file with cert_file, or neither)")
	case t.KeyFile != "" && t.CertFile == "" && (own("tls.cert_file") || own("tls.key_file")):
		v.add(path+".cert_file", "missing (want cert_file with key_file, or neither)")
	}
}

// proxy checks a forward proxy's URL, the way net/http will use it.
func (v *checker) proxy(path, raw string) {
	const want = `want http://host:port or https://host:port, or "" for HTTPS_PROXY from the environment`
	u, err := parseURL(raw)
	switch {
	case err != nil:
		v.add(path, "invalid URL: %s (got %q, %s)", err, maskURL(raw), want)
	case u.Scheme != "http" && u.Scheme != "https":
		v.add(path, "unsupported scheme (got %q, %s)", maskURL(raw), want)
	case u.Host == "":
		v.add(path, "missing host (got %q, %s)", maskURL(raw), want)
	case strings.ContainsAny(raw, " \t"):
		v.add(path, "contains whitespace (got %q, %s)", maskURL(raw), want)
	}
}

// readable opens file the way the broker session will, so that a missing or
// unreadable certificate stops the config here rather than at connect time.
func readable(file string) error {
	f, err := os.Open(file)
	if err != nil {
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			return pe.Err
		}
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if info.IsDir() {
		return errors.New("is a directory")
	}
	return nil
}

func (v *checker) server() {
	s := v.c.Server
	if s.Listen != "" {
		if reason := checkListen(s.Listen); reason != "" {
			v.add("server.listen", `%s (got %q, want host:port such as 127.0.0.1:9464, or "" to turn the server off)`, reason, s.Listen)
		}
	}
	if s.ShutdownGrace <= 0 {
		v.add("server.shutdown_grace", "must be positive (got %q, want a duration such as 30s)", DelayName(s.ShutdownGrace))
	}
	if s.DedupWindow < 0 {
		v.add("server.dedup_window", `must not be negative (got "%d", want a count of event ids, or 0 to turn it off)`, s.DedupWindow)
	}
	if s.MemoryLimit < 0 && s.MemoryLimit != AutoSize {
		v.add("server.memory_limit", "must not be negative (got %q, want auto, 0 for none, or a size such as 256MiB)", s.MemoryLimit)
	} else if s.MemoryLimit > 0 && s.MemoryLimit < 32*MiB {
		v.add("server.memory_limit", "too small to run in (got %q, want auto, 0 for none, or at least 32MiB)", s.MemoryLimit)
	}
	if s.MaxInFlight < 0 {
		v.add("server.max_in_flight", `must not be negative (got "%d", want a count of attempts, or 0 for no cap)`, s.MaxInFlight)
	}
}

func checkListen(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "invalid address"
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "invalid port"
	}
	return ""
}

// options checks delivery options written under path. own says whether a key
// was written there: an option a subscription inherits is checked once, at
// defaults.
func (v *checker) options(path string, o Options, own func(key string) bool) {
	at := func(key string) string { return path + "." + key }
	if own("timeout") && o.Timeout <= 0 {
		v.add(at("timeout"), "must be positive (got %q, want a duration such as 10s)", DelayName(o.Timeout))
	}
	concurrencyOK := o.Concurrency >= 1 && o.Concurrency <= maxConcurrency
	if own("concurrency") && !concurrencyOK {
		v.add(at("concurrency"), `out of range (got "%d", want 1 to %d)`, o.Concurrency, maxConcurrency)
	}
	prefetchOK := o.Prefetch >= 0 && o.Prefetch <= maxPrefetch
	if own("prefetch") && !prefetchOK {
		v.add(at("prefetch"), `out of range (got "%d", want 0 to %d; 0 sizes it from concurrency)`, o.Prefetch, maxPrefetch)
	}
	if concurrencyOK && prefetchOK && o.Prefetch != 0 && o.Prefetch < o.Concurrency {
		idle := o.Concurrency - o.Prefetch
		switch {
		case own("prefetch"):
			v.add(at("prefetch"), `below concurrency, so %d of %d workers would sit idle (got "%d", want 0 or at least %d)`,
				idle, o.Concurrency, o.Prefetch, o.Concurrency)
		case own("concurrency"):
			v.add(at("concurrency"), `above the inherited prefetch %d, so %d of %d workers would sit idle (got "%d", want at most %d, or prefetch: 0)`,
				o.Prefetch, idle, o.Concurrency, o.Concurrency, o.Prefetch)
		}
	}
	if own("max_body_bytes") && o.MaxBodyBytes < 0 {
		v.add(at("max_body_bytes"), "not a size (got %q, want a size such as 1MiB, or 0 for no limit)", o.MaxBodyBytes)
	}
	if own("rate_limit") && o.RateLimit < 0 {
		v.add(at("rate_limit"), `must not be negative (got "%g", want requests per second, or 0 for no limit)`, o.RateLimit)
	}
	if own("format") {
		switch o.Format {
		case FormatEnvelope, FormatRaw, FormatCloudEvents:
		default:
			v.add(at("format"), "unknown format (got %q, want envelope, raw or cloudevents)", o.Format)
		}
	}
	if own("source") && o.Source == "" {
		v.required(at("source"), "a ce-source such as warren")
	}
	if own("retry.delays") {
		v.delays(at("retry.delays"), o.Retry.Delays)
	}
	if own("retry.dead_on_status") {
		v.deadOnStatus(at("retry.dead_on_status"), o.Retry.DeadOnStatus)
	}
	if own("circuit_breaker.failures") && o.CircuitBreaker.Failures < 0 {
		v.add(at("circuit_breaker.failures"), `must not be negative (got "%d", want a count of consecutive failures, or 0 to turn it off)`, o.CircuitBreaker.Failures)
	}
	if own("forward_headers") {
		v.forwardHeaders(at("forward_headers"), o.ForwardHeaders)
	}
	v.tls(at("tls"), o.TLS, own)
	if own("proxy") && o.Proxy != "" {
		v.proxy(at("proxy"), o.Proxy)
	}
	if own("circuit_breaker.cooldown") && o.CircuitBreaker.Cooldown <= 0 {
		v.add(at("circuit_breaker.cooldown"), "must be positive (got %q, want a duration such as 30s)", DelayName(o.CircuitBreaker.Cooldown))
	}
	if own("api_version") && !validHeaderValue(o.APIVersion) {
		v.add(at("api_version"), "control character (got %q, want a version such as 2026-01-01)", o.APIVersion)
	}
	if own("priority") {
		switch o.Priority {
		case PriorityHigh, PriorityNormal, PriorityLow, "": // "": normal, for configs built in code
		default:
			v.add(at("priority"), "unknown priority (got %q, want high, normal or low)", o.Priority)
		}
	}
	if own("max_priority") {
		switch {
		case o.MaxPriority < 0 || o.MaxPriority > maxPriority:
			v.add(at("max_priority"), `out of range (got "%d", want 1 to %d, or 0 for none)`, o.MaxPriority, maxPriority)
		case o.MaxPriority > 0 && v.c.Broker.QueueType == QueueQuorum:
			v.add(at("max_priority"), `not supported by quorum queues (got "%d" with broker.queue_type quorum, want 0, or queue_type classic)`, o.MaxPriority)
		}
	}
}

// delays checks the retry schedule: each delay becomes a tier queue's
// x-message-ttl, a whole number of milliseconds up to 2^32-1.
func (v *checker) delays(path string, delays []time.Duration) {
	for i, d := range delays {
		p := fmt.Sprintf("%s[%d]", path, i)
		switch {
		case d <= 0:
			v.add(p, "must be positive (got %q, want a duration such as 5s)", DelayName(d))
		case d%time.Millisecond != 0:
			v.add(p, "not a whole number of milliseconds (got %q, want e.g. 200ms; RabbitMQ TTLs are in milliseconds)", DelayName(d))
		case d > maxTTL:
			v.add(p, "too long (got %q, want at most %s, RabbitMQ's x-message-ttl limit)", DelayName(d), DelayName(maxTTL))
		case i > 0 && d < delays[i-1]:
			v.add(p, "shorter than the delay before it (got %q after %q, want delays that never decrease; equal delays share a tier)",
				DelayName(d), DelayName(delays[i-1]))
		}
	}
}

func (v *checker) deadOnStatus(path string, statuses []int) {
	first := make(map[int]int, len(statuses))
	for i, status := range statuses {
		p := fmt.Sprintf("%s[%d]", path, i)
		if status < 300 || status > 599 {
			v.add(p, `out of range (got "%d", want an HTTP status from 300 to 599; 2xx is always delivered)`, status)
			continue
		}
		if j, dup := first[status]; dup {
			v.add(p, `duplicate status (got "%d", first at %s)`, status, v.c.firstAt(fmt.Sprintf("%s[%d]", path, j)))
			continue
		}
		first[status] = i
	}
}

func isAlnum(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9'
}

// quoteChars lists punctuation for a message: "-_." -> '-', '_' or '.'.
func quoteChars(chars string) string {
	quoted := make([]string, 0, len(chars))
	for _, r := range chars {
		quoted = append(quoted, "'"+string(r)+"'")
	}
	last := len(quoted) - 1
	return strings.Join(quoted[:last], ", ") + " or " + quoted[last]
}
