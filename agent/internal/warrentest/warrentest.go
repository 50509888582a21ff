// Package warrentest builds what warren's integration tests share: a config
// with names unique to the test, a recording webhook receiver on 127.0.0.1,
// and helpers to publish events and read queue depths on the real broker.
package warrentest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
)

// Config returns a config on the test broker with a unique exchange and
// queue prefix, the metrics server off and the given subscriptions, which
// inherit short test defaults. Every queue the config implies and the
// exchange are deleted when the test ends.
func Config(t testing.TB, subs ...config.Subscription) *config.Config {
	t.Helper()
	cfg := Bare(t, subs...)
	conn := brokertest.Dial(t)
	t.Cleanup(func() { Cleanup(t, conn, cfg) })
	return cfg
}

// Bare is Config without the cleanup, for tests that must delete their
// queues on a connection of their own (one a broker fault cannot close).
func Bare(t testing.TB, subs ...config.Subscription) *config.Config {
	unique := brokertest.Unique(t)
	cfg := config.Default()
	cfg.Path = "test"
	cfg.Broker.URL = brokertest.URL()
	cfg.Broker.Exchange = unique
	cfg.Broker.QueuePrefix = unique
	cfg.Server.Listen = ""
	cfg.Server.ShutdownGrace = 5 * time.Second
	cfg.Defaults.Timeout = 2 * time.Second
	cfg.Defaults.Concurrency = 4
	cfg.Defaults.Retry.Delays = []time.Duration{100 * time.Millisecond, 300 * time.Millisecond}
	for _, s := range subs {
		cfg.Subscriptions = append(cfg.Subscriptions, Subscription(&cfg, s))
	}
	return &cfg
}

// Start runs an engine on cfg in the background with short reconnect
// backoffs. The returned stop cancels it and waits for Run, failing the
// test if Run returned an error; it also runs when the test ends.
func Start(t testing.TB, cfg *config.Config) (e *engine.Engine, stop func()) {
	t.Helper()
	e = engine.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New())
	e.MinBackoff = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("engine stopped with: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return e, stop
}

// Subscription fills the unset options of s from cfg's defaults.
func Subscription(cfg *config.Config, s config.Subscription) config.Subscription {
	d := cfg.Defaults
	if s.Timeout == 0 {
		s.Timeout = d.Timeout
	}
	if s.Concurrency == 0 {
		s.Concurrency = d.Concurrency
	}
	if s.Format == "" {
		s.Format = d.Format
	}
	if s.Source == "" {
		s.Source = d.Source
	}
	if s.Retry.Delays == nil {
		s.Retry.Delays = d.Retry.Delays
	}
	if s.CircuitBreaker.Cooldown == 0 {
		s.CircuitBreaker.Cooldown = d.CircuitBreaker.Cooldown
	}
	if s.MaxBodyBytes == 0 {
		s.MaxBodyBytes = d.MaxBodyBytes
	}
	if s.Priority == "" {
		s.Priority = d.Priority
	}
	return s
}

// CleanupLater deletes cfg's queues when the test ends: for configs a test
// derives from one made by Config, such as a reloaded one.
func CleanupLater(t testing.TB, cfg *config.Config) {
	conn := brokertest.Dial(t)
	t.Cleanup(func() { Cleanup(t, conn, cfg) })
}

// Cleanup deletes the queues and exchange of cfg.
func Cleanup(t testing.TB, conn *amqp.Connection, cfg *config.Config) {
	ch, err := conn.Channel()
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer ch.Close()
	plan := topology.For(cfg)
	queues := append(plan.Tiers, plan.Queues...)
	for _, s := range cfg.Subscriptions {
		if s.Ordering.Key != "" {
			// Held queues of ordered subscriptions are named by key hash.
			for _, name := range queuesUnder(t, cfg.WorkQueue(s)+".held.") {
				queues = append(queues, topology.Queue{Name: name})
			}
		}
	}
	for _, q := range queues {
		if _, err := ch.QueueDelete(q.Name, false, false, false); err != nil {
			t.Errorf("cleanup: delete queue %s: %v", q.Name, err)
			return
		}
	}
	for _, q := range plan.Tiers {
		if err := ch.ExchangeDelete(q.Name, false, false); err != nil {
			t.Errorf("cleanup: delete exchange %s: %v", q.Name, err)
			return
		}
	}
	if err := ch.ExchangeDelete(cfg.Broker.Exchange, false, false); err != nil {
		t.Errorf("cleanup: delete exchange: %v", err)
	}
}

// Apply declares cfg's topology so events can be published before warren runs.
func Apply(t testing.TB, cfg *config.Config) {
	t.Helper()
	if err := topology.Apply(brokertest.Dial(t), topology.For(cfg)); err != nil {
		t.Fatalf("apply topology: %v", err)
	}
}

// Request is one webhook a Receiver got.
type Request struct {
	At     time.Time
	Status int // the answer
	Path   string
	Header http.Header
	Body   []byte
}

// Receiver is a webhook endpoint on 127.0.0.1 that records every request
// and answers with what Respond returns (200 when nil).
type Receiver struct {
	*httptest.Server

	mu       sync.Mutex
	requests []Request
	// Respond chooses the answer to the n-th request (from 1).
	Respond func(n int, r *http.Request) int
	changed chan struct{}
}

// NewReceiver starts a receiver, closed when the test ends.
func NewReceiver(t testing.TB, respond func(n int, r *http.Request) int) *Receiver {
	rc := &Receiver{Respond: respond, changed: make(chan struct{}, 1)}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *Receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.requests = append(rc.requests, Request{At: time.Now(), Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
	n := len(rc.requests)
	respond := rc.Respond
	rc.mu.Unlock()
	status := http.StatusOK
	if respond != nil {
		status = respond(n, r)
	}
	rc.mu.Lock()
	rc.requests[n-1].Status = status
	rc.mu.Unlock()
	w.WriteHeader(status)
	select {
	case rc.changed <- struct{}{}:
	default:
	}
}

// Requests returns a copy of what was received so far.
func (rc *Receiver) Requests() []Request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Request(nil), rc.requests...)
}

