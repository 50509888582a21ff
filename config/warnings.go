package config

import (
	"fmt"
	"net"
	"strings"
	"time"
)

// consumerTimeout is RabbitMQ's default consumer_timeout: a delivery left
// unacked longer makes the broker close the channel and requeue everything
// on it.
const consumerTimeout = 30 * time.Minute

// maxUsefulPriority is what RabbitMQ advises for x-max-priority: every level
// is an internal queue.
const maxUsefulPriority = 10

// Warnings returns advice about a valid config that is legal but probably
// not what was meant, each as "path: message".
func (c *Config) Warnings() []string {
	var warnings []string
	warn := func(path, format string, args ...any) {
		warnings = append(warnings, path+": "+fmt.Sprintf(format, args...))
	}
	for i, node := range c.Broker.Nodes() {
		if u, err := parseURL(node); err == nil && u.Scheme == "amqp" && c.Broker.TLS != (TLS{}) {
			at := "broker.url"
			if len(c.Broker.URLs) > 0 {
				at = fmt.Sprintf("broker.urls[%d]", i)
			}
			warn("broker.tls", "set, but %s uses amqp://, so TLS is not used there (want amqps:// to use it)", at)
			break
		}
	}
	if msg := unackedWait(c.Defaults); msg != "" {
		warn("defaults", "%s", msg)
	}
	// priority and max_priority are checked where they were written.
	priority := func(path string, o Options) {
		if c.set(path+".priority") && o.Priority != PriorityNormal && o.Priority != "" && c.Server.MaxInFlight == 0 {
			warn(path+".priority", "%s has no effect without server.max_in_flight, as no attempt ever waits for a slot (want server.max_in_flight set, or remove priority)", o.Priority)
		}
		if c.set(path+".max_priority") && o.MaxPriority > maxUsefulPriority {
			warn(path+".max_priority", "%d priority levels, each costs RabbitMQ memory and CPU on the work queue (want at most %d)", o.MaxPriority, maxUsefulPriority)
		}
	}
	priority("defaults", c.Defaults)
	for i, s := range c.Subscriptions {
		path := fmt.Sprintf("subscriptions[%d]", i)
		// Inherited options were already warned about at defaults.
		own := c.set(path+".timeout") || c.set(path+".concurrency") || c.set(path+".prefetch") || c.set(path+".rate_limit")
		if msg := unackedWait(s.Options); own && msg != "" {
			warn(path, "%s", msg)
		}
		priority(path, s.Options)
		if len(s.Secrets) == 0 && plainRemoteHTTP(s.URL) {
			warn(path+".url", "plain http to a non-loopback host without secrets, so events travel unsigned and unencrypted (want https, or secrets)")
		}
	}
	return warnings
}

// unackedWait warns when the last of the prefetched messages may wait longer
// than consumerTimeout for its turn.
func unackedWait(o Options) string {
	if o.Concurrency <= 0 {
		return "" // invalid, reported by Validate
	}
	prefetch := o.EffectivePrefetch()
	rounds := (prefetch + o.Concurrency - 1) / o.Concurrency
	wait := o.Timeout * time.Duration(rounds)
	why := fmt.Sprintf("timeout %s x ceil(prefetch %d / concurrency %d)", DelayName(o.Timeout), prefetch, o.Concurrency)
	if o.RateLimit > 0 {
		if paced := time.Duration(float64(prefetch) / o.RateLimit * float64(time.Second)); paced > wait {
			wait = paced.Round(time.Second)
			why = fmt.Sprintf("prefetch %d at rate_limit %g per second", prefetch, o.RateLimit)
		}
	}
	if wait <= consumerTimeout {
		return ""
	}
	return fmt.Sprintf("a prefetched message may wait %s unacked (%s), longer than RabbitMQ's default consumer_timeout of %s, after which the broker closes the channel (want a lower prefetch or timeout, or a larger consumer_timeout)",
		DelayName(wait), why, DelayName(consumerTimeout))
}

// plainRemoteHTTP reports whether raw is an http:// URL to another host.
func plainRemoteHTTP(raw string) bool {
	u, err := parseURL(raw)
	if err != nil || u.Scheme != "http" {
		return false
	}
	host := u.Hostname()
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}
