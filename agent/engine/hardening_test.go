package engine_test

// Regression tests for SPEC §9 (never a hot loop, never a hang) and §10
// (subscriptions fail alone, more subscriptions than one connection
// carries): a real engine against the real broker and real endpoints on
// 127.0.0.1, counting requests, not only outcomes. None of them stops the
// broker or closes connections other than their own.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/agent/server"
	"github.com/warren-hq/warren/config"
)

// hdEngine is an engine under test with its metrics and logs.
type hdEngine struct {
	*engine.Engine
	m    *metrics.Metrics
	logs *syncBuffer
	stop func()
}

// hdStart runs an engine on cfg until the test ends; tune adjusts it
// before it runs. The logs are shown when the test fails.
func hdStart(t *testing.T, cfg *config.Config, tune ...func(*engine.Engine)) *hdEngine {
	t.Helper()
	h := &hdEngine{m: metrics.New(), logs: &syncBuffer{}}
	h.Engine = engine.New(cfg, slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), h.m)
	h.MinBackoff = 50 * time.Millisecond
	for _, f := range tune {
		f(h.Engine)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("engine stopped with: %v", err)
			}
		})
	}
	t.Cleanup(func() {
		h.stop()
		if t.Failed() {
			logs := h.logs.String()
			if len(logs) > 6000 {
				logs = "…" + logs[len(logs)-6000:]
			}
			t.Logf("engine logs:\n%s", logs)
		}
	})
	return h
}

// metric is the value of the counter or gauge name with exactly labels
// (0 when there is no such series).
func (h *hdEngine) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := h.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hdLabelsMatch(m, labels) {
				if c := m.GetCounter(); c != nil {
					return c.GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func hdLabelsMatch(m *dto.Metric, labels map[string]string) bool {
	if len(m.GetLabel()) != len(labels) {
		return false
	}
	for _, l := range m.GetLabel() {
		if labels[l.GetName()] != l.GetValue() {
			return false
		}
	}
	return true
}

// hdSettled waits until every queue listed holds no ready and no unacked
// message: nothing is left that could still reach an endpoint.
func hdSettled(t *testing.T, timeout time.Duration, queues ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		held := warrentest.Messages(t, "")
		busy := map[string]string{}
		for _, q := range queues {
			if n, ok := held[q]; !ok {
				busy[q] = "missing"
			} else if n > 0 {
				busy[q] = fmt.Sprintf("holds %d, ready or unacked", n)
			}
		}
		if len(busy) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queues not settled after %s: %v", timeout, busy)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// hdQueues are a subscription's work queue, its tiers and its dead queue.
func hdQueues(cfg *config.Config, s config.Subscription) []string {
	qs := []string{cfg.WorkQueue(s)}
	for _, d := range s.Tiers() {
		qs = append(qs, cfg.RetryQueue(d))
	}
	return append(qs, cfg.DeadQueue(s))
}

func hdByID(reqs []warrentest.Request) map[string]int {
	ids := map[string]int{}
	for _, r := range reqs {
		ids[r.Header.Get("webhook-id")]++
	}
	return ids
}

// hdParked takes every message of the dead queue (unacked, on a
// connection of the test) and reads them.
func hdParked(t *testing.T, queue string) map[string]event.Parked {
	t.Helper()
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	parked := map[string]event.Parked{}
	for {
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			t.Fatalf("get from %s: %v", queue, err)
		}
		if !ok {
			return parked
		}
		p := event.ReadParked(&d)
		parked[p.ID] = p
	}
}

// hdPublishAs publishes msgs to exchange with confirms as the broker user
// in rawURL.
func hdPublishAs(t *testing.T, rawURL, exchange, key string, msgs ...amqp.Publishing) {
	t.Helper()
	conn, err := amqp.Dial(rawURL)
	if err != nil {
		t.Fatalf("dial as another user: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		dc, err := ch.PublishWithDeferredConfirm(exchange, key, true, false, m)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		if !dc.Wait() {
			t.Fatalf("publish %q not confirmed", m.MessageId)
		}
	}
}

// TestForeignUserIDIsNotLooped: RabbitMQ refuses a publish whose user_id
// is not the connection's user. Events published by another user with
// their own user_id must go through the retry tiers and be parked like any
// other: exactly 1 + len(delays) attempts each, never a re-POST at once.
func TestForeignUserIDIsNotLooped(t *testing.T) {
	user := brokertest.Unique(t)
	pass := "pw-" + user
	rsMustCtl(t, "add_user", user, pass)
	t.Cleanup(func() { exec.Command("rabbitmqctl", "delete_user", user).Run() })
	rsMustCtl(t, "set_permissions", "-p", "/", user, ".*", ".*", ".*")

	rc := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusServiceUnavailable })
	s := config.Subscription{Name: "foreign", URL: rc.URL, Events: []string{"#"}}
	s.Retry.Delays = []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}
	cfg := warrentest.Config(t, s)
	s = cfg.Subscriptions[0]
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "foreign", engine.StateConsuming)

	u, err := url.Parse(brokertest.URL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, pass)
	withID := warrentest.JSON("evt_foreign", `{}`)
	withID.UserId = user
	withoutID := warrentest.JSON("", `{"no":"id"}`) // stamped with an id first: a copy as well
	withoutID.UserId = user
	begin := time.Now()
	hdPublishAs(t, u.String(), cfg.Broker.Exchange, "order.created", withID, withoutID)

	warrentest.WaitDepth(t, cfg.DeadQueue(s), 2, 15*time.Second)
	if wait := 3*time.Second - time.Since(begin); wait > 0 {
		time.Sleep(wait) // a loop would show within these 3 s
	}
	hdSettled(t, 10*time.Second, hdQueues(cfg, s)[:len(hdQueues(cfg, s))-1]...)
	want := 1 + len(s.Retry.Delays)
	ids := hdByID(rc.Requests())
	if len(ids) != 2 || ids["evt_foreign"] != want {
		t.Errorf("requests per event id = %v, want 2 events with %d attempts each (evt_foreign and a stamped id)", ids, want)
	}
	for id, n := range ids {
		if n != want {
			t.Errorf("event %s got %d attempts, want %d", id, n, want)
		}
	}
	parked := hdParked(t, cfg.DeadQueue(s))
	if p, ok := parked["evt_foreign"]; !ok || p.Attempts != want || p.LastStatus != http.StatusServiceUnavailable {
		t.Errorf("parked = %+v, want evt_foreign after %d attempts with status 503", parked, want)
	}
}