// WaitFor waits until cond holds for the requests received, failing the
// test after timeout.
func (rc *Receiver) WaitFor(t testing.TB, timeout time.Duration, what string, cond func([]Request) bool) []Request {
	t.Helper()
	deadline := time.After(timeout)
	for {
		reqs := rc.Requests()
		if cond(reqs) {
			return reqs
		}
		select {
		case <-rc.changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s (got %d requests)", timeout, what, len(reqs))
		}
	}
}

// Publish publishes events to cfg's exchange with confirms, failing the
// test if one is unroutable.
func Publish(t testing.TB, cfg *config.Config, key string, msgs ...amqp.Publishing) {
	t.Helper()
	if n := publish(t, cfg, key, msgs); n > 0 {
		t.Fatalf("%d publish(es) with key %q were unroutable: no queue is bound", n, key)
	}
}

// PublishUnroutable publishes msg and fails the test unless the broker
// returned it as unroutable: no queue is bound for key.
func PublishUnroutable(t testing.TB, cfg *config.Config, key string, msg amqp.Publishing) {
	t.Helper()
	if publish(t, cfg, key, []amqp.Publishing{msg}) != 1 {
		t.Fatalf("publish with key %q reached a queue, want it unroutable", key)
	}
}

// publish sends msgs mandatory with confirms and returns how many came back
// unroutable.
func publish(t testing.TB, cfg *config.Config, key string, msgs []amqp.Publishing) int {
	t.Helper()
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	// A return arrives before the ack of its message: once every publish is
	// confirmed, every return is in this channel.
	returns := ch.NotifyReturn(make(chan amqp.Return, len(msgs)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var confirms []*amqp.DeferredConfirmation
	for _, m := range msgs {
		m.DeliveryMode = amqp.Persistent
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, cfg.Broker.Exchange, key, true, false, m)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		confirms = append(confirms, dc)
	}
	for _, dc := range confirms {
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			t.Fatalf("publish not confirmed: %v", err)
		}
	}
	return len(returns)
}

// JSON returns a persistent JSON event with the given id and body.
func JSON(id, body string) amqp.Publishing {
	return amqp.Publishing{MessageId: id, ContentType: "application/json", Timestamp: time.Now(), Body: []byte(body)}
}

// Depth returns the number of ready messages in queue.
func Depth(t testing.TB, queue string) int {
	t.Helper()
	return DepthOn(t, brokertest.Dial(t), queue)
}

// DepthOn returns the number of ready messages in queue, asking on conn.
func DepthOn(t testing.TB, conn *amqp.Connection, queue string) int {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q.Messages
}

// WaitUntil polls cond until it holds, failing the test after timeout.
func WaitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitDepth waits until queue holds want ready messages.
func WaitDepth(t testing.TB, queue string, want int, timeout time.Duration) {
	t.Helper()
	conn := brokertest.Dial(t)
	deadline := time.Now().Add(timeout)
	for {
		got := DepthOn(t, conn, queue)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue %s holds %d messages after %s, want %d", queue, got, timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Get takes one message from queue without acking it (it goes back when the
// test's connection closes).
func Get(t testing.TB, queue string) amqp.Delivery {
	t.Helper()
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	d, ok, err := ch.Get(queue, false)
	if err != nil || !ok {
		t.Fatalf("get from %s: ok=%v err=%v", queue, ok, err)
	}
	return d
}

// WaitSettled waits until no queue under cfg's prefix holds a message,
// ready or unacked (rabbitmqctl counts both), so nothing is left to send.
func WaitSettled(t testing.TB, cfg *config.Config, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		busy := ""
		for name, n := range Messages(t, cfg.Broker.QueuePrefix+".") {
			if n > 0 && !strings.HasSuffix(name, ".dead") {
				busy = fmt.Sprintf("%s holds %d", name, n)
			}
		}
		if busy == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not settled after %s: %s", timeout, busy)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Messages maps each queue whose name starts with prefix to the messages
// it holds, ready and unacked: what a passive declare, which counts ready
// messages only, cannot tell.
func Messages(t testing.TB, prefix string) map[string]int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_queues", "name", "messages", "--formatter", "json").Output()
	if err != nil {
		t.Fatalf("rabbitmqctl list_queues: %v", err)
	}
	var queues []struct {
		Name     string `json:"name"`
		Messages int    `json:"messages"`
	}
	if err := json.Unmarshal(out, &queues); err != nil {
		t.Fatalf("rabbitmqctl list_queues: %v", err)
	}
	held := map[string]int{}
	for _, q := range queues {
		if strings.HasPrefix(q.Name, prefix) {
			held[q.Name] = q.Messages
		}
	}
	return held
}

// queuesUnder lists the broker's queues whose names start with prefix.
func queuesUnder(t testing.TB, prefix string) []string {
	out, err := exec.Command("rabbitmqctl", "-q", "list_queues", "name", "--formatter", "json").Output()
	if err != nil {
		t.Errorf("rabbitmqctl list_queues: %v", err)
		return nil
	}
	var queues []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(out, &queues); err != nil {
		t.Errorf("rabbitmqctl list_queues: %v", err)
		return nil
	}
	var names []string
	for _, q := range queues {
		if strings.HasPrefix(q.Name, prefix) {
			names = append(names, q.Name)
		}
	}
	return names
}
