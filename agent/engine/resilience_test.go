package engine_test

// Fault-injection tests: a real engine (in process) against the real broker
// while the broker stops, drops connections or loses queues, and against
// endpoints that hang, reset or fail. They restart the shared broker, so the
// package must run alone (`go test -p 1`), and every test restores the
// broker when it ends, pass or fail.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
)

// Log messages of engine.Run the tests count.
const (
	rsMsgLost        = "broker connection lost; reconnecting"
	rsMsgRestored    = "broker connection restored"
	rsMsgConnected   = "connected to broker"
	rsMsgUnreachable = "broker unreachable; retrying until it answers"
	rsMsgRetryFailed = "reconnect failed"
	rsMsgDuplicate   = "duplicate of an event already delivered; acked without sending"
	rsMsgDelivered   = "delivered"
)

// ---------------------------------------------------------------------------
// Log recording

// rsLogs records what an engine logs: a count per message, and the records
// themselves except for the per-event ones (counted only).
type rsLogs struct {
	mu     sync.Mutex
	counts map[string]int
	recs   []rsRecord
}

type rsRecord struct {
	At    time.Time
	Level slog.Level
	Msg   string
	Err   string
}

// rsBulk are the per-event messages: counted, not kept.
var rsBulk = map[string]bool{
	rsMsgDelivered: true, rsMsgDuplicate: true, "retry scheduled": true, "parked": true,
	"ack failed; the broker will redeliver": true, "nack failed; the broker will redeliver": true,
}

func newRSLogs() *rsLogs { return &rsLogs{counts: map[string]int{}} }

func (l *rsLogs) logger() *slog.Logger { return slog.New(rsHandler{l}) }

func (l *rsLogs) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts[msg]
}

func (l *rsLogs) records() []rsRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.recs)
}

// dump writes the kept records to the test log; used when a test fails.
func (l *rsLogs) dump(t *testing.T, name string) {
	t.Helper()
	var b strings.Builder
	for _, r := range l.records() {
		fmt.Fprintf(&b, "  %s %-5s %s", r.At.Format("15:04:05.000"), r.Level, r.Msg)
		if r.Err != "" {
			fmt.Fprintf(&b, " err=%q", r.Err)
		}
		b.WriteByte('\n')
	}
	l.mu.Lock()
	fmt.Fprintf(&b, "  counts: %v", l.counts)
	l.mu.Unlock()
	t.Logf("engine %s log:\n%s", name, b.String())
}

type rsHandler struct{ logs *rsLogs }

func (rsHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h rsHandler) Handle(_ context.Context, r slog.Record) error {
	rec := rsRecord{At: r.Time, Level: r.Level, Msg: r.Message}
	bulk := rsBulk[r.Message]
	if !bulk {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" {
				rec.Err = a.Value.String()
				return false
			}
			return true
		})
	}
	h.logs.mu.Lock()
	h.logs.counts[r.Message]++
	if !bulk {
		h.logs.recs = append(h.logs.recs, rec)
	}
	h.logs.mu.Unlock()
	return nil
}

func (h rsHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h rsHandler) WithGroup(string) slog.Handler      { return h }

// ---------------------------------------------------------------------------
// Broker control

// rsCtl runs rabbitmqctl.
func rsCtl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func rsMustCtl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := rsCtl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// rsDial opens a connection of the test's own, without registering any
// cleanup: the faults injected here would close it under a helper.
func rsDial() (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("warren-test resilience")
	return amqp.DialConfig(brokertest.URL(), amqp.Config{Properties: props, Dial: amqp.DefaultDial(3 * time.Second)})
}

// rsStartBroker starts the broker's application (a no-op when it runs) and
// waits until it accepts AMQP connections.
func rsStartBroker() error {
	var lastErr error
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if _, err := rsCtl("start_app"); err != nil {
			lastErr = err
			time.Sleep(time.Second)
			continue
		}
		conn, err := rsDial()
		if err == nil {
			conn.Close()
			return nil
		}
		lastErr = err
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("broker did not come back: %w", lastErr)
}

// rsKeepBroker makes sure the broker answers before the test and runs
// again after it, whatever happened in between.
func rsKeepBroker(t *testing.T) {
	t.Helper()
	if err := rsStartBroker(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := rsStartBroker(); err != nil {
			t.Errorf("restore the broker: %v", err)
		}
	})
}

// rsConnectionPIDs lists the broker's connections.
func rsConnectionPIDs(t *testing.T) []string {
	t.Helper()
	out := rsMustCtl(t, "-q", "list_connections", "--no-table-headers", "pid")
	return strings.Fields(out)
}

// ---------------------------------------------------------------------------
// Config, engines, receivers

// rsConfig is warrentest.Config, except that its queues are deleted at the
// end on a connection dialed then (after the broker is restored), not on
// one dialed up front that a fault would have closed.
func rsConfig(t *testing.T, subs ...config.Subscription) *config.Config {
	t.Helper()
	cfg := warrentest.Bare(t)
	cfg.Defaults.Timeout = 5 * time.Second
	cfg.Defaults.Concurrency = 32
	for _, s := range subs {
		cfg.Subscriptions = append(cfg.Subscriptions, warrentest.Subscription(cfg, s))
	}
	t.Cleanup(func() {
		if err := rsStartBroker(); err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		conn, err := rsDial()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close()
		warrentest.Cleanup(t, conn, cfg)
	})
	return cfg
}