// TestMissingTierAndDeadQueueAreRedeclared: an operator deletes the retry
// tier (queue and exchange), then the dead queue, while the endpoint
// fails. Every event still ends parked after exactly 1 + len(delays)
// attempts, and the deleted queues are back.
func TestMissingTierAndDeadQueueAreRedeclared(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusServiceUnavailable })
	s := config.Subscription{Name: "repair", URL: rc.URL, Events: []string{"#"}}
	s.Retry.Delays = []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}
	cfg := warrentest.Config(t, s)
	s = cfg.Subscriptions[0]
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "repair", engine.StateConsuming)
	conn := brokertest.Dial(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	tier := cfg.RetryQueue(s.Retry.Delays[0])
	want := 1 + len(s.Retry.Delays)

	// The tier, queue and exchange, is gone.
	if _, err := ch.QueueDelete(tier, false, false, false); err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDelete(tier, false, false); err != nil {
		t.Fatal(err)
	}
	warrentest.Publish(t, cfg, "k", events(3, "evt_tier")...)
	warrentest.WaitDepth(t, cfg.DeadQueue(s), 3, 30*time.Second)
	if err := ch.ExchangeDeclarePassive(tier, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		t.Fatalf("tier exchange %s not redeclared: %v", tier, err)
	}
	if _, err := ch.QueueDeclarePassive(tier, true, false, false, false, nil); err != nil {
		t.Fatalf("tier queue %s not redeclared: %v", tier, err)
	}

	// The dead queue is gone, with the three parked events (the
	// operator's choice).
	if _, err := ch.QueueDelete(cfg.DeadQueue(s), false, false, false); err != nil {
		t.Fatal(err)
	}
	warrentest.Publish(t, cfg, "k", events(3, "evt_dead")...)
	warrentest.WaitUntil(t, 30*time.Second, "three events in the recreated dead queue", func() bool {
		probe, err := conn.Channel() // a passive declare of a missing queue closes it
		if err != nil {
			t.Fatal(err)
		}
		defer probe.Close()
		q, err := probe.QueueDeclarePassive(cfg.DeadQueue(s), true, false, false, false, nil)
		return err == nil && q.Messages == 3
	})
	hdSettled(t, 10*time.Second, hdQueues(cfg, s)[:len(hdQueues(cfg, s))-1]...)

	ids := hdByID(rc.Requests())
	if len(ids) != 6 {
		t.Errorf("endpoint saw %d events, want 6: %v", len(ids), ids)
	}
	for id, n := range ids {
		if n != want {
			t.Errorf("event %s got %d attempts, want exactly %d", id, n, want)
		}
	}
	for id := range hdParked(t, cfg.DeadQueue(s)) {
		if !strings.HasPrefix(id, "evt_dead") {
			t.Errorf("recreated dead queue holds %s, want only the evt_dead events", id)
		}
	}
}

