package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/config"
)

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// start runs an engine on cfg until the test ends.
func start(t *testing.T, cfg *config.Config) *engine.Engine {
	t.Helper()
	e, _ := warrentest.Start(t, cfg)
	return e
}

func secret(t *testing.T) config.Secret {
	t.Helper()
	s, err := config.ParseSecret(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFanOutAndIsolation(t *testing.T) {
	good := warrentest.NewReceiver(t, nil)
	failing := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusInternalServerError })
	cfg := warrentest.Config(t,
		config.Subscription{Name: "good", URL: good.URL, Events: []string{"order.*"}},
		config.Subscription{Name: "failing", URL: failing.URL, Events: []string{"order.#"}},
	)
	start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_fanout", `{"n":1}`))

	reqs := good.WaitFor(t, 10*time.Second, "the good endpoint", func(r []warrentest.Request) bool { return len(r) == 1 })
	if id := reqs[0].Header.Get("webhook-id"); id != "evt_fanout" {
		t.Errorf("webhook-id = %q, want evt_fanout", id)
	}
	// The failing endpoint gets 1 + len(delays) attempts, then the event is
	// parked; the good one is never asked again.
	failing.WaitFor(t, 10*time.Second, "three attempts", func(r []warrentest.Request) bool { return len(r) == 3 })
	warrentest.WaitDepth(t, cfg.DeadQueue(cfg.Subscriptions[1]), 1, 10*time.Second)
	if n := len(good.Requests()); n != 1 {
		t.Errorf("good endpoint got %d requests, want 1", n)
	}
}