// rsApply declares cfg's topology on a connection of its own.
func rsApply(t *testing.T, cfg *config.Config) {
	t.Helper()
	conn, err := rsDial()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := topology.Apply(conn, topology.For(cfg)); err != nil {
		t.Fatalf("apply topology: %v", err)
	}
}

// rsEngine is an engine running in the background.
type rsEngine struct {
	*engine.Engine
	logs   *rsLogs
	name   string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// rsStart runs an engine on cfg, with short reconnect backoffs (tune may
// change its timings before it starts), until Stop or the end of the test;
// its log is dumped if the test fails.
func rsStart(t *testing.T, cfg *config.Config, name string, tune ...func(*engine.Engine)) *rsEngine {
	t.Helper()
	logs := newRSLogs()
	e := engine.New(cfg, logs.logger(), metrics.New())
	e.MinBackoff = 100 * time.Millisecond
	e.MaxBackoff = time.Second
	e.SampleEvery = time.Second
	for _, f := range tune {
		f(e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &rsEngine{Engine: e, logs: logs, name: name, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- e.Run(ctx) }()
	t.Cleanup(func() {
		r.Stop(t)
		if t.Failed() {
			logs.dump(t, name)
		}
	})
	return r
}

// Stop stops the engine and waits for Run to return.
func (r *rsEngine) Stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("engine %s stopped with: %v", r.name, err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("engine %s did not stop within 60s", r.name)
		}
	})
}

// rsIDs counts the requests an endpoint got per webhook-id.
type rsIDs struct {
	mu  sync.Mutex
	ids map[string]int
	n   int
}

func newRSIDs() *rsIDs { return &rsIDs{ids: map[string]int{}} }

func (c *rsIDs) add(r *http.Request) {
	c.mu.Lock()
	c.ids[r.Header.Get("webhook-id")]++
	c.n++
	c.mu.Unlock()
}

// distinct is how many different events arrived.
func (c *rsIDs) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

// requests is how many requests arrived.
func (c *rsIDs) requests() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// duplicates is how many requests repeated an event already received.
func (c *rsIDs) duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n - len(c.ids)
}

// most is the largest number of requests one event got.
func (c *rsIDs) most() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.ids {
		n = max(n, k)
	}
	return n
}

// check reports every event of want the endpoint never got, and any event it
// got that was never published.
func (c *rsIDs) check(t *testing.T, want []amqp.Publishing) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	published := make(map[string]bool, len(want))
	var missing []string
	for _, m := range want {
		published[m.MessageId] = true
		if c.ids[m.MessageId] == 0 {
			missing = append(missing, m.MessageId)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d events never reached the endpoint, e.g. %v", len(missing), len(want), missing[:min(len(missing), 5)])
	}
	for id := range c.ids {
		if !published[id] {
			t.Errorf("endpoint got an event never published: %q", id)
		}
	}
}

// rsReceiver is a warrentest.Receiver answering 200 and counting ids.
func rsReceiver(t *testing.T) (*warrentest.Receiver, *rsIDs) {
	ids := newRSIDs()
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		ids.add(r)
		return http.StatusOK
	})
	return rc, ids
}

func rsEvents(n int, prefix string) []amqp.Publishing {
	msgs := make([]amqp.Publishing, n)
	for i := range msgs {
		msgs[i] = warrentest.JSON(fmt.Sprintf("%s-%05d", prefix, i), fmt.Sprintf(`{"n":%d}`, i))
	}
	return msgs
}

// ---------------------------------------------------------------------------
// Publishing that survives the faults

// rsPublisher publishes with confirms and mandatory routing on a connection
// of its own, redialing whenever the previous one died.
type rsPublisher struct {
	cfg     *config.Config
	conn    *amqp.Connection
	ch      *amqp.Channel
	returns chan amqp.Return
	// Retries counts batches published again after a failure.
	Retries int
}

func (p *rsPublisher) Close() {
	if p.conn != nil {
		p.conn.Close()
		p.conn, p.ch = nil, nil
	}
}

func (p *rsPublisher) open() error {
	if p.ch != nil && !p.ch.IsClosed() {
		return nil
	}
	p.Close()
	conn, err := rsDial()
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		conn.Close()
		return err
	}
	p.conn, p.ch = conn, ch
	p.returns = ch.NotifyReturn(make(chan amqp.Return, 1024))
	return nil
}