// TestReloadQueuePrefixMovesEverything: after a reload that changes
// broker.queue_prefix (and the patterns), events go only to the new
// queues, and the old work queue is no longer bound.
func TestReloadQueuePrefixMovesEverything(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, config.Subscription{Name: "moved", URL: rc.URL, Events: []string{"a.*"}})
	old := cfg.Subscriptions[0]
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "moved", engine.StateConsuming)
	warrentest.Publish(t, cfg, "a.1", warrentest.JSON("evt_before", `{}`))
	rc.WaitFor(t, 10*time.Second, "the event before the reload", func(r []warrentest.Request) bool { return len(r) == 1 })

	next := *cfg
	next.Broker.QueuePrefix = cfg.Broker.QueuePrefix + "-next"
	moved := old
	moved.Events = []string{"b.*"}
	next.Subscriptions = []config.Subscription{moved}
	warrentest.CleanupLater(t, &next)
	e.Reload(&next)
	success := map[string]string{"result": "success"}
	warrentest.WaitUntil(t, 10*time.Second, "the reload", func() bool { return e.metric(t, "warren_config_reloads_total", success) == 1 })
	waitState(t, e.Engine, "moved", engine.StateConsuming)

	// Only the old binding had a.*: unroutable now, so not in the old queue.
	warrentest.PublishUnroutable(t, cfg, "a.2", warrentest.JSON("evt_old_key", `{}`))
	warrentest.Publish(t, cfg, "b.1", warrentest.JSON("evt_after", `{}`))
	rc.WaitFor(t, 10*time.Second, "the event after the reload", func(r []warrentest.Request) bool { return len(r) == 2 })
	hdSettled(t, 10*time.Second, next.WorkQueue(moved), cfg.WorkQueue(old))
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(cfg.WorkQueue(old), true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Consumers != 0 || q.Messages != 0 {
		t.Errorf("old work queue has %d consumers and %d messages, want none", q.Consumers, q.Messages)
	}
	if n := e.metric(t, "warren_config_reloads_total", map[string]string{"result": "failure"}); n != 0 {
		t.Errorf("reload failures = %v, want 0", n)
	}
	if ids := hdByID(rc.Requests()); ids["evt_before"] != 1 || ids["evt_after"] != 1 || len(ids) != 2 {
		t.Errorf("requests = %v, want evt_before and evt_after once each", ids)
	}
}

