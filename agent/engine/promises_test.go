package engine_test

// Tests for behaviour the README promises under "Delivery", "Operations"
// and "Guarantees and failure modes" that no other test checks: a real
// engine against the real broker and endpoints on 127.0.0.1. None of them
// stops the broker or closes connections other than their own.

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

// opEvent is an operator event as a subscription receives it.
type opEvent struct {
	Type string
	Data engine.OperatorEvent
}

func opEvents(t *testing.T, reqs []warrentest.Request) []opEvent {
	t.Helper()
	out := make([]opEvent, len(reqs))
	for i, r := range reqs {
		if err := json.Unmarshal(r.Body, &out[i]); err != nil {
			t.Fatalf("operator event body %s: %v", r.Body, err)
		}
	}
	return out
}

func countType(evs []opEvent, typ string) int {
	n := 0
	for _, ev := range evs {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

// startGoneAndOps runs subscription "gone" (concurrency 1) on pattern to
// url, and "ops" receiving the operator events, with operator events on.
func startGoneAndOps(t *testing.T, url, pattern string) (*config.Config, *hdEngine, *warrentest.Receiver) {
	t.Helper()
	ops := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t,
		config.Subscription{Name: "gone", URL: url, Events: []string{pattern}, Options: config.Options{Concurrency: 1}},
		config.Subscription{Name: "ops", URL: ops.URL, Events: []string{"warren.#"}},
	)
	cfg.Broker.OperatorEvents = true
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "gone", engine.StateConsuming)
	waitState(t, e.Engine, "ops", engine.StateConsuming)
	return cfg, e, ops
}

// TestGonePausedUntilReloadResumes: a 410 Gone pauses the subscription and
// leaves later events in the work queue; a reload with the same config
// resumes it, announces warren.subscription.resumed, and delivery goes on.
func TestGonePausedUntilReloadResumes(t *testing.T) {
	var gone atomic.Bool
	gone.Store(true)
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int {
		if gone.Load() {
			return http.StatusGone
		}
		return http.StatusOK
	})
	cfg, e, ops := startGoneAndOps(t, rc.URL, "order.*")
	s := cfg.Subscriptions[0]

	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_resume_1", `{}`))
	waitState(t, e.Engine, "gone", engine.StatePaused)
	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_resume_2", `{}`))
	warrentest.WaitDepth(t, cfg.WorkQueue(s), 1, 5*time.Second)
	ops.WaitFor(t, 10*time.Second, "the paused event", func(r []warrentest.Request) bool {
		return countType(opEvents(t, r), engine.KeyPaused) == 1
	})
	paused := map[string]string{"subscription": "gone"}
	if v := e.metric(t, "warren_subscription_paused", paused); v != 1 {
		t.Errorf("warren_subscription_paused = %v while paused, want 1", v)
	}
	if n := len(rc.Requests()); n != 1 {
		t.Fatalf("endpoint got %d requests while paused, want 1", n)
	}

	gone.Store(false)
	same := *cfg
	e.Reload(&same)
	reqs := ops.WaitFor(t, 10*time.Second, "the resumed event", func(r []warrentest.Request) bool {
		return countType(opEvents(t, r), engine.KeyResumed) >= 1
	})
	for _, ev := range opEvents(t, reqs) {
		if ev.Type == engine.KeyResumed && ev.Data.Subscription != "gone" {
			t.Errorf("resumed event is about %q, want gone", ev.Data.Subscription)
		}
	}
	rc.WaitFor(t, 10*time.Second, "the waiting event after the reload", func(r []warrentest.Request) bool {
		return len(r) == 2 && r[1].Header.Get("webhook-id") == "evt_resume_2" && r[1].Status == http.StatusOK
	})
	waitState(t, e.Engine, "gone", engine.StateConsuming)
	if v := e.metric(t, "warren_subscription_paused", paused); v != 0 {
		t.Errorf("warren_subscription_paused = %v after the reload, want 0", v)
	}
	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_resume_3", `{}`))
	rc.WaitFor(t, 10*time.Second, "an event published after the reload", func(r []warrentest.Request) bool { return len(r) == 3 })
	warrentest.WaitDepth(t, cfg.WorkQueue(s), 0, 5*time.Second)
	if n := countType(opEvents(t, ops.Requests()), engine.KeyResumed); n != 1 {
		t.Errorf("%d resumed events, want 1", n)
	}
}