// batch publishes msgs (at most 1000) once: nil means every one was
// confirmed and routed.
func (p *rsPublisher) batch(key string, msgs []amqp.Publishing) error {
	if err := p.open(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	confirms := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	for _, m := range msgs {
		m.DeliveryMode = amqp.Persistent
		dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, p.cfg.Broker.Exchange, key, true, false, m)
		if err != nil {
			p.Close()
			return err
		}
		confirms = append(confirms, dc)
	}
	for _, dc := range confirms {
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			p.Close()
			return fmt.Errorf("not confirmed (%v)", err)
		}
	}
	// A return comes before the ack of its message: all are in by now.
	returned := 0
	for {
		select {
		case _, ok := <-p.returns:
			if ok {
				returned++
				continue
			}
		default:
		}
		break
	}
	if returned > 0 {
		return fmt.Errorf("%d of %d messages unroutable", returned, len(msgs))
	}
	return nil
}

// Publish publishes msgs in batches, each retried until the broker took all
// of it (a retried batch may leave duplicates: at least once) or timeout.
// pause is slept between batches.
func (p *rsPublisher) Publish(key string, msgs []amqp.Publishing, size int, pause, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for i := 0; i < len(msgs); i += size {
		part := msgs[i:min(i+size, len(msgs))]
		for {
			err := p.batch(key, part)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("publish %d events from %d: %w", len(part), i, err)
			}
			p.Retries++
			time.Sleep(100 * time.Millisecond)
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	return nil
}

// rsPublish publishes msgs to cfg's exchange, failing the test if it cannot.
func rsPublish(t *testing.T, cfg *config.Config, key string, msgs []amqp.Publishing) {
	t.Helper()
	p := &rsPublisher{cfg: cfg}
	defer p.Close()
	if err := p.Publish(key, msgs, 500, 0, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// ---------------------------------------------------------------------------
// Queue depths

// rsDepth returns the ready messages in queue, on a connection of its own.
func rsDepth(queue string) (int, error) {
	conn, err := rsDial()
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return 0, err
	}
	return q.Messages, nil
}

func rsMustDepth(t *testing.T, queue string) int {
	t.Helper()
	n, err := rsDepth(queue)
	if err != nil {
		t.Fatalf("depth of %s: %v", queue, err)
	}
	return n
}

// rsWorkAndTiers lists the work queue and every retry tier of s.
func rsWorkAndTiers(cfg *config.Config, s config.Subscription) []string {
	queues := []string{cfg.WorkQueue(s)}
	for _, d := range s.Tiers() {
		queues = append(queues, cfg.RetryQueue(d))
	}
	return queues
}

// rsAssertEmpty checks (after the engines stopped, so that nothing is
// unacked) that the work and tier queues of every subscription are empty
// and each dead queue holds dead[name] messages.
func rsAssertEmpty(t *testing.T, cfg *config.Config, dead map[string]int) {
	t.Helper()
	for _, s := range cfg.Subscriptions {
		for _, q := range rsWorkAndTiers(cfg, s) {
			if n := rsMustDepth(t, q); n != 0 {
				t.Errorf("queue %s holds %d messages, want 0", q, n)
			}
		}
		if n := rsMustDepth(t, cfg.DeadQueue(s)); n != dead[s.Name] {
			t.Errorf("dead queue %s holds %d messages, want %d", cfg.DeadQueue(s), n, dead[s.Name])
		}
	}
}

// rsAssertCount checks how often the engine logged msg.
func rsAssertCount(t *testing.T, r *rsEngine, msg string, want int) {
	t.Helper()
	if got := r.logs.count(msg); got != want {
		t.Errorf("engine %s logged %q %d times, want %d", r.name, msg, got, want)
	}
}

// ---------------------------------------------------------------------------
// Tests

// The broker application stops for ~2 s mid-stream while the application
// keeps publishing (retrying through the outage): every event arrives, and
// the engine reports the outage once and the recovery once.
func TestBrokerRestartMidStream(t *testing.T) {
	rsKeepBroker(t)
	rc, ids := rsReceiver(t)
	cfg := rsConfig(t, config.Subscription{Name: "restart", URL: rc.URL, Events: []string{"#"}})
	rsApply(t, cfg)
	msgs := rsEvents(5000, "evt_restart")
	rsPublish(t, cfg, "stream.event", msgs[:2500])

	e := rsStart(t, cfg, "restart")
	pub := &rsPublisher{cfg: cfg}
	published := make(chan error, 1)
	go func() {
		defer pub.Close()
		// Paced so that publishing spans the outage.
		published <- pub.Publish("stream.event", msgs[2500:], 100, 100*time.Millisecond, 2*time.Minute)
	}()

	warrentest.WaitUntil(t, 30*time.Second, "1000 events delivered before the restart", func() bool { return ids.distinct() >= 1000 })
	before := ids.distinct()
	rsMustCtl(t, "stop_app")
	stoppedAt := time.Now()
	warrentest.WaitUntil(t, 10*time.Second, "the engine to notice the broker is gone", func() bool {
		up, _ := e.Connected()
		return !up
	})
	time.Sleep(2*time.Second - time.Since(stoppedAt))
	if up, err := e.Connected(); up || err == nil {
		t.Errorf("while the broker is stopped: Connected() = %v, %v; want false and the cause", up, err)
	}
	rsMustCtl(t, "start_app")
	t.Logf("broker down for %s; %d events delivered before it stopped", time.Since(stoppedAt).Round(time.Millisecond), before)

	if err := <-published; err != nil {
		t.Fatal(err)
	}
	warrentest.WaitUntil(t, 90*time.Second, "all 5000 events delivered", func() bool { return ids.distinct() == len(msgs) })
	warrentest.WaitUntil(t, 10*time.Second, "the engine connected", func() bool { up, _ := e.Connected(); return up })
	e.Stop(t)
	t.Logf("publisher retried %d batches across the outage; %d requests for %d events (%d duplicates, %d acked by the dedup window)",
		pub.Retries, ids.requests(), ids.distinct(), ids.duplicates(), e.logs.count(rsMsgDuplicate))

	ids.check(t, msgs)
	rsAssertCount(t, e, rsMsgLost, 1)
	rsAssertCount(t, e, rsMsgRestored, 1)
	rsAssertCount(t, e, rsMsgUnreachable, 0)
	rsAssertEmpty(t, cfg, nil)
}

// `rabbitmqctl close_all_connections` three times during a run: every event
// arrives; three outages and three recoveries are logged.
func TestCloseAllConnectionsThreeTimes(t *testing.T) {
	rsKeepBroker(t)
	ids := newRSIDs()
	// 60 ms per request (~500 events/s with 32 workers) paces the run so
	// that it spans the three faults, rabbitmqctl's own latency included.
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		time.Sleep(60 * time.Millisecond)
		ids.add(r)
		return http.StatusOK
	})
	cfg := rsConfig(t, config.Subscription{Name: "closeall", URL: rc.URL, Events: []string{"#"}})
	rsApply(t, cfg)
	msgs := rsEvents(3000, "evt_closeall")
	// Everything is published first: close_all_connections would close the
	// publisher's connection too.
	rsPublish(t, cfg, "order.created", msgs)

	e := rsStart(t, cfg, "closeall")
	for i := 1; i <= 3; i++ {
		warrentest.WaitUntil(t, 30*time.Second, fmt.Sprintf("session %d up", i), func() bool {
			up, _ := e.Connected()
			return up && e.logs.count(rsMsgRestored) == i-1
		})
		threshold := 400 + (i-1)*700
		warrentest.WaitUntil(t, 30*time.Second, fmt.Sprintf("%d events delivered", threshold), func() bool { return ids.distinct() >= threshold })
		rsMustCtl(t, "close_all_connections", "test")
		warrentest.WaitUntil(t, 30*time.Second, fmt.Sprintf("outage %d logged", i), func() bool { return e.logs.count(rsMsgLost) == i })
		at := ids.distinct()
		t.Logf("closed all connections with %d of %d events delivered", at, len(msgs))
		if at == len(msgs) {
			t.Errorf("close %d came after the last delivery: the run must span all three faults", i)
		}
	}
	warrentest.WaitUntil(t, 60*time.Second, "all 3000 events delivered", func() bool { return ids.distinct() == len(msgs) })
	warrentest.WaitUntil(t, 10*time.Second, "the last recovery", func() bool { return e.logs.count(rsMsgRestored) == 3 })
	e.Stop(t)
	t.Logf("%d requests for %d events (%d duplicates, %d acked by the dedup window)",
		ids.requests(), ids.distinct(), ids.duplicates(), e.logs.count(rsMsgDuplicate))

	ids.check(t, msgs)
	rsAssertCount(t, e, rsMsgLost, 3)
	rsAssertCount(t, e, rsMsgRestored, 3)
	rsAssertEmpty(t, cfg, nil)
}