// TestReloadConflictKeepsRunningConfig: a reload whose new subscription's
// work queue exists with other arguments is rejected as a whole: the old
// config keeps delivering and nothing of the new one starts.
func TestReloadConflictKeepsRunningConfig(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	added := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, config.Subscription{Name: "kept", URL: rc.URL, Events: []string{"a.*"}})
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "kept", engine.StateConsuming)

	next := *cfg
	conflicting := warrentest.Subscription(cfg, config.Subscription{Name: "conflicting", URL: added.URL, Events: []string{"b.*"}})
	changed := cfg.Subscriptions[0]
	changed.Events = []string{"a.*", "c.*"}
	next.Subscriptions = []config.Subscription{changed, conflicting}
	warrentest.CleanupLater(t, &next)
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(next.WorkQueue(conflicting), true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}

	e.Reload(&next)
	failure := map[string]string{"result": "failure"}
	warrentest.WaitUntil(t, 10*time.Second, "the rejected reload", func() bool { return e.metric(t, "warren_config_reloads_total", failure) == 1 })
	if n := e.metric(t, "warren_config_reloads_total", map[string]string{"result": "success"}); n != 0 {
		t.Errorf("reload successes = %v, want 0", n)
	}
	states := e.SubscriptionStates()
	if _, ok := states["conflicting"]; ok || states["kept"] != engine.StateConsuming || len(states) != 1 {
		t.Errorf("states = %v, want only kept, consuming", states)
	}
	warrentest.Publish(t, cfg, "a.1", warrentest.JSON("evt_kept", `{}`))
	rc.WaitFor(t, 10*time.Second, "the old config's event", func(r []warrentest.Request) bool { return len(r) == 1 })
	// Neither the changed pattern nor the new subscription was applied.
	warrentest.PublishUnroutable(t, cfg, "c.1", warrentest.JSON("evt_c", `{}`))
	warrentest.PublishUnroutable(t, cfg, "b.1", warrentest.JSON("evt_b", `{}`))
	if n := len(added.Requests()); n != 0 {
		t.Errorf("the rejected subscription's endpoint got %d requests", n)
	}
}

// TestReloadDroppedPatternIsUnbound: a reload that drops a pattern unbinds
// it; the pattern kept still delivers.
func TestReloadDroppedPatternIsUnbound(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, config.Subscription{Name: "narrowed", URL: rc.URL, Events: []string{"a.*", "c.*"}})
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "narrowed", engine.StateConsuming)
	warrentest.Publish(t, cfg, "c.1", warrentest.JSON("evt_c_before", `{}`))
	rc.WaitFor(t, 10*time.Second, "the c event", func(r []warrentest.Request) bool { return len(r) == 1 })

	next := *cfg
	narrowed := cfg.Subscriptions[0]
	narrowed.Events = []string{"a.*"}
	next.Subscriptions = []config.Subscription{narrowed}
	e.Reload(&next)
	warrentest.WaitUntil(t, 10*time.Second, "the reload", func() bool {
		return e.metric(t, "warren_config_reloads_total", map[string]string{"result": "success"}) == 1
	})
	waitState(t, e.Engine, "narrowed", engine.StateConsuming)
	warrentest.PublishUnroutable(t, cfg, "c.2", warrentest.JSON("evt_c_after", `{}`))
	warrentest.Publish(t, cfg, "a.1", warrentest.JSON("evt_a", `{}`))
	rc.WaitFor(t, 10*time.Second, "the a event", func(r []warrentest.Request) bool { return len(r) == 2 })
}

// TestEqualPublishesAreTwoEvents: two publishes with equal key, body and
// timestamp and no message_id are two events with ids of their own, each
// kept across its retry; a redelivery of a delivered event is skipped by
// the dedup window and counted.
func TestEqualPublishesAreTwoEvents(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		id := r.Header.Get("webhook-id")
		mu.Lock()
		defer mu.Unlock()
		if id != "evt_dup" && !seen[id] {
			seen[id] = true
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	cfg := warrentest.Config(t, config.Subscription{Name: "twins", URL: rc.URL, Events: []string{"#"}})
	s := cfg.Subscriptions[0]
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "twins", engine.StateConsuming)

	ts := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	twin := func() amqp.Publishing {
		return amqp.Publishing{ContentType: "application/json", Timestamp: ts, Body: []byte(`{"same":true}`)}
	}
	warrentest.Publish(t, cfg, "order.paid", twin(), twin())
	rc.WaitFor(t, 10*time.Second, "two events, two attempts each", func(r []warrentest.Request) bool { return len(r) >= 4 })
	hdSettled(t, 10*time.Second, hdQueues(cfg, s)...)
	reqs := rc.Requests()
	ids := hdByID(reqs)
	if len(reqs) != 4 || len(ids) != 2 {
		t.Fatalf("got %d requests with ids %v, want 4 requests for 2 distinct ids", len(reqs), ids)
	}
	for id, n := range ids {
		if n != 2 || !strings.HasPrefix(id, "evt_") {
			t.Errorf("id %q got %d attempts, want 2 (its webhook-id kept across the retry)", id, n)
		}
	}

	warrentest.Publish(t, cfg, "order.paid", warrentest.JSON("evt_dup", `{}`))
	rc.WaitFor(t, 10*time.Second, "evt_dup", func(r []warrentest.Request) bool { return len(r) == 5 })
	hdSettled(t, 10*time.Second, hdQueues(cfg, s)...)
	warrentest.Publish(t, cfg, "order.paid", warrentest.JSON("evt_dup", `{}`))
	skipped := map[string]string{"subscription": "twins"}
	warrentest.WaitUntil(t, 10*time.Second, "the skipped redelivery counted", func() bool {
		return e.metric(t, "warren_dedup_skipped_total", skipped) == 1
	})
	hdSettled(t, 10*time.Second, hdQueues(cfg, s)...)
	if n := len(rc.Requests()); n != 5 {
		t.Errorf("endpoint got %d requests, want 5 (the redelivered evt_dup skipped)", n)
	}
}

