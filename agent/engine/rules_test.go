package engine_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

// TestFilterDeliversParksAndFilters publishes a matching, a non-matching
// and a failing event (no amount field): exactly the matching one reaches
// the endpoint, the failing one is parked with the expression's reason,
// and the other is acked without a request.
func TestFilterDeliversParksAndFilters(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, config.Subscription{
		Name: "big", URL: rc.URL, Events: []string{"order.*"},
		Filter: `type == "order.completed" && data.amount >= 100000`,
	})
	e := start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "order.completed",
		warrentest.JSON("evt_small", `{"amount": 5}`),
		warrentest.JSON("evt_broken", `{"total": 5}`),
		warrentest.JSON("evt_big", `{"amount": 250000}`))
	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_created", `{"amount": 250000}`))

	dead := cfg.DeadQueue(cfg.Subscriptions[0])
	warrentest.WaitDepth(t, dead, 1, 10*time.Second)
	waitQuiet(t, cfg, e)
	reqs := rc.Requests()
	if len(reqs) != 1 || reqs[0].Header.Get("Webhook-Id") != "evt_big" {
		t.Fatalf("endpoint got %d requests (%v), want exactly evt_big", len(reqs), ids(reqs))
	}
	parked := event.ReadParked(ptr(warrentest.Get(t, dead)))
	if parked.ID != "evt_broken" || parked.LastError != "filter: no such key: amount" {
		t.Errorf("parked %q with %q, want evt_broken with the filter's error", parked.ID, parked.LastError)
	}
	if got := counter(t, e, "warren_deliveries_total", "outcome", "filtered"); got != 2 {
		t.Errorf(`warren_deliveries_total{outcome="filtered"} = %v, want 2`, got)
	}
}

// TestAPIVersionPinning: versioned events of another version are filtered,
// the pinned version and unversioned events are delivered.
func TestAPIVersionPinning(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	sub := config.Subscription{Name: "pinned", URL: rc.URL, Events: []string{"#"}}
	sub.APIVersion = "2026-01-01"
	cfg := warrentest.Config(t, sub)
	e := start(t, cfg)
	warrentest.Apply(t, cfg)
	versioned := func(id, v string) amqp.Publishing {
		p := warrentest.JSON(id, `{}`)
		p.Headers = amqp.Table{"api_version": v}
		return p
	}
	warrentest.Publish(t, cfg, "a", versioned("evt_old", "2025-01-01"), versioned("evt_pinned", "2026-01-01"), warrentest.JSON("evt_plain", `{}`))
	rc.WaitFor(t, 10*time.Second, "two events", func(r []warrentest.Request) bool { return len(r) == 2 })
	waitQuiet(t, cfg, e)
	got := ids(rc.Requests())
	slices.Sort(got)
	if len(got) != 2 || got[0] != "evt_pinned" || got[1] != "evt_plain" {
		t.Errorf("delivered %v, want [evt_pinned evt_plain]", got)
	}
}

// TestTransformIsSignedAsSent checks the transformed envelope and raw body
// with the official Standard Webhooks library.
func TestTransformIsSignedAsSent(t *testing.T) {
	wh, err := standardwebhooks.NewWebhook(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	env := warrentest.NewReceiver(t, nil)
	raw := warrentest.NewReceiver(t, nil)
	transform := `{"order": data.id, "amount": data.amount}`
	rawSub := config.Subscription{Name: "raw", URL: raw.URL, Events: []string{"#"}, Secrets: []config.Secret{secret(t)}, Transform: transform}
	rawSub.Format = config.FormatRaw
	cfg := warrentest.Config(t,
		config.Subscription{Name: "env", URL: env.URL, Events: []string{"#"}, Secrets: []config.Secret{secret(t)}, Transform: transform},
		rawSub)
	start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "order.completed", warrentest.JSON("evt_t", `{"id": "o-1", "amount": 7, "secret": "x"}`))

	for name, rc := range map[string]*warrentest.Receiver{"envelope": env, "raw": raw} {
		req := rc.WaitFor(t, 10*time.Second, "the event", func(r []warrentest.Request) bool { return len(r) == 1 })[0]
		if err := wh.Verify(req.Body, req.Header); err != nil {
			t.Errorf("%s: official library rejects the signature: %v", name, err)
		}
		body := req.Body
		if name == "envelope" {
			var envelope struct{ Data json.RawMessage }
			if err := json.Unmarshal(req.Body, &envelope); err != nil {
				t.Fatal(err)
			}
			body = envelope.Data
		}
		if string(body) != `{"amount":7,"order":"o-1"}` {
			t.Errorf("%s: body/data = %s, want the transform's JSON", name, body)
		}
		if ct := req.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: content-type %q", name, ct)
		}
	}
}

// TestPriorityUnderMaxInFlight preloads a backlog in a low and a high
// subscription behind one slot: the high one's events come first.
func TestPriorityUnderMaxInFlight(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int {
		time.Sleep(5 * time.Millisecond)
		return http.StatusOK
	})
	low := config.Subscription{Name: "low", URL: rc.URL + "/low", Events: []string{"low"}}
	low.Priority = config.PriorityLow
	high := config.Subscription{Name: "high", URL: rc.URL + "/high", Events: []string{"high"}}
	high.Priority = config.PriorityHigh
	cfg := warrentest.Config(t, low, high)
	cfg.Server.MaxInFlight = 1
	warrentest.Apply(t, cfg)
	const n = 40
	warrentest.Publish(t, cfg, "low", events(n, "evt_low")...)
	warrentest.Publish(t, cfg, "high", events(n, "evt_high")...)
	start(t, cfg)
	reqs := rc.WaitFor(t, 30*time.Second, "every event", func(r []warrentest.Request) bool { return len(r) == 2*n })
	// Both consumers start at once, so a few low events may win the first
	// slots; after that, high events must take every free slot first.
	lastHigh, lowBefore := 0, 0
	for i, r := range reqs {
		if r.Path == "/high" {
			lastHigh = i
		}
	}
	for _, r := range reqs[:lastHigh] {
		if r.Path == "/low" {
			lowBefore++
		}
	}
	if lowBefore > 2*cfg.Subscriptions[0].Concurrency {
		t.Errorf("%d low-priority events went before the last high-priority one, want at most the %d low ones already waiting",
			lowBefore, 2*cfg.Subscriptions[0].Concurrency)
	}
}

// TestMaxPriorityOvertakes preloads priority 0 and 9 messages: the 9s are
// delivered first.
func TestMaxPriorityOvertakes(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	sub := config.Subscription{Name: "prio", URL: rc.URL, Events: []string{"#"}}
	sub.MaxPriority = 10
	sub.Concurrency = 1
	sub.Prefetch = 1
	cfg := warrentest.Config(t, sub)
	warrentest.Apply(t, cfg)
	var msgs []amqp.Publishing
	for i, m := range events(20, "evt_p") {
		if i >= 10 {
			m.Priority = 9
		}
		msgs = append(msgs, m)
	}
	warrentest.Publish(t, cfg, "k", msgs...)
	start(t, cfg)
	reqs := rc.WaitFor(t, 20*time.Second, "every event", func(r []warrentest.Request) bool { return len(r) == 20 })
	for i, id := range ids(reqs)[:10] {
		if id < "evt_p-010" {
			t.Fatalf("request %d was %s (priority 0) before the priority 9 events ran out: %v", i, id, ids(reqs))
		}
	}
}