// The work queue is deleted under the consumer: the broker cancels it, the
// engine starts a new session that declares the queue and its bindings
// again, and events published afterwards are delivered.
func TestQueueDeletedUnderConsumer(t *testing.T) {
	rsKeepBroker(t)
	rc, ids := rsReceiver(t)
	cfg := rsConfig(t, config.Subscription{Name: "deleted", URL: rc.URL, Events: []string{"order.*"}})
	rsApply(t, cfg)
	e := rsStart(t, cfg, "deleted")
	before := rsEvents(200, "evt_before")
	rsPublish(t, cfg, "order.created", before)
	warrentest.WaitUntil(t, 30*time.Second, "the events published before the deletion", func() bool { return ids.distinct() == len(before) })

	conn, err := rsDial()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	work := cfg.WorkQueue(cfg.Subscriptions[0])
	if _, err := ch.QueueDelete(work, false, false, false); err != nil {
		t.Fatalf("delete %s: %v", work, err)
	}
	conn.Close()

	// Until the engine declares the queue again the event is unroutable
	// (returned): the publisher retries until the broker routes it.
	after := rsEvents(100, "evt_after")
	p := &rsPublisher{cfg: cfg}
	defer p.Close()
	if err := p.Publish("order.created", after[:1], 1, 0, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish("order.created", after[1:], 99, 0, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	warrentest.WaitUntil(t, 30*time.Second, "the events published after the deletion", func() bool { return ids.distinct() == len(before)+len(after) })
	e.Stop(t)
	t.Logf("publish retried %d times until the queue was back", p.Retries)

	ids.check(t, append(before, after...))
	// The subscription restarts alone: the connection is not touched.
	rsAssertCount(t, e, rsMsgLost, 0)
	rsAssertCount(t, e, "subscription restarting", 1)
	for _, r := range e.logs.records() {
		if r.Msg == "subscription restarting" && !strings.Contains(r.Err, "cancelled the consumer") {
			t.Errorf("restart logged with err %q, want it to say the broker cancelled the consumer", r.Err)
		}
	}
	if states := e.SubscriptionStates(); states["deleted"] == engine.StatePaused {
		t.Errorf("subscription state = %q after the queue came back", states["deleted"])
	}
	rsAssertEmpty(t, cfg, nil)
}

// Three endpoints that hang past the timeout, reset connections, or answer
// 500 forever, beside a healthy one: the healthy subscription gets all its
// events while the others still struggle, goroutines and heap stay bounded
// by the configured concurrency (not by the events waiting), every bad
// event ends parked, and goroutines go back to the baseline once the engine
// stops.
func TestBadEndpointsBounded(t *testing.T) {
	rsKeepBroker(t)
	const perSub = 500
	const concurrency = 32

	testDone := make(chan struct{})
	hangIDs := newRSIDs()
	hang := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		hangIDs.add(r)
		select { // far past the 300ms timeout; ends when the client gives up
		case <-r.Context().Done():
		case <-testDone:
		case <-time.After(time.Minute):
		}
		return http.StatusOK
	})
	var resets atomic.Int64
	reset := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resets.Add(1)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		if tcp, ok := conn.(*net.TCPConn); ok {
			tcp.SetLinger(0) // close with RST
		}
		conn.Close()
	}))
	t.Cleanup(reset.Close)
	failIDs := newRSIDs()
	failing := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		failIDs.add(r)
		return http.StatusInternalServerError
	})
	healthy, healthyIDs := rsReceiver(t)
	defer close(testDone) // before the receivers close: a hung handler must return

	bad := func(name, url, key string) config.Subscription {
		s := config.Subscription{Name: name, URL: url, Events: []string{key + ".#"}}
		s.Timeout = 300 * time.Millisecond
		s.Concurrency = concurrency
		s.Retry.Delays = []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}
		return s
	}
	good := config.Subscription{Name: "healthy", URL: healthy.URL, Events: []string{"ok.#"}}
	good.Concurrency = concurrency
	cfg := rsConfig(t, bad("hang", hang.URL, "hang"), bad("reset", reset.URL, "reset"),
		bad("failing", failing.URL, "fail"), good)
	rsApply(t, cfg)
	sumConcurrency := 0
	for _, s := range cfg.Subscriptions {
		sumConcurrency += s.Concurrency
	}

	okMsgs := rsEvents(perSub, "evt_ok")
	keys := map[string][]amqp.Publishing{
		"hang.x": rsEvents(perSub, "evt_hang"), "reset.x": rsEvents(perSub, "evt_reset"),
		"fail.x": rsEvents(perSub, "evt_fail"), "ok.x": okMsgs,
	}
	for key, msgs := range keys {
		rsPublish(t, cfg, key, msgs)
	}

	runtime.GC()
	baseline := runtime.NumGoroutine()
	// Per unit of concurrency the engine owns a worker and an HTTP
	// connection's read and write loops (3); the receivers, in this same
	// process, serve that connection with up to 2 more (the connection and
	// its background read while a handler runs). 100 covers the rest (AMQP
	// readers, heartbeats, consumers, samplers). Growth with the 2000 events
	// waiting, or the 6000 attempts, would blow far past it.
	goroutineBound := baseline + 5*sumConcurrency + 100
	const heapBound = 64 << 20

	var peakGoroutines atomic.Int64
	var peakHeap atomic.Uint64
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if n := int64(runtime.NumGoroutine()); n > peakGoroutines.Load() {
				peakGoroutines.Store(n)
			}
			if i%20 == 0 {
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peakHeap.Load() {
					peakHeap.Store(ms.HeapInuse)
				}
			}
			select {
			case <-sampling:
				return
			case <-tick.C:
			}
		}
	}()
	stopSampling := sync.OnceFunc(func() { close(sampling); <-sampled })
	defer stopSampling()

	begin := time.Now()
	e := rsStart(t, cfg, "bounded")
	warrentest.WaitUntil(t, 10*time.Second, "the healthy subscription's events", func() bool { return healthyIDs.distinct() == perSub })
	healthyTook := time.Since(begin)
	hangSub := cfg.Subscriptions[0]
	if parked := rsMustDepth(t, cfg.DeadQueue(hangSub)); parked >= perSub {
		t.Errorf("the hanging subscription had parked all %d events before the healthy one got its %d: the test proves no isolation", parked, perSub)
	}
	t.Logf("healthy subscription: %d events in %s (hanging endpoint: %d attempts so far)", perSub, healthyTook.Round(time.Millisecond), hangIDs.requests())

	for _, s := range cfg.Subscriptions[:3] {
		rsWaitDepth(t, cfg.DeadQueue(s), perSub, 2*time.Minute)
	}
	allParked := time.Since(begin)
	stopSampling()
	e.Stop(t)

	t.Logf("all bad events parked after %s; peak goroutines %d (baseline %d, bound %d); peak heap in use %.1f MiB",
		allParked.Round(time.Millisecond), peakGoroutines.Load(), baseline, goroutineBound, float64(peakHeap.Load())/(1<<20))
	t.Logf("attempts: hang %d, reset %d, 500 %d, healthy %d", hangIDs.requests(), resets.Load(), failIDs.requests(), healthyIDs.requests())
	if n := peakGoroutines.Load(); n > int64(goroutineBound) {
		t.Errorf("peak goroutines = %d, want <= %d (baseline %d + 5 x concurrency %d + 100)", n, goroutineBound, baseline, sumConcurrency)
	}
	if h := peakHeap.Load(); h > heapBound {
		t.Errorf("peak heap in use = %.1f MiB, want <= %d MiB", float64(h)/(1<<20), heapBound>>20)
	}
	healthyIDs.check(t, okMsgs)
	if d := healthyIDs.duplicates(); d != 0 {
		t.Errorf("healthy endpoint got %d duplicates", d)
	}
	wantAttempts := perSub * (1 + len(hangSub.Retry.Delays))
	for name, got := range map[string]int{"hang": hangIDs.requests(), "reset": int(resets.Load()), "500": failIDs.requests()} {
		if got != wantAttempts {
			t.Errorf("%s endpoint got %d attempts, want exactly %d (every event tried 1 + len(delays) times, never again at once)", name, got, wantAttempts)
		}
	}
	for name, ids := range map[string]*rsIDs{"hang": hangIDs, "500": failIDs} {
		if most := ids.most(); most != 1+len(hangSub.Retry.Delays) {
			t.Errorf("%s endpoint got one event %d times, want each exactly %d times", name, most, 1+len(hangSub.Retry.Delays))
		}
	}
	rsAssertEmpty(t, cfg, map[string]int{"hang": perSub, "reset": perSub, "failing": perSub})

	// With the engine stopped, its goroutines (workers, consumers, HTTP
	// connections) are gone.
	slack := 30
	deadline := time.Now().Add(10 * time.Second)
	n := runtime.NumGoroutine()
	for n > baseline+slack && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	if n > baseline+slack {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("%d goroutines 10s after the engine stopped, want <= baseline %d + %d; stacks:\n%s", n, baseline, slack, rsStackSummary(string(buf)))
	}
}