// TestControlCharactersParkAtOnce: properties that cannot become an HTTP
// request park the message at once, naming the property, without a
// request and without opening the circuit.
func TestControlCharactersParkAtOnce(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	s := config.Subscription{Name: "ctl", URL: rc.URL, Events: []string{"#"}}
	s.Format = config.FormatRaw
	s.CircuitBreaker = config.CircuitBreaker{Failures: 2, Cooldown: time.Minute}
	cfg := warrentest.Config(t, s)
	s = cfg.Subscriptions[0]
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "ctl", engine.StateConsuming)

	badType := warrentest.JSON("evt_ctype", `x`)
	badType.ContentType = "text/plain\nX-Injected: 1"
	warrentest.Publish(t, cfg, "k", warrentest.JSON("evt\x01bad", `x`), badType)
	warrentest.Publish(t, cfg, "k\x7fey", warrentest.JSON("evt_key", `x`))
	warrentest.WaitDepth(t, cfg.DeadQueue(s), 3, 10*time.Second)
	if n := len(rc.Requests()); n != 0 {
		t.Fatalf("endpoint got %d requests for unsendable messages, want 0", n)
	}
	// Three "failures" in a row: a breaker counting them would be open now.
	warrentest.Publish(t, cfg, "k", events(3, "evt_ok")...)
	rc.WaitFor(t, 10*time.Second, "the healthy events", func(r []warrentest.Request) bool { return len(r) == 3 })
	if st := e.SubscriptionStates()["ctl"]; st != engine.StateConsuming {
		t.Errorf("state = %q, want %q", st, engine.StateConsuming)
	}
	parked := hdParked(t, cfg.DeadQueue(s))
	for id, property := range map[string]string{"evt\x01bad": "message_id", "evt_ctype": "content_type", "evt_key": "routing key"} {
		p, ok := parked[id]
		if !ok || p.Attempts != 1 || !strings.HasPrefix(p.LastError, property+" contains control character") {
			t.Errorf("parked %q = %+v, want 1 attempt and a reason naming %s", id, p, property)
		}
	}
	if ids := hdByID(rc.Requests()); len(ids) != 3 {
		t.Errorf("requests = %v, want the three healthy events", ids)
	}
}