func TestEnvelopeSignedForOfficialLibrary(t *testing.T) {
	wh, err := standardwebhooks.NewWebhook(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, config.Subscription{
		Name: "signed", URL: rc.URL, Events: []string{"payment.#"},
		Secrets: []config.Secret{secret(t)},
		Headers: map[string]string{"Authorization": "Bearer t0ken"},
	})
	start(t, cfg)
	warrentest.Apply(t, cfg)
	pub := warrentest.JSON("evt_signed", `{"amount":42}`)
	pub.Headers = map[string]any{"api_version": "2024-01-01"}
	pub.Timestamp = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	warrentest.Publish(t, cfg, "payment.captured.eu", pub)

	req := rc.WaitFor(t, 10*time.Second, "the event", func(r []warrentest.Request) bool { return len(r) == 1 })[0]
	if err := wh.Verify(req.Body, req.Header); err != nil {
		t.Fatalf("official Standard Webhooks library rejects the signature: %v", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(req.Body, &raw); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	want := map[string]string{
		"id":          `"evt_signed"`,
		"type":        `"payment.captured.eu"`,
		"created_at":  `"2026-01-02T03:04:05Z"`,
		"api_version": `"2024-01-01"`,
		"data":        `{"amount":42}`,
	}
	for k, v := range want {
		if string(raw[k]) != v {
			t.Errorf("envelope %s = %s, want %s", k, raw[k], v)
		}
	}
	if len(raw) != len(want) {
		t.Errorf("envelope has keys %v, want exactly %v", raw, want)
	}
	for k, v := range map[string]string{
		"Authorization": "Bearer t0ken",
		"Content-Type":  "application/json",
	} {
		if got := req.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if ua := req.Header.Get("User-Agent"); len(ua) < 7 || ua[:7] != "warren/" {
		t.Errorf("user-agent = %q, want warren/<version>", ua)
	}
}

func TestRetryLadderKeepsIDAndWaitsEachTier(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(n int, _ *http.Request) int {
		if n <= 2 {
			return http.StatusBadGateway
		}
		return http.StatusOK
	})
	cfg := warrentest.Config(t, config.Subscription{Name: "ladder", URL: rc.URL, Events: []string{"#"}})
	start(t, cfg)
	warrentest.Apply(t, cfg)
	// No message_id: the id is derived, and must survive every hop.
	warrentest.Publish(t, cfg, "order.paid", warrentest.JSON("", `{"n":3}`))

	reqs := rc.WaitFor(t, 10*time.Second, "three attempts", func(r []warrentest.Request) bool { return len(r) == 3 })
	id := reqs[0].Header.Get("webhook-id")
	if len(id) < 5 || id[:4] != "evt_" {
		t.Fatalf("derived webhook-id = %q, want evt_...", id)
	}
	for i, r := range reqs {
		if got := r.Header.Get("webhook-id"); got != id {
			t.Errorf("attempt %d webhook-id = %q, want %q", i+1, got, id)
		}
	}
	delays := cfg.Subscriptions[0].Retry.Delays
	for i := 1; i < 3; i++ {
		if gap := reqs[i].At.Sub(reqs[i-1].At); gap < delays[i-1] {
			t.Errorf("attempt %d came %s after attempt %d, want at least %s", i+1, gap, i, delays[i-1])
		}
	}
	// Once no queue holds the event, ready or unacked, nothing more can
	// reach the endpoint.
	s := cfg.Subscriptions[0]
	hdSettled(t, 10*time.Second, hdQueues(cfg, s)...)
	if n := len(rc.Requests()); n != 3 {
		t.Errorf("endpoint got %d requests, want exactly 3", n)
	}
}

// TestOldPerSubscriptionTierDrainsIntoItsWorkQueue: tiers used to be per
// subscription (P.S.retry.<delay>, dead-lettering to P.S). A retry copy an
// older warren left in one reaches the endpoint after the upgrade, once,
// as the event it was.
func TestOldPerSubscriptionTierDrainsIntoItsWorkQueue(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, config.Subscription{Name: "upgraded", URL: rc.URL, Events: []string{"#"}})
	s := cfg.Subscriptions[0]
	warrentest.Apply(t, cfg)
	old := cfg.WorkQueue(s) + ".retry.500ms"
	conn := brokertest.Dial(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(old, true, false, false, false, amqp.Table{
		"x-queue-type": cfg.Broker.QueueType, "x-message-ttl": int64(500),
		"x-dead-letter-exchange": "", "x-dead-letter-routing-key": cfg.WorkQueue(s),
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ch, err := conn.Channel(); err == nil {
			ch.QueueDelete(old, false, false, false)
		}
	})
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	copy := warrentest.JSON("evt_old_tier", `{"n":1}`)
	copy.DeliveryMode = amqp.Persistent
	copy.Headers = amqp.Table{event.HeaderAttempt: int32(1), event.HeaderRoutingKey: "order.created", event.HeaderLastStatus: int32(503)}
	dc, err := ch.PublishWithDeferredConfirm("", old, true, false, copy)
	if err != nil || !dc.Wait() {
		t.Fatalf("publish the old retry copy: %v", err)
	}

	start(t, cfg)
	reqs := rc.WaitFor(t, 10*time.Second, "the old retry copy", func(r []warrentest.Request) bool { return len(r) == 1 })
	var env struct{ ID, Type string }
	if err := json.Unmarshal(reqs[0].Body, &env); err != nil || env.ID != "evt_old_tier" || env.Type != "order.created" {
		t.Errorf("endpoint got %s (%v), want evt_old_tier of type order.created", reqs[0].Body, err)
	}
	hdSettled(t, 10*time.Second, append(hdQueues(cfg, s), old)...)
	if n := len(rc.Requests()); n != 1 {
		t.Errorf("endpoint got %d requests, want exactly 1", n)
	}
}

func TestRetryAfterPicksCoveringTier(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(n int, _ *http.Request) int {
		if n == 1 {
			return http.StatusTooManyRequests
		}
		return http.StatusOK
	})
	rc.Config.Handler = retryAfter(rc.Config.Handler, "1")
	s := config.Subscription{Name: "throttled", URL: rc.URL, Events: []string{"#"}}
	s.Retry.Delays = []time.Duration{100 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second}
	cfg := warrentest.Config(t, s)
	start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "x", warrentest.JSON("evt_429", `{}`))

	reqs := rc.WaitFor(t, 10*time.Second, "the retry", func(r []warrentest.Request) bool { return len(r) == 2 })
	// Retry-After: 1 (second) is covered by the 1.5s tier, not the 100ms one.
	if gap := reqs[1].At.Sub(reqs[0].At); gap < 1500*time.Millisecond {
		t.Errorf("retry came after %s, want at least 1.5s (the first tier >= Retry-After)", gap)
	}
}

func retryAfter(next http.Handler, value string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", value)
		next.ServeHTTP(w, r)
	})
}