// rsStackSummary counts goroutines by the function at the top of their
// stack.
func rsStackSummary(stacks string) string {
	counts := map[string]int{}
	for _, g := range strings.Split(stacks, "\n\n") {
		lines := strings.Split(g, "\n")
		key := ""
		for _, l := range lines[1:] {
			if !strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, "runtime.") && !strings.HasPrefix(l, "internal/") &&
				!strings.HasPrefix(l, "sync.") && !strings.HasPrefix(l, "net.") && !strings.HasPrefix(l, "bufio.") &&
				!strings.HasPrefix(l, "io.") && !strings.HasPrefix(l, "crypto/") {
				key = l
				break
			}
		}
		if i := strings.IndexByte(key, '('); i > 0 && !strings.HasPrefix(key, "created by") {
			key = key[:i]
		}
		counts[key]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return counts[b] - counts[a] })
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%5d %s\n", counts[k], k)
	}
	return b.String()
}

// rsWaitDepth waits until queue holds want ready messages.
func rsWaitDepth(t *testing.T, queue string, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, err := rsDepth(queue)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue %s holds %d messages (err %v) after %s, want %d", queue, got, err, timeout, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Two agents on the same config are competing consumers: without faults
// every event is delivered exactly once, and both agents do work.
func TestTwoAgentsCompete(t *testing.T) {
	rsKeepBroker(t)
	rc, ids := rsReceiver(t)
	cfg := rsConfig(t, config.Subscription{Name: "compete", URL: rc.URL, Events: []string{"#"}})
	rsApply(t, cfg)
	a := rsStart(t, cfg, "a")
	b := rsStart(t, cfg, "b")
	for _, e := range []*rsEngine{a, b} {
		warrentest.WaitUntil(t, 20*time.Second, "engine "+e.name+" consuming", func() bool {
			return e.SubscriptionStates()["compete"] == engine.StateConsuming
		})
	}
	msgs := rsEvents(10000, "evt_compete")
	begin := time.Now()
	rsPublish(t, cfg, "compete.event", msgs)
	warrentest.WaitUntil(t, 2*time.Minute, "all 10000 events delivered", func() bool { return ids.distinct() == len(msgs) })
	took := time.Since(begin)
	a.Stop(t)
	b.Stop(t)

	na, nb := a.logs.count(rsMsgDelivered), b.logs.count(rsMsgDelivered)
	t.Logf("10000 events in %s: engine a delivered %d, engine b %d; %d requests", took.Round(time.Millisecond), na, nb, ids.requests())
	ids.check(t, msgs)
	if d := ids.duplicates(); d != 0 {
		t.Errorf("endpoint got %d duplicate requests, want 0", d)
	}
	if na == 0 || nb == 0 {
		t.Errorf("engine a delivered %d, b %d: want both to have worked", na, nb)
	}
	if na+nb != len(msgs) {
		t.Errorf("engines logged %d deliveries in all, want %d", na+nb, len(msgs))
	}
	rsAssertEmpty(t, cfg, nil)
}

// An ack is lost: the endpoint holds the first request until the broker
// has closed every connection, then answers 200. The ack cannot reach the
// broker, which redelivers the event on the next session; the dedup window
// acks it without a second POST.
func TestRedeliveryAfterLostAckIsDeduplicated(t *testing.T) {
	rsKeepBroker(t)
	ids := newRSIDs()
	arrived := make(chan struct{})
	release := make(chan struct{})
	answer := sync.OnceFunc(func() { close(release) })
	defer answer() // never leave the handler hanging, even on failure
	rc := warrentest.NewReceiver(t, func(n int, r *http.Request) int {
		ids.add(r)
		if n == 1 {
			close(arrived)
			<-release
		}
		return http.StatusOK
	})
	s := config.Subscription{Name: "lostack", URL: rc.URL, Events: []string{"#"}}
	s.Timeout = time.Minute
	s.Concurrency = 1
	cfg := rsConfig(t, s)
	rsApply(t, cfg)
	msgs := rsEvents(1, "evt_lostack")
	rsPublish(t, cfg, "invoice.paid", msgs)
	e := rsStart(t, cfg, "lostack")

	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("the event never reached the endpoint")
	}
	victims := rsConnectionPIDs(t)
	rsMustCtl(t, "close_all_connections", "test")
	// Answer only once the broker has dropped every connection it had: the
	// message is back in the queue and the ack has nowhere to go.
	warrentest.WaitUntil(t, 20*time.Second, "the broker to drop the connections", func() bool {
		now := rsConnectionPIDs(t)
		for _, pid := range victims {
			if slices.Contains(now, pid) {
				return false
			}
		}
		return true
	})
	answer()

	warrentest.WaitUntil(t, 30*time.Second, "the redelivery to be acked by the dedup window", func() bool { return e.logs.count(rsMsgDuplicate) == 1 })
	// Nothing ready or unacked is left that could still become a request.
	warrentest.WaitSettled(t, cfg, 10*time.Second)
	e.Stop(t)

	if n := ids.requests(); n != 1 {
		t.Errorf("endpoint got %d requests, want exactly 1 (the redelivery must be deduplicated)", n)
	}
	rsAssertCount(t, e, rsMsgDelivered, 1)
	rsAssertCount(t, e, rsMsgLost, 1)
	rsAssertCount(t, e, rsMsgRestored, 1)
	rsAssertEmpty(t, cfg, nil)
}

