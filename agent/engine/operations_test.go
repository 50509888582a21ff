package engine_test

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

func events(n int, prefix string) []amqp.Publishing {
	msgs := make([]amqp.Publishing, n)
	for i := range msgs {
		msgs[i] = warrentest.JSON(fmt.Sprintf("%s-%d", prefix, i), `{}`)
	}
	return msgs
}

func TestCircuitBreakerHoldsMessagesInBroker(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int {
		if down.Load() {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	s := config.Subscription{Name: "breaker", URL: rc.URL, Events: []string{"#"}}
	s.CircuitBreaker = config.CircuitBreaker{Failures: 3, Cooldown: time.Second}
	s.Retry.Delays = []time.Duration{500 * time.Millisecond}
	cfg := warrentest.Config(t, s)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "k", events(60, "evt_cb")...)
	e := start(t, cfg)

	waitState(t, e, "breaker", engine.StateCircuitOpen)
	time.Sleep(2500 * time.Millisecond) // two cooldowns: two probes
	attempts := len(rc.Requests())
	// 3 failures open it, up to concurrency-1 stragglers were in flight, and
	// one probe per cooldown: a handful, not 60 x 2.
	if attempts > 3+cfg.Subscriptions[0].Concurrency+3 {
		t.Errorf("endpoint got %d attempts while down, want a handful", attempts)
	}
	if depth := warrentest.Depth(t, cfg.WorkQueue(cfg.Subscriptions[0])); depth < 60-attempts {
		t.Errorf("work queue holds %d messages, want the undelivered ones (>= %d) waiting there", depth, 60-attempts)
	}

	down.Store(false)
	rc.WaitFor(t, 20*time.Second, "all 60 events delivered", func(r []warrentest.Request) bool {
		return delivered(r) == 60
	})
	waitState(t, e, "breaker", engine.StateConsuming)
	if n := warrentest.Depth(t, cfg.DeadQueue(cfg.Subscriptions[0])); n != 0 {
		t.Errorf("dead queue holds %d, want 0", n)
	}
}

// delivered counts distinct webhook-ids received.
func delivered(reqs []warrentest.Request) int {
	ids := map[string]bool{}
	for _, r := range reqs {
		ids[r.Header.Get("webhook-id")] = true
	}
	return len(ids)
}

func TestRateLimit(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	s := config.Subscription{Name: "limited", URL: rc.URL, Events: []string{"#"}}
	s.RateLimit = 50
	cfg := warrentest.Config(t, s)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "k", events(500, "evt_rl")...)
	begin := time.Now()
	start(t, cfg)
	reqs := rc.WaitFor(t, 30*time.Second, "500 events", func(r []warrentest.Request) bool { return len(r) >= 500 })
	// 500 events at 50/s with a burst of 1 take at least 499/50 s.
	if took := reqs[499].At.Sub(begin); took < 9*time.Second {
		t.Errorf("500 events took %s at rate_limit 50, want at least 9s", took)
	}
}

func waitState(t *testing.T, e *engine.Engine, sub, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for e.SubscriptionStates()[sub] != want {
		if time.Now().After(deadline) {
			t.Fatalf("subscription %s is %q, want %q", sub, e.SubscriptionStates()[sub], want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