// TestOperatorEventsNeverCarryResponseBody: what one endpoint answered
// must not reach another endpoint through the operator events.
func TestOperatorEventsNeverCarryResponseBody(t *testing.T) {
	const secret = "PARTNER-SECRET-BODY"
	partner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, secret)
	}))
	t.Cleanup(partner.Close)
	ops := warrentest.NewReceiver(t, nil)
	failing := config.Subscription{Name: "partner", URL: partner.URL, Events: []string{"order.*"}}
	failing.Retry.Delays = []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}
	cfg := warrentest.Config(t, failing, config.Subscription{Name: "ops", URL: ops.URL, Events: []string{"warren.#"}})
	cfg.Broker.OperatorEvents = true
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "ops", engine.StateConsuming)
	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_partner", `{}`))

	req := ops.WaitFor(t, 15*time.Second, "the parked operator event", func(r []warrentest.Request) bool { return len(r) >= 1 })[0]
	var env struct {
		Type string
		Data engine.OperatorEvent
	}
	if err := json.Unmarshal(req.Body, &env); err != nil {
		t.Fatalf("operator event %s: %v", req.Body, err)
	}
	if env.Type != engine.KeyParked || env.Data.EventID != "evt_partner" || env.Data.LastStatus != http.StatusInternalServerError {
		t.Errorf("operator event = %s, want %s for evt_partner with last_status 500", req.Body, engine.KeyParked)
	}
	if bytes.Contains(req.Body, []byte(secret)) {
		t.Errorf("operator event carries the partner's response body: %s", req.Body)
	}
	// The partner's own parked copy may keep it: it stays in its queues.
	if p := hdParked(t, cfg.DeadQueue(cfg.Subscriptions[0]))["evt_partner"]; !strings.Contains(p.LastError, "HTTP 500") {
		t.Errorf("parked copy's last error = %q, want the status", p.LastError)
	}
}

// TestMaxBodyBytesParksAtOnce: a message over the default 1 MiB limit is
// parked without an attempt, naming the size; the next one is delivered.
func TestMaxBodyBytesParksAtOnce(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	s := config.Subscription{Name: "sized", URL: rc.URL, Events: []string{"#"}}
	s.MaxBodyBytes = config.Default().Defaults.MaxBodyBytes
	if s.MaxBodyBytes != 1<<20 {
		t.Fatalf("default max_body_bytes = %d, want 1 MiB", s.MaxBodyBytes)
	}
	cfg := warrentest.Config(t, s)
	s = cfg.Subscriptions[0]
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "sized", engine.StateConsuming)
	big := `"` + strings.Repeat("x", 2<<20) + `"`
	warrentest.Publish(t, cfg, "k", warrentest.JSON("evt_big", big), warrentest.JSON("evt_small", `{}`))

	warrentest.WaitDepth(t, cfg.DeadQueue(s), 1, 10*time.Second)
	rc.WaitFor(t, 10*time.Second, "the small event", func(r []warrentest.Request) bool { return len(r) >= 1 })
	hdSettled(t, 10*time.Second, hdQueues(cfg, s)[:len(hdQueues(cfg, s))-1]...)
	if ids := hdByID(rc.Requests()); len(ids) != 1 || ids["evt_small"] != 1 {
		t.Errorf("requests = %v, want evt_small once and nothing for evt_big", ids)
	}
	p := hdParked(t, cfg.DeadQueue(s))["evt_big"]
	if p.Attempts != 1 || !strings.Contains(p.LastError, fmt.Sprintf("body of %d bytes", len(big))) || !strings.Contains(p.LastError, "max_body_bytes") {
		t.Errorf("parked evt_big = %+v, want 1 attempt and a reason naming the size and max_body_bytes", p)
	}
}

// hdConsumerChannel is the channel (pid) of the consumer on queue, as the
// broker lists it.
func hdConsumerChannel(t *testing.T, queue string) string {
	t.Helper()
	out := rsMustCtl(t, "list_consumers", "-q", "--no-table-headers", "queue_name", "channel_pid", "consumer_tag")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == queue {
			return f[1] + " " + f[2]
		}
	}
	t.Fatalf("no consumer on %s:\n%s", queue, out)
	return ""
}