// TestParkedOperatorEventsAreNotAnnounced: a subscription on # that parks
// everything receives the announcement of its own parking and parks it
// too, silently: two requests and one operator event, however long it runs.
func TestParkedOperatorEventsAreNotAnnounced(t *testing.T) {
	all := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusInternalServerError })
	ops := warrentest.NewReceiver(t, nil)
	s := config.Subscription{Name: "all", URL: all.URL, Events: []string{"#"}}
	s.Retry.DeadOnStatus = []int{http.StatusInternalServerError}
	cfg := warrentest.Config(t, s, config.Subscription{Name: "ops", URL: ops.URL, Events: []string{"warren.#"}})
	cfg.Broker.OperatorEvents = true
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "all", engine.StateConsuming)
	waitState(t, e.Engine, "ops", engine.StateConsuming)

	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_noloop", `{}`))
	all.WaitFor(t, 10*time.Second, "the event and the announcement of its parking", func(r []warrentest.Request) bool { return len(r) >= 2 })
	warrentest.WaitDepth(t, cfg.DeadQueue(cfg.Subscriptions[0]), 2, 10*time.Second)
	time.Sleep(2 * time.Second) // a loop would go on meanwhile
	warrentest.WaitSettled(t, cfg, 10*time.Second)

	reqs := all.Requests()
	if len(reqs) != 2 {
		t.Fatalf("subscription on # got %d requests, want 2 (the event, then the parked announcement): %v", len(reqs), ids(reqs))
	}
	if typ := opEvents(t, reqs[1:])[0].Type; typ != engine.KeyParked {
		t.Errorf("second request is a %q, want %s", typ, engine.KeyParked)
	}
	evs := opEvents(t, ops.Requests())
	if len(evs) != 1 || evs[0].Type != engine.KeyParked || evs[0].Data.EventID != "evt_noloop" {
		t.Errorf("operator events %+v, want one %s about evt_noloop", evs, engine.KeyParked)
	}
	if n := warrentest.Depth(t, cfg.DeadQueue(cfg.Subscriptions[0])); n != 2 {
		t.Errorf("dead queue holds %d, want 2", n)
	}
}

// TestGoneOnOperatorEventsIsBounded: a subscription on # whose endpoint
// answers 410 receives the announcements of its own parking and pause
// while paused; after a reload resumes it, the parking of such an
// announcement is not announced, and the 410 pauses it again: a bounded
// number of operator events, no loop.
func TestGoneOnOperatorEventsIsBounded(t *testing.T) {
	gone := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusGone })
	cfg, e, ops := startGoneAndOps(t, gone.URL, "#")
	s := cfg.Subscriptions[0]

	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_gone_loop", `{}`))
	waitState(t, e.Engine, "gone", engine.StatePaused)
	ops.WaitFor(t, 10*time.Second, "parked and paused", func(r []warrentest.Request) bool { return len(r) == 2 })
	// Both announcements wait in the paused subscription's queue.
	warrentest.WaitDepth(t, cfg.WorkQueue(s), 2, 5*time.Second)

	same := *cfg
	e.Reload(&same)
	gone.WaitFor(t, 10*time.Second, "an announcement delivered after the reload", func(r []warrentest.Request) bool { return len(r) == 2 })
	waitState(t, e.Engine, "gone", engine.StatePaused)
	time.Sleep(2 * time.Second) // a loop would go on meanwhile

	if n := len(gone.Requests()); n != 2 {
		t.Errorf("paused subscription got %d requests, want 2: one before and one after the reload", n)
	}
	evs := opEvents(t, ops.Requests())
	for _, ev := range evs {
		t.Logf("operator event %s %+v", ev.Type, ev.Data)
	}
	// resumed, then at most the pause the 410 caused; never the parking
	// of an announcement.
	if len(evs) > 4 || countType(evs, engine.KeyResumed) != 1 || countType(evs, engine.KeyParked) != 1 {
		types := make([]string, len(evs))
		for i, ev := range evs {
			types[i] = ev.Type
		}
		t.Errorf("operator events %v, want parked, paused, resumed and at most one more paused", types)
	}
	for _, ev := range evs {
		if ev.Type == engine.KeyParked && ev.Data.EventID != "evt_gone_loop" {
			t.Errorf("parking announced for %q (%s): the parking of an announcement must not be announced", ev.Data.EventID, ev.Data.Type)
		}
	}
}

