// Package metrics defines warren's Prometheus metrics. Label values are
// bound once per subscription so the delivery path does no label lookups.
package metrics

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/warren-hq/warren/agent/buildinfo"
)

// Outcomes of an attempt, as the outcome label shows them.
const (
	OutcomeDelivered = "delivered"
	OutcomeRetried   = "retried"
	OutcomeParked    = "parked"
	OutcomeRequeued  = "requeued" // could not settle; back in the work queue
	OutcomeFiltered  = "filtered" // the subscription's filter or api_version said no: acked unsent
)

// Metrics is the set warren exports on /metrics.
type Metrics struct {
	Registry *prometheus.Registry

	deliveries      *prometheus.CounterVec
	latency         *prometheus.HistogramVec
	inFlight        *prometheus.GaugeVec
	circuitOpen     *prometheus.GaugeVec
	paused          *prometheus.GaugeVec
	queueMessages   *prometheus.GaugeVec
	dedupSkipped    *prometheus.CounterVec
	tierMessages    *prometheus.GaugeVec
	BrokerConnected prometheus.Gauge
	Reloads         *prometheus.CounterVec
	ConfigHash      prometheus.Gauge
}

// New registers every metric on a fresh registry, with Go and process
// collectors and warren_build_info.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_deliveries_total",
			Help: "Deliveries settled, by subscription and outcome (delivered, retried, parked, requeued, filtered).",
		}, []string{"subscription", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "warren_attempt_duration_seconds",
			Help:    "Duration of one HTTP attempt, connect to last byte.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"subscription"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warren_in_flight_requests",
			Help: "HTTP attempts in progress.",
		}, []string{"subscription"}),
		circuitOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warren_circuit_open",
			Help: "1 while the subscription's circuit breaker holds consumption (open or half-open), else 0.",
		}, []string{"subscription"}),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warren_subscription_paused",
			Help: "1 while the subscription is paused after its endpoint answered 410 Gone.",
		}, []string{"subscription"}),
		queueMessages: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warren_queue_messages",
			Help: "Ready messages in the subscription's queues (kind: work, dead), sampled from the broker.",
		}, []string{"subscription", "kind"}),
		tierMessages: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warren_retry_tier_messages",
			Help: "Messages waiting in a retry tier shared by every subscription of the prefix, sampled from the broker.",
		}, []string{"queue"}),
		dedupSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_dedup_skipped_total",
			Help: "Redeliveries of events already delivered that the dedup window acked without sending.",
		}, []string{"subscription"}),
		BrokerConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_broker_connected",
			Help: "1 while a broker session is up.",
		}),
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_config_reloads_total",
			Help: "Config reloads by result (success, failure).",
		}, []string{"result"}),
		ConfigHash: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_config_hash",
			Help: "Hash of the config in force (52 bits of its SHA-256, secrets masked): changes when a reload applies.",
		}),
	}
	info := buildinfo.Get()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "warren_build_info",
		Help:        "Always 1; the labels say what is running.",
		ConstLabels: prometheus.Labels{"version": info.Version, "commit": info.Commit, "goversion": info.GoVersion},
	})
	build.Set(1)
	// Both results from the start: increase() does not count a series'
	// first sample, so a first failure must not be the series' first.
	m.Reloads.WithLabelValues("success")
	m.Reloads.WithLabelValues("failure")
	m.Registry.MustRegister(m.deliveries, m.latency, m.inFlight, m.circuitOpen, m.paused, m.queueMessages,
		m.tierMessages, m.dedupSkipped, m.BrokerConnected, m.Reloads, m.ConfigHash, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Subscription holds one subscription's metrics with labels bound. Binding
// creates no series: a subscription that is planned but never runs (a
// reload the broker refused) exports nothing. Start makes the series every
// running subscription exports; the others appear at their first use, as
// at 10,000 subscriptions series that were never used were a fifth of
// warren's idle heap, and most of every scrape.
type Subscription struct {
	Delivered, Retried, Parked *Counter
	Requeued, Filtered         *Counter
	DedupSkipped               *Counter
	Latency                    *Histogram
	InFlight                   *Gauge
	CircuitOpen                *Gauge
	Paused                     *Gauge
	WorkMessages, DeadMessages *Gauge
}

// For binds the metrics of subscription name.
func (m *Metrics) For(name string) *Subscription {
	outcome := func(o string) *Counter {
		return &Counter{lazy[prometheus.Counter]{vec: m.deliveries, labels: []string{name, o}}}
	}
	gauge := func(vec *prometheus.GaugeVec, labels ...string) *Gauge {
		return &Gauge{lazy[prometheus.Gauge]{vec: vec, labels: append([]string{name}, labels...)}}
	}
	return &Subscription{
		Delivered:    outcome(OutcomeDelivered),
		Retried:      outcome(OutcomeRetried),
		Parked:       outcome(OutcomeParked),
		Requeued:     outcome(OutcomeRequeued),
		Filtered:     outcome(OutcomeFiltered),
		DedupSkipped: &Counter{lazy[prometheus.Counter]{vec: m.dedupSkipped, labels: []string{name}}},
		Latency:      &Histogram{lazy[prometheus.Observer]{vec: m.latency, labels: []string{name}}},
		InFlight:     gauge(m.inFlight),
		CircuitOpen:  gauge(m.circuitOpen),
		Paused:       gauge(m.paused),
		WorkMessages: gauge(m.queueMessages, "work"),
		DeadMessages: gauge(m.queueMessages, "dead"),
	}
}

// Start makes the series a running subscription always exports: its queue
// depths, and the counters alerts watch at 0, as increase() does not count
// a series' first sample.
func (s *Subscription) Start() {
	for _, c := range []*Counter{s.Delivered, s.Retried, s.Parked} {
		c.series()
	}
	s.WorkMessages.series()
	s.DeadMessages.series()
}

// lazy is one series of vec, created at its first use.
type lazy[T any] struct {
	vec interface {
		WithLabelValues(...string) T
		DeleteLabelValues(...string) bool
	}
	labels []string
	once   sync.Once
	made   atomic.Bool
	s      T
}

func (l *lazy[T]) series() T {
	l.once.Do(func() {
		l.s = l.vec.WithLabelValues(l.labels...)
		l.made.Store(true)
	})
	return l.s
}

// Counter is a counter series created at its first increment.
type Counter struct{ lazy[prometheus.Counter] }

func (c *Counter) Inc() { c.series().Inc() }

// Gauge is a gauge series created at its first change from 0.
type Gauge struct{ lazy[prometheus.Gauge] }

func (g *Gauge) Inc() { g.series().Inc() }
func (g *Gauge) Dec() { g.series().Dec() }

// Set sets the gauge. Setting it to 0 before this holder made the series
// removes the series instead, as 0 is what its absence means: the series
// may be left at 1 by the holder of an earlier run of the subscription.
func (g *Gauge) Set(v float64) {
	if v == 0 && !g.made.Load() {
		g.vec.DeleteLabelValues(g.labels...)
		return
	}
	g.series().Set(v)
}

// Histogram is a histogram series created at its first observation.
type Histogram struct{ lazy[prometheus.Observer] }

func (h *Histogram) Observe(v float64) { h.series().Observe(v) }

// TierMessages is the gauge of one shared retry tier's depth.
func (m *Metrics) TierMessages(queue string) prometheus.Gauge {
	return m.tierMessages.WithLabelValues(queue)
}

// Forget drops a removed subscription's series.
func (m *Metrics) Forget(name string) {
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.deliveries, m.latency, m.inFlight, m.circuitOpen, m.paused, m.queueMessages, m.dedupSkipped} {
		v.DeletePartialMatch(prometheus.Labels{"subscription": name})
	}
}