// TestDeletedQueueRestartsOnlyItsSubscription (SPEC §10): deleting one
// subscription's work queue cancels its consumer; the other keeps its
// channel and delivers without a pause, and the first recovers by itself.
func TestDeletedQueueRestartsOnlyItsSubscription(t *testing.T) {
	ra := warrentest.NewReceiver(t, nil)
	rb := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t,
		config.Subscription{Name: "a", URL: ra.URL, Events: []string{"a"}},
		config.Subscription{Name: "b", URL: rb.URL, Events: []string{"b"}},
	)
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "a", engine.StateConsuming)
	waitState(t, e.Engine, "b", engine.StateConsuming)
	bQueue := cfg.WorkQueue(cfg.Subscriptions[1])
	before := hdConsumerChannel(t, bQueue)

	conn := brokertest.Dial(t)
	pub, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	// A steady stream to b: one event every 50 ms for 4 s.
	streamed := make(chan error, 1)
	go func() {
		for i := range 80 {
			err := pub.Publish(cfg.Broker.Exchange, "b", false, false, warrentest.JSON(fmt.Sprintf("evt_b-%d", i), `{}`))
			if err != nil {
				streamed <- err
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		streamed <- nil
	}()
	time.Sleep(time.Second)
	admin, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.QueueDelete(cfg.WorkQueue(cfg.Subscriptions[0]), false, false, false); err != nil {
		t.Fatal(err)
	}
	if err := <-streamed; err != nil {
		t.Fatal(err)
	}
	reqs := rb.WaitFor(t, 10*time.Second, "the 80 events to b", func(r []warrentest.Request) bool { return len(r) == 80 })
	for i := 1; i < len(reqs); i++ {
		if gap := reqs[i].At.Sub(reqs[i-1].At); gap > time.Second {
			t.Errorf("b paused for %s between requests %d and %d", gap, i, i+1)
		}
	}
	if after := hdConsumerChannel(t, bQueue); after != before {
		t.Errorf("b's consumer moved from %s to %s: it was restarted", before, after)
	}
	waitState(t, e.Engine, "a", engine.StateConsuming)
	warrentest.Publish(t, cfg, "a", warrentest.JSON("evt_a", `{}`))
	ra.WaitFor(t, 10*time.Second, "a's event after its queue came back", func(r []warrentest.Request) bool { return len(r) == 1 })
}

// TestMoreSubscriptionsThanOneConnectionCarries: 2,100 subscriptions, more
// than the 2,047 channels one connection may hold, all consume, and one
// event reaches all of them.
func TestMoreSubscriptionsThanOneConnectionCarries(t *testing.T) {
	if testing.Short() {
		t.Skip("2,100 subscriptions")
	}
	const n = 2100
	var mu sync.Mutex
	paths := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		paths[r.URL.Path]++
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	subs := make([]config.Subscription, n)
	for i := range subs {
		name := fmt.Sprintf("s%04d", i)
		subs[i] = config.Subscription{Name: name, URL: srv.URL + "/s/" + name, Events: []string{"all.#"},
			// A generous timeout: 2,100 requests at once on a busy machine
			// must not turn into retries.
			Options: config.Options{Concurrency: 1, Timeout: 30 * time.Second}}
		subs[i].Retry.Delays = []time.Duration{time.Second}
	}
	cfg := warrentest.Config(t, subs...)
	begin := time.Now()
	e := hdStart(t, cfg)
	warrentest.WaitUntil(t, 90*time.Second, "every subscription consuming", func() bool {
		for _, st := range e.SubscriptionStates() {
			if st != engine.StateConsuming {
				return false
			}
		}
		return true
	})
	consuming := time.Since(begin)

	sent := time.Now()
	warrentest.Publish(t, cfg, "all.created", warrentest.JSON("evt_all", `{}`))
	warrentest.WaitUntil(t, 60*time.Second, "the event at every endpoint", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(paths) == n
	})
	fanout := time.Since(sent)
	mu.Lock()
	for _, s := range subs {
		if c := paths["/s/"+s.Name]; c != 1 {
			t.Errorf("%s got %d requests, want 1", s.Name, c)
		}
	}
	mu.Unlock()

	out := rsMustCtl(t, "list_connections", "-q", "--no-table-headers", "client_properties", "channels")
	conns := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.Contains(line, "warren consume") {
			continue
		}
		var ch int
		if _, err := fmt.Sscan(f[len(f)-1], &ch); err == nil && ch >= 100 {
			conns++
		}
	}
	if conns < 2 {
		t.Errorf("%d consuming connections with 100+ channels, want at least 2:\n%s", conns, out)
	}
	t.Logf("%d subscriptions consuming after %s; fan-out to all in %s; %d consuming connections", n, consuming.Round(time.Millisecond), fanout.Round(time.Millisecond), conns)
}