// TestCircuitOpenGauge: warren_circuit_open is 1 while the circuit holds
// consumption and 0 once a probe succeeded.
func TestCircuitOpenGauge(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int {
		if down.Load() {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	s := config.Subscription{Name: "breaker", URL: rc.URL, Events: []string{"#"}}
	s.CircuitBreaker = config.CircuitBreaker{Failures: 2, Cooldown: 500 * time.Millisecond}
	s.Retry.Delays = []time.Duration{200 * time.Millisecond}
	cfg := warrentest.Config(t, s)
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "breaker", engine.StateConsuming)
	gauge := func() float64 {
		return e.metric(t, "warren_circuit_open", map[string]string{"subscription": "breaker"})
	}
	if v := gauge(); v != 0 {
		t.Errorf("warren_circuit_open = %v before any failure, want 0", v)
	}
	warrentest.Publish(t, cfg, "k", events(10, "evt_gauge")...)
	waitState(t, e.Engine, "breaker", engine.StateCircuitOpen)
	if v := gauge(); v != 1 {
		t.Errorf("warren_circuit_open = %v with the circuit open, want 1", v)
	}
	down.Store(false)
	rc.WaitFor(t, 20*time.Second, "all 10 events delivered", func(r []warrentest.Request) bool { return delivered2xx(r) == 10 })
	waitState(t, e.Engine, "breaker", engine.StateConsuming)
	if v := gauge(); v != 0 {
		t.Errorf("warren_circuit_open = %v after the circuit closed, want 0", v)
	}
}

// delivered2xx counts distinct webhook-ids answered 2xx.
func delivered2xx(reqs []warrentest.Request) int {
	ok := map[string]bool{}
	for _, r := range reqs {
		if r.Status/100 == 2 {
			ok[r.Header.Get("webhook-id")] = true
		}
	}
	return len(ok)
}

// TestInFlightGauge: warren_in_flight_requests counts the attempts a slow
// endpoint holds, and falls to 0 once they are answered.
func TestInFlightGauge(t *testing.T) {
	rc, open := holdingReceiver(t)
	s := config.Subscription{Name: "slow", URL: rc.URL, Events: []string{"#"}, Options: config.Options{Concurrency: 4, Timeout: 20 * time.Second}}
	cfg := warrentest.Config(t, s)
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "slow", engine.StateConsuming)
	gauge := func() float64 {
		return e.metric(t, "warren_in_flight_requests", map[string]string{"subscription": "slow"})
	}
	warrentest.Publish(t, cfg, "k", events(3, "evt_inflight")...)
	rc.WaitFor(t, 10*time.Second, "three held requests", func(r []warrentest.Request) bool { return len(r) == 3 })
	warrentest.WaitUntil(t, 5*time.Second, "warren_in_flight_requests = 3", func() bool { return gauge() == 3 })
	open()
	warrentest.WaitSettled(t, cfg, 10*time.Second)
	warrentest.WaitUntil(t, 5*time.Second, "warren_in_flight_requests = 0", func() bool { return gauge() == 0 })
	if n := len(rc.Requests()); n != 3 {
		t.Errorf("endpoint got %d requests, want 3", n)
	}
}

// TestPrefetchUnderRateLimit: with prefetch unset the broker sees a
// consumer prefetch of concurrency under a rate limit, and twice that
// without one.
func TestPrefetchUnderRateLimit(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	limited := config.Subscription{Name: "limited", URL: rc.URL, Events: []string{"a"}, Options: config.Options{Concurrency: 3, RateLimit: 5}}
	free := config.Subscription{Name: "free", URL: rc.URL, Events: []string{"b"}, Options: config.Options{Concurrency: 3}}
	cfg := warrentest.Config(t, limited, free)
	cfg.Server.MemoryLimit = 0 // no byte budget: the window is the configured prefetch
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "limited", engine.StateConsuming)
	waitState(t, e.Engine, "free", engine.StateConsuming)

	want := map[string]int{cfg.WorkQueue(cfg.Subscriptions[0]): 3, cfg.WorkQueue(cfg.Subscriptions[1]): 6}
	// list_consumers fails now and then while other clients come and go.
	var out []byte
	var err error
	for try := 0; try < 5; try++ {
		if out, err = exec.Command("rabbitmqctl", "-q", "list_consumers", "queue_name", "consumer_tag", "prefetch_count", "--formatter", "json").Output(); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("rabbitmqctl list_consumers: %v", err)
	}
	var consumers []struct {
		Queue    string `json:"queue_name"`
		Tag      string `json:"consumer_tag"`
		Prefetch int    `json:"prefetch_count"`
	}
	if err := json.Unmarshal(out, &consumers); err != nil {
		t.Fatalf("rabbitmqctl list_consumers: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	for _, c := range consumers {
		n, ok := want[c.Queue]
		if !ok {
			continue
		}
		seen[c.Queue] = true
		if !strings.HasPrefix(c.Tag, "warren.") {
			t.Errorf("consumer %q on %s, want a tag warren.<name>.<n>", c.Tag, c.Queue)
		}
		if c.Prefetch != n {
			t.Errorf("consumer %s on %s has prefetch %d, want %d", c.Tag, c.Queue, c.Prefetch, n)
		}
	}
	for q := range want {
		if !seen[q] {
			t.Errorf("no consumer on %s", q)
		}
	}
}