// The broker is down when the engine starts: not connected, it keeps
// retrying (one error line, then debug), and once the broker is back it
// connects, declares the topology and delivers.
func TestBrokerDownAtStartup(t *testing.T) {
	rsKeepBroker(t)
	rc, ids := rsReceiver(t)
	cfg := rsConfig(t, config.Subscription{Name: "late", URL: rc.URL, Events: []string{"#"}})
	rsMustCtl(t, "stop_app")
	e := rsStart(t, cfg, "late")

	warrentest.WaitUntil(t, 20*time.Second, "three failed reconnects", func() bool { return e.logs.count(rsMsgRetryFailed) >= 3 })
	if up, err := e.Connected(); up || err == nil {
		t.Errorf("broker down: Connected() = %v, %v; want false and the cause", up, err)
	}
	rsAssertCount(t, e, rsMsgUnreachable, 1)
	rsAssertCount(t, e, rsMsgLost, 0)

	rsMustCtl(t, "start_app")
	warrentest.WaitUntil(t, 30*time.Second, "the engine to connect", func() bool { up, _ := e.Connected(); return up })
	msgs := rsEvents(10, "evt_late")
	rsPublish(t, cfg, "late.event", msgs) // routable: the engine declared the queue
	warrentest.WaitUntil(t, 20*time.Second, "the events published after the broker came back", func() bool { return ids.distinct() == len(msgs) })
	e.Stop(t)

	ids.check(t, msgs)
	rsAssertCount(t, e, rsMsgUnreachable, 1)
	rsAssertCount(t, e, rsMsgLost, 0)
	if n := e.logs.count(rsMsgRestored) + e.logs.count(rsMsgConnected); n != 1 {
		t.Errorf("engine logged %d connects (%q or %q), want 1", n, rsMsgRestored, rsMsgConnected)
	}
	rsAssertEmpty(t, cfg, nil)
}