func TestParkAfterLastTierWithHeaders(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusInternalServerError })
	cfg := warrentest.Config(t, config.Subscription{Name: "parked", URL: rc.URL, Events: []string{"#"}})
	start(t, cfg)
	warrentest.Apply(t, cfg)
	pub := warrentest.JSON("evt_park", `{"n":1}`)
	pub.Headers = map[string]any{"tenant": "acme"}
	pub.Expiration = "600000"
	warrentest.Publish(t, cfg, "invoice.failed", pub)

	s := cfg.Subscriptions[0]
	warrentest.WaitDepth(t, cfg.DeadQueue(s), 1, 10*time.Second)
	d := warrentest.Get(t, cfg.DeadQueue(s))
	p := event.ReadParked(&d)
	wantAttempts := len(s.Retry.Delays) + 1
	if p.ID != "evt_park" || p.Type != "invoice.failed" || p.Attempts != wantAttempts || p.LastStatus != 500 {
		t.Errorf("parked = %+v, want id evt_park, type invoice.failed, %d attempts, status 500", p, wantAttempts)
	}
	if d.MessageId != "evt_park" || d.Headers["tenant"] != "acme" || d.Expiration != "" {
		t.Errorf("parked copy: message_id %q, tenant %v, expiration %q; want the id, the publisher's header, no expiration",
			d.MessageId, d.Headers["tenant"], d.Expiration)
	}
	for k := range d.Headers {
		if k == "x-death" || len(k) > 13 && (k[:13] == "x-first-death" || k[:12] == "x-last-death") {
			t.Errorf("parked copy carries broker header %s", k)
		}
	}
	if n := len(rc.Requests()); n != wantAttempts {
		t.Errorf("endpoint got %d attempts, want %d", n, wantAttempts)
	}
}

func TestParkAtOnce(t *testing.T) {
	cases := []struct {
		name   string
		status int
		format string
		body   string
		reason string
	}{
		{"dead on status", http.StatusUnprocessableEntity, config.FormatEnvelope, `{}`, "dead_on_status"},
		{"not json in envelope", http.StatusOK, config.FormatEnvelope, `not json`, "use format: raw"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := warrentest.NewReceiver(t, func(int, *http.Request) int { return tc.status })
			s := config.Subscription{Name: "once", URL: rc.URL, Events: []string{"#"}}
			s.Format = tc.format
			s.Retry.DeadOnStatus = []int{http.StatusUnprocessableEntity}
			cfg := warrentest.Config(t, s)
			start(t, cfg)
			warrentest.Apply(t, cfg)
			warrentest.Publish(t, cfg, "k", warrentest.JSON("evt_once", tc.body))
			warrentest.WaitDepth(t, cfg.DeadQueue(cfg.Subscriptions[0]), 1, 10*time.Second)
			d := warrentest.Get(t, cfg.DeadQueue(cfg.Subscriptions[0]))
			if p := event.ReadParked(&d); !strings.Contains(p.LastError, tc.reason) || p.Attempts != 1 {
				t.Errorf("parked after %d attempts with %q, want 1 attempt and a reason mentioning %q", p.Attempts, p.LastError, tc.reason)
			}
		})
	}
}