// TestQuorumRedeliveryLimitParks: a quorum work queue dead-letters to its
// subscription's dead queue, so a message redelivered past the broker's
// delivery limit is parked, not dropped. RabbitMQ 3.10 has no default
// delivery limit (4.0 sets 20); a policy on this test's prefix sets one.
func TestQuorumRedeliveryLimitParks(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, config.Subscription{Name: "poison", URL: rc.URL, Events: []string{"#"}})
	cfg.Broker.QueueType = config.QueueQuorum
	s := cfg.Subscriptions[0]
	policy := cfg.Broker.QueuePrefix + "-delivery-limit"
	rsMustCtl(t, "set_policy", "--apply-to", "queues", policy, "^"+strings.ReplaceAll(cfg.Broker.QueuePrefix, ".", `\.`)+`\.`, `{"delivery-limit": 2}`)
	t.Cleanup(func() { rsMustCtl(t, "clear_policy", policy) })
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "k", warrentest.JSON("evt_poison", `{}`))

	// Redeliver it the way crashes and shutdowns do: taken, then requeued.
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		var d amqp.Delivery
		var ok bool
		deadline := time.Now().Add(5 * time.Second)
		for {
			d, ok, err = ch.Get(cfg.WorkQueue(s), false)
			if err != nil {
				t.Fatal(err)
			}
			if ok || warrentest.Depth(t, cfg.DeadQueue(s)) == 1 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !ok {
			break
		}
		if err := d.Nack(false, true); err != nil {
			t.Fatal(err)
		}
	}
	warrentest.WaitDepth(t, cfg.DeadQueue(s), 1, 10*time.Second)
	if d := warrentest.Get(t, cfg.DeadQueue(s)); d.MessageId != "evt_poison" {
		t.Errorf("dead queue holds %q, want evt_poison", d.MessageId)
	}
	if n := warrentest.Depth(t, cfg.WorkQueue(s)); n != 0 {
		t.Errorf("work queue holds %d, want 0", n)
	}
}

// TestWorkDepthGauge: warren_queue_messages{kind="work"} shows the events
// waiting behind a full prefetch window, and 0 once the consumer holds
// nothing (then the sampler does not ask the broker).
func TestWorkDepthGauge(t *testing.T) {
	rc, open := holdingReceiver(t)
	s := config.Subscription{Name: "deep", URL: rc.URL, Events: []string{"#"},
		Options: config.Options{Concurrency: 1, Prefetch: 1, Timeout: 20 * time.Second}}
	cfg := warrentest.Config(t, s)
	e := hdStart(t, cfg, func(e *engine.Engine) { e.SampleEvery = 50 * time.Millisecond })
	waitState(t, e.Engine, "deep", engine.StateConsuming)
	depth := func() float64 {
		return e.metric(t, "warren_queue_messages", map[string]string{"subscription": "deep", "kind": "work"})
	}
	warrentest.Publish(t, cfg, "k", events(5, "evt_depth")...)
	rc.WaitFor(t, 10*time.Second, "the first request", func(r []warrentest.Request) bool { return len(r) == 1 })
	warrentest.WaitUntil(t, 10*time.Second, "a work depth of 4 behind the held event", func() bool { return depth() == 4 })
	open()
	warrentest.WaitSettled(t, cfg, 10*time.Second)
	warrentest.WaitUntil(t, 10*time.Second, "a work depth of 0", func() bool { return depth() == 0 })
	if n := len(rc.Requests()); n != 5 {
		t.Errorf("endpoint got %d requests, want 5", n)
	}
}

// holdingReceiver answers 200 to every request once open is called, and
// holds each until then.
func holdingReceiver(t *testing.T) (rc *warrentest.Receiver, open func()) {
	release := make(chan struct{})
	var once sync.Once
	open = func() { once.Do(func() { close(release) }) }
	rc = warrentest.NewReceiver(t, func(int, *http.Request) int {
		<-release
		return http.StatusOK
	})
	t.Cleanup(open) // before the receiver closes: it waits for its handlers
	return rc, open
}
