package engine

import (
	"log/slog"
	"sync"
	"time"

	"github.com/warren-hq/warren/agent/metrics"
)

// Circuit states, as /readyz shows them.
const (
	StateCircuitOpen     = "circuit open"
	StateCircuitHalfOpen = "circuit half-open"
)

type circuit int

const (
	closed circuit = iota
	open
	halfOpen
)

// breaker stops a subscription from consuming after `threshold`
// consecutive failed attempts, so its messages wait in RabbitMQ instead of
// burning retry tiers against an endpoint that is down. After the cooldown
// one message goes through; success closes the circuit.
type breaker struct {
	threshold int // 0: never opens
	cooldown  time.Duration
	log       *slog.Logger
	metrics   *metrics.Subscription

	mu          sync.Mutex
	state       circuit
	consecutive int
	// changed tells the consume loop that the state moved.
	changed chan struct{}
}

func newBreaker(threshold int, cooldown time.Duration, log *slog.Logger, m *metrics.Subscription) *breaker {
	return &breaker{threshold: threshold, cooldown: cooldown, log: log, metrics: m, changed: make(chan struct{}, 1)}
}

// record counts one attempt's result.
func (b *breaker) record(ok bool) {
	if b.threshold == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.state == open:
		// A straggler that was in flight when the circuit opened.
	case ok && b.state == halfOpen:
		b.set(closed)
		b.log.Info("circuit closed: the endpoint answered again")
	case ok:
		b.consecutive = 0
	case b.state == halfOpen:
		b.set(open)
		b.log.Warn("circuit opened again: the probe failed", "cooldown", b.cooldown.String())
	default:
		b.consecutive++
		if b.consecutive >= b.threshold {
			b.set(open)
			b.log.Error("circuit opened: consuming paused", "failures", b.consecutive, "cooldown", b.cooldown.String())
		}
	}
}

// probe moves an open circuit to half-open after its cooldown.
func (b *breaker) probe() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == open {
		b.state = halfOpen
		b.log.Info("circuit half-open: letting one message through")
	}
}

func (b *breaker) current() circuit {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *breaker) set(s circuit) {
	b.state = s
	b.consecutive = 0
	if s == closed {
		b.metrics.CircuitOpen.Set(0)
	} else {
		b.metrics.CircuitOpen.Set(1)
	}
	select {
	case b.changed <- struct{}{}:
	default:
	}
}