func TestGonePausesSubscription(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusGone })
	cfg := warrentest.Config(t, config.Subscription{Name: "gone", URL: rc.URL, Events: []string{"#"}, Options: config.Options{Concurrency: 1}})
	e := start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "k", warrentest.JSON("evt_gone1", `{}`), warrentest.JSON("evt_gone2", `{}`))

	s := cfg.Subscriptions[0]
	warrentest.WaitDepth(t, cfg.DeadQueue(s), 1, 10*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for e.SubscriptionStates()["gone"] != engine.StatePaused {
		if time.Now().After(deadline) {
			t.Fatalf("state = %q, want %q", e.SubscriptionStates()["gone"], engine.StatePaused)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The second event waits in the work queue instead of being burned.
	warrentest.WaitDepth(t, cfg.WorkQueue(s), 1, 5*time.Second)
	if n := len(rc.Requests()); n != 1 {
		t.Errorf("endpoint got %d requests after 410, want 1", n)
	}
}

func TestFormats(t *testing.T) {
	cases := []struct {
		format      string
		contentType string
		wantHeaders map[string]string
	}{
		{config.FormatRaw, "text/plain", map[string]string{"Content-Type": "text/plain"}},
		{config.FormatRaw, "", map[string]string{"Content-Type": "application/octet-stream"}},
		{config.FormatCloudEvents, "application/xml", map[string]string{
			"Content-Type": "application/xml", "Ce-Specversion": "1.0", "Ce-Id": "evt_fmt",
			"Ce-Type": "doc.signed", "Ce-Source": "billing", "Ce-Time": "2026-03-04T05:06:07Z",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.format+"/"+tc.contentType, func(t *testing.T) {
			rc := warrentest.NewReceiver(t, nil)
			s := config.Subscription{Name: "fmt", URL: rc.URL, Events: []string{"doc.*"}}
			s.Format, s.Source = tc.format, "billing"
			cfg := warrentest.Config(t, s)
			start(t, cfg)
			warrentest.Apply(t, cfg)
			body := "<doc id='1'/>"
			msg := warrentest.JSON("evt_fmt", body)
			msg.ContentType = tc.contentType
			msg.Timestamp = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
			warrentest.Publish(t, cfg, "doc.signed", msg)
			req := rc.WaitFor(t, 10*time.Second, "the event", func(r []warrentest.Request) bool { return len(r) == 1 })[0]
			if string(req.Body) != body {
				t.Errorf("body = %q, want the published bytes %q", req.Body, body)
			}
			for k, v := range tc.wantHeaders {
				if got := req.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestTopologyConflictStopsEngine(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, config.Subscription{Name: "conflict", URL: rc.URL, Events: []string{"#"}})
	warrentest.Apply(t, cfg)
	quorum := *cfg
	quorum.Broker.QueueType = config.QueueQuorum
	e := engine.New(&quorum, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := e.Run(ctx)
	var fatal *engine.FatalError
	if !errors.As(err, &fatal) || !strings.Contains(err.Error(), `queue "`+cfg.Broker.QueuePrefix+".") ||
		!strings.Contains(err.Error(), "broker.queue_type quorum") || !strings.Contains(err.Error(), "delete_queue") {
		t.Fatalf("Run = %v, want a fatal error naming the queue, the queue type and the fix", err)
	}
}

// TestLogsAndCopiesNeverShowSecrets fails deliveries in every way that
// produces an error text (a status with a body, a refused connection) for
// endpoints carrying a token in the URL and headers, and checks that
// neither the logs nor the parked copies reveal a secret.
func TestLogsAndCopiesNeverShowSecrets(t *testing.T) {
	const token = "sekret-token-123"
	// The endpoint answers 500 and echoes what it got, as some do: the
	// token in its URL and headers must not reach logs or copies that way.
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, "bad request to %s with %s", r.URL.RawQuery, r.Header.Get("Authorization"))
	}))
	t.Cleanup(rc.Close)
	refused := warrentest.NewReceiver(t, nil)
	refusedURL := refused.URL
	refused.Close()
	sec := secret(t)
	cfg := warrentest.Config(t,
		config.Subscription{Name: "status", URL: rc.URL + "/hook?token=" + token, Events: []string{"#"},
			Secrets: []config.Secret{sec}, Headers: map[string]string{"Authorization": "Bearer " + token}},
		config.Subscription{Name: "refused", URL: refusedURL + "/hook?token=" + token, Events: []string{"#"},
			Secrets: []config.Secret{sec}},
	)
	var logs syncBuffer
	e := engine.New(cfg, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), metrics.New())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "k", warrentest.JSON("evt_secret", `{}`))
	for _, s := range cfg.Subscriptions {
		warrentest.WaitDepth(t, cfg.DeadQueue(s), 1, 15*time.Second)
	}
	cancel()
	<-done

	var parked []string
	for _, s := range cfg.Subscriptions {
		d := warrentest.Get(t, cfg.DeadQueue(s))
		parked = append(parked, fmt.Sprint(d.Headers))
	}
	for _, text := range append(parked, logs.String()) {
		for _, leak := range []string{token, testSecret, testSecret[len("whsec_"):]} {
			if strings.Contains(text, leak) {
				t.Errorf("%q leaked into:\n%s", leak, text)
			}
		}
	}
	if !strings.Contains(logs.String(), `"msg":"parked"`) {
		t.Errorf("no parked line logged:\n%s", logs.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
