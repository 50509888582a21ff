package engine_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/agent/journal"
	"github.com/warren-hq/warren/config"
)

// TestJournalRecordsAttemptsAndReplayPassesDedup runs one event through a
// failed and a successful attempt with the journal on: P.attempts holds
// both outcomes, and a replay right after the delivery reaches the
// endpoint again although the dedup window remembers the event.
func TestJournalRecordsAttemptsAndReplayPassesDedup(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(n int, _ *http.Request) int {
		if n == 1 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	cfg := warrentest.Config(t, config.Subscription{Name: "journaled", URL: rc.URL, Events: []string{"order.*"}})
	cfg.Broker.Journal = &config.Journal{MaxAge: time.Hour, MaxBytes: 10 * config.MiB}
	start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_j", `{"n":1}`))
	rc.WaitFor(t, 10*time.Second, "the retry", func(r []warrentest.Request) bool { return len(r) == 2 })

	conn := brokertest.Dial(t)
	var outcomes []string
	deadline := time.Now().Add(10 * time.Second)
	for len(outcomes) < 2 && time.Now().Before(deadline) {
		outcomes = nil
		err := journal.Read(context.Background(), conn, cfg.AttemptsStream(), journal.Window{}, func(d *amqp.Delivery) error {
			for _, a := range journal.Attempts(d) {
				if a.EventID == "evt_j" && a.Subscription == "journaled" {
					outcomes = append(outcomes, a.Outcome+"/"+http.StatusText(a.Status))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(outcomes) != 2 || outcomes[0] != "retried/Service Unavailable" || outcomes[1] != "delivered/OK" {
		t.Fatalf("attempts stream holds %v, want [retried/Service Unavailable delivered/OK]", outcomes)
	}

	s := cfg.Subscriptions[0]
	res, err := journal.Replay{
		Stream: cfg.JournalStream(), WorkQueue: cfg.WorkQueue(s), Subscription: s,
		Window: journal.Window{Since: time.Now().Add(-time.Minute)},
	}.Run(context.Background(), conn)
	if err != nil || res.Sent != 1 {
		t.Fatalf("replay sent %d, err %v; want 1", res.Sent, err)
	}
	reqs := rc.WaitFor(t, 10*time.Second, "the replayed event", func(r []warrentest.Request) bool { return len(r) == 3 })
	if id := reqs[2].Header.Get("Webhook-Id"); id != "evt_j" {
		t.Errorf("replay sent webhook-id %q, want evt_j", id)
	}
}
