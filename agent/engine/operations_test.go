package engine_test

import (
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

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

func TestReloadAddsChangesAndRemovesSubscriptions(t *testing.T) {
	first := warrentest.NewReceiver(t, nil)
	second := warrentest.NewReceiver(t, nil)
	a := config.Subscription{Name: "first", URL: first.URL, Events: []string{"a.*"}}
	cfg := warrentest.Config(t, a)
	e := start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "a.1", events(20, "evt_before")...)
	first.WaitFor(t, 10*time.Second, "20 events", func(r []warrentest.Request) bool { return len(r) == 20 })

	// Add a subscription and change the first one's patterns.
	next := *cfg
	a.Events = []string{"a.*", "c.*"}
	b := warrentest.Subscription(cfg, config.Subscription{Name: "second", URL: second.URL, Events: []string{"b.#"}})
	next.Subscriptions = []config.Subscription{warrentest.Subscription(cfg, a), b}
	warrentest.CleanupLater(t, &next)
	e.Reload(&next)
	waitState(t, e, "second", engine.StateConsuming)
	warrentest.Publish(t, cfg, "b.x", events(10, "evt_b")...)
	warrentest.Publish(t, cfg, "c.x", events(5, "evt_c")...)
	second.WaitFor(t, 10*time.Second, "the new subscription's events", func(r []warrentest.Request) bool { return len(r) == 10 })
	first.WaitFor(t, 10*time.Second, "the added pattern's events", func(r []warrentest.Request) bool { return len(r) == 25 })

	// Remove the first subscription: it stops and its queue is unbound,
	// so later events for it are not routed there.
	removed := next
	removed.Subscriptions = []config.Subscription{b}
	e.Reload(&removed)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := e.SubscriptionStates()["first"]; !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("removed subscription still running")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Keys only the removed patterns matched reach no queue at all.
	warrentest.PublishUnroutable(t, cfg, "a.y", warrentest.JSON("evt_removed_a", `{}`))
	warrentest.PublishUnroutable(t, cfg, "c.y", warrentest.JSON("evt_removed_c", `{}`))
	warrentest.Publish(t, cfg, "b.y", events(3, "evt_after")...)
	second.WaitFor(t, 10*time.Second, "events after removal", func(r []warrentest.Request) bool { return len(r) == 13 })
	if n := warrentest.Depth(t, cfg.WorkQueue(cfg.Subscriptions[0])); n != 0 {
		t.Errorf("removed subscription's queue holds %d messages, want 0 (unbound, drained)", n)
	}
	if n := len(first.Requests()); n != 25 {
		t.Errorf("removed subscription's endpoint got %d requests, want 25", n)
	}
}

func TestOperatorEventsAnnounceParkedAndPaused(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusGone })
	ops := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t,
		config.Subscription{Name: "gone", URL: rc.URL, Events: []string{"order.*"}},
		config.Subscription{Name: "ops", URL: ops.URL, Events: []string{"warren.#"}},
	)
	cfg.Broker.OperatorEvents = true
	start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_announced", `{}`))

	reqs := ops.WaitFor(t, 10*time.Second, "two operator events", func(r []warrentest.Request) bool { return len(r) == 2 })
	types := map[string]bool{}
	for _, r := range reqs {
		var env struct {
			Type string
			Data engine.OperatorEvent
		}
		if err := json.Unmarshal(r.Body, &env); err != nil {
			t.Fatalf("operator event body %s: %v", r.Body, err)
		}
		types[env.Type] = true
		if env.Data.Subscription != "gone" {
			t.Errorf("%s is about %q, want gone", env.Type, env.Data.Subscription)
		}
		if env.Type == engine.KeyParked && (env.Data.EventID != "evt_announced" || env.Data.LastStatus != http.StatusGone) {
			t.Errorf("parked event = %+v, want evt_announced with status 410", env.Data)
		}
	}
	if !types[engine.KeyParked] || !types[engine.KeyPaused] {
		t.Errorf("operator events %v, want %s and %s", types, engine.KeyParked, engine.KeyPaused)
	}
}

func TestRetryLadderOnQuorumQueues(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(n int, _ *http.Request) int {
		if n <= 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	cfg := warrentest.Config(t, config.Subscription{Name: "quorum", URL: rc.URL, Events: []string{"#"}})
	cfg.Broker.QueueType = config.QueueQuorum
	start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "k", warrentest.JSON("evt_quorum", `{}`))
	reqs := rc.WaitFor(t, 15*time.Second, "three attempts", func(r []warrentest.Request) bool { return len(r) == 3 })
	delays := cfg.Subscriptions[0].Retry.Delays
	for i := 1; i < 3; i++ {
		if gap := reqs[i].At.Sub(reqs[i-1].At); gap < delays[i-1] {
			t.Errorf("attempt %d came %s after the previous one, want at least %s", i+1, gap, delays[i-1])
		}
		if id := reqs[i].Header.Get("webhook-id"); id != "evt_quorum" {
			t.Errorf("attempt %d webhook-id %q", i+1, id)
		}
	}
}