// TestRateLimitedShutdownSendsNothingMore: workers waiting on the rate
// limiter when shutdown starts requeue their messages instead of sending
// them during the grace period, and each requeue is counted.
func TestRateLimitedShutdownSendsNothingMore(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	s := config.Subscription{Name: "slow", URL: rc.URL, Events: []string{"#"}, Options: config.Options{Concurrency: 4, RateLimit: 1}}
	cfg := warrentest.Config(t, s)
	s = cfg.Subscriptions[0]
	// Prefetch is the concurrency under a rate limit: all 4 are taken.
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "k", events(4, "evt_rl")...)
	e := hdStart(t, cfg)
	rc.WaitFor(t, 10*time.Second, "the first event", func(r []warrentest.Request) bool { return len(r) == 1 })
	// The next token comes a second after the first: stop well before.
	e.stop()
	warrentest.WaitDepth(t, cfg.WorkQueue(s), 3, 5*time.Second)
	if n := len(rc.Requests()); n != 1 {
		t.Errorf("endpoint got %d requests, want 1: nothing is sent once shutdown started", n)
	}
	outcome := func(o string) float64 {
		return e.metric(t, "warren_deliveries_total", map[string]string{"subscription": "slow", "outcome": o})
	}
	// A message a worker requeued may come back to the consumer before it
	// is cancelled and be requeued again: each requeue counts.
	if d, r := outcome("delivered"), outcome("requeued"); d != 1 || r < 3 {
		t.Errorf("outcomes delivered %v, requeued %v; want 1 and at least 3", d, r)
	}
}

// TestReadyzShowsRestartingSubscription: /readyz names a subscription whose
// channel failed as restarting until it is back, while the others consume.
func TestReadyzShowsRestartingSubscription(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t,
		config.Subscription{Name: "broken", URL: rc.URL, Events: []string{"a"}},
		config.Subscription{Name: "fine", URL: rc.URL, Events: []string{"b"}},
	)
	// A long restart backoff keeps "restarting" visible.
	e := hdStart(t, cfg, func(e *engine.Engine) { e.MinBackoff = 4 * time.Second })
	srv := httptest.NewServer(server.Handler(e.Engine, e.m))
	t.Cleanup(srv.Close)
	waitState(t, e.Engine, "broken", engine.StateConsuming)
	waitState(t, e.Engine, "fine", engine.StateConsuming)

	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDelete(cfg.WorkQueue(cfg.Subscriptions[0]), false, false, false); err != nil {
		t.Fatal(err)
	}
	var last server.Readiness
	warrentest.WaitUntil(t, 5*time.Second, "/readyz to show broken restarting", func() bool {
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		last = server.Readiness{}
		if err := json.NewDecoder(resp.Body).Decode(&last); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode == http.StatusOK && last.Ready && last.Subscriptions["broken"] == engine.StateRestarting
	})
	if last.Subscriptions["fine"] != engine.StateConsuming {
		t.Errorf("/readyz subscriptions = %v, want fine consuming", last.Subscriptions)
	}
	waitState(t, e.Engine, "broken", engine.StateConsuming)
}

// TestReloadConflictWithNewPrefixKeepsRunningConfig: the same all or
// nothing when the reload also changes broker.queue_prefix (the path that
// reconnects).
func TestReloadConflictWithNewPrefixKeepsRunningConfig(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, config.Subscription{Name: "kept", URL: rc.URL, Events: []string{"a.*"}})
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "kept", engine.StateConsuming)

	next := *cfg
	next.Broker.QueuePrefix = cfg.Broker.QueuePrefix + "-next"
	next.Subscriptions = slices.Clone(cfg.Subscriptions)
	warrentest.CleanupLater(t, &next)
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(next.WorkQueue(next.Subscriptions[0]), true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}

	e.Reload(&next)
	failure := map[string]string{"result": "failure"}
	warrentest.WaitUntil(t, 10*time.Second, "the rejected reload", func() bool { return e.metric(t, "warren_config_reloads_total", failure) == 1 })
	waitState(t, e.Engine, "kept", engine.StateConsuming)
	warrentest.Publish(t, cfg, "a.1", warrentest.JSON("evt_kept", `{}`))
	rc.WaitFor(t, 10*time.Second, "the old config's event", func(r []warrentest.Request) bool { return len(r) == 1 })
	if n := warrentest.Depth(t, cfg.WorkQueue(cfg.Subscriptions[0])); n != 0 {
		t.Errorf("old work queue holds %d, want 0", n)
	}
}