// TestBlockedBrokerStopsDeliveriesWithoutLoss raises a memory alarm so the
// broker blocks publishers while every attempt needs a retry copy: the
// engine must notice the block instead of hanging in a publish, take no
// more deliveries meanwhile, and lose nothing; once the alarm clears every
// event reaches its retry tier.
func TestBlockedBrokerStopsDeliveriesWithoutLoss(t *testing.T) {
	rsKeepBroker(t)
	watermark := strings.TrimSpace(rsMustCtl(t, "-q", "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."))
	t.Cleanup(func() {
		if _, err := rsCtl("set_vm_memory_high_watermark", watermark); err != nil {
			t.Errorf("restore the memory watermark: %v", err)
		}
	})
	ids := newRSIDs()
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		ids.add(r)
		return http.StatusServiceUnavailable
	})
	s := config.Subscription{Name: "blocked", URL: rc.URL, Events: []string{"#"}}
	s.Retry.Delays = []time.Duration{time.Hour} // copies stay in the tier
	cfg := rsConfig(t, s)
	rsApply(t, cfg)
	events := rsEvents(100, "evt_blocked")
	rsPublish(t, cfg, "k", events)

	rsMustCtl(t, "set_vm_memory_high_watermark", "0")
	e := rsStart(t, cfg, "blocked", func(e *engine.Engine) {
		e.MaxBackoff = 500 * time.Millisecond
		e.PublishTimeout = 2 * time.Second
	})

	warrentest.WaitUntil(t, 30*time.Second, "the engine to notice the block", func() bool {
		return e.logs.count("broker blocked publishing (memory or disk alarm): retry and parking copies wait until it recovers") == 1
	})
	// While blocked, each worker holds the original whose copy cannot be
	// stored: at most a prefetch's worth of events is tried, each once.
	time.Sleep(2 * time.Second)
	if n, d := ids.requests(), ids.duplicates(); n > cfg.Subscriptions[0].EffectivePrefetch() || d > 0 {
		t.Errorf("endpoint got %d attempts (%d repeats) while publishing was blocked, want at most %d, none repeated",
			n, d, cfg.Subscriptions[0].EffectivePrefetch())
	}

	rsMustCtl(t, "set_vm_memory_high_watermark", watermark)
	tier := cfg.RetryQueue(time.Hour)
	work := cfg.WorkQueue(cfg.Subscriptions[0])
	// A copy written while blocked may still land after its original was
	// requeued (a duplicate, never a loss): the tier may hold more than 100.
	warrentest.WaitUntil(t, 60*time.Second, "every event in its retry tier", func() bool {
		return len(rsMessageIDs(t, tier)) == len(events)
	})
	e.Stop(t)
	if n := rsMustDepth(t, work); n != 0 {
		t.Errorf("work queue holds %d, want 0", n)
	}
	inTier := rsMessageIDs(t, tier)
	for _, m := range events {
		if !inTier[m.MessageId] {
			t.Errorf("event %s is in neither the work queue nor its retry tier", m.MessageId)
		}
	}
	ids.check(t, events)
}

// rsMessageIDs reads the message ids in queue without consuming them.
func rsMessageIDs(t *testing.T, queue string) map[string]bool {
	t.Helper()
	conn, err := rsDial()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close() // puts every message back
	ids := map[string]bool{}
	for {
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return ids
		}
		ids[d.MessageId] = true
	}
}

// TestReloadWhileDisconnectedUnbindsLater drops a pattern by reload while
// the broker is down: the reload waits for the broker (nothing could be
// declared, so nothing could be refused), then applies whole: the binding
// is removed, so an event with the dropped key is unroutable.
func TestReloadWhileDisconnectedUnbindsLater(t *testing.T) {
	rsKeepBroker(t)
	rc, ids := rsReceiver(t)
	cfg := rsConfig(t, config.Subscription{Name: "away", URL: rc.URL, Events: []string{"keep.*", "drop.*"}})
	rsApply(t, cfg)
	e := rsStart(t, cfg, "away")
	warrentest.WaitUntil(t, 20*time.Second, "the engine to connect", func() bool { up, _ := e.Connected(); return up })

	rsMustCtl(t, "stop_app")
	warrentest.WaitUntil(t, 20*time.Second, "the engine to notice", func() bool { up, _ := e.Connected(); return !up })
	next := *cfg
	next.Subscriptions = []config.Subscription{cfg.Subscriptions[0]}
	next.Subscriptions[0].Events = []string{"keep.*"}
	e.Reload(&next)
	warrentest.WaitUntil(t, 10*time.Second, "the reload to wait", func() bool { return e.logs.count("config reload waits for the broker connection") == 1 })
	rsMustCtl(t, "start_app")
	warrentest.WaitUntil(t, 30*time.Second, "the reload once reconnected", func() bool {
		return e.logs.count("config reloaded") == 1 && e.SubscriptionStates()["away"] == engine.StateConsuming
	})

	conn, err := rsDial()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 2))
	for _, key := range []string{"drop.x", "keep.x"} {
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), cfg.Broker.Exchange, key, true, false, warrentest.JSON("evt_"+key, `{}`))
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(context.Background()); !ok || err != nil {
			t.Fatalf("publish %s not confirmed: %v", key, err)
		}
	}
	if len(returns) != 1 || (<-returns).RoutingKey != "drop.x" {
		t.Errorf("want drop.x unroutable after the reconnect and keep.x routed")
	}
	warrentest.WaitUntil(t, 20*time.Second, "keep.x delivered", func() bool { return ids.distinct() == 1 })
	e.Stop(t)
}
