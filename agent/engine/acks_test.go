package engine_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

// TestSlowAttemptDoesNotHoldTheOthersAcks: acks are coalesced over runs of
// settled deliveries, and an attempt that hangs sits at the front of such a
// run. The deliveries behind it must still be acked, or they fill the
// prefetch window and the subscription stops. Each event is sent once.
func TestSlowAttemptDoesNotHoldTheOthersAcks(t *testing.T) {
	release := make(chan struct{})
	var released bool
	answer := func() {
		if !released {
			released = true
			close(release)
		}
	}
	defer answer()
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		if r.Header.Get("webhook-id") == "evt_slow-000" {
			<-release
		}
		return http.StatusOK
	})
	s := config.Subscription{Name: "slowfront", URL: rc.URL, Events: []string{"#"}}
	cfg := warrentest.Config(t, s)
	cfg.Subscriptions[0].Concurrency = 2
	cfg.Subscriptions[0].Prefetch = 4
	cfg.Subscriptions[0].Timeout = time.Minute
	e := hdStart(t, cfg)
	waitState(t, e.Engine, "slowfront", engine.StateConsuming)

	warrentest.Publish(t, cfg, "order.paid", events(1, "evt_slow")...)
	rc.WaitFor(t, 10*time.Second, "the slow event", func(r []warrentest.Request) bool { return len(r) == 1 })
	const others = 40
	warrentest.Publish(t, cfg, "order.paid", events(others, "evt_after")...)
	rc.WaitFor(t, 20*time.Second, "every event behind the slow one", func(r []warrentest.Request) bool {
		return len(r) == 1+others
	})
	answer()
	hdSettled(t, 10*time.Second, hdQueues(cfg, cfg.Subscriptions[0])...)
	for id, n := range hdByID(rc.Requests()) {
		if n != 1 {
			t.Errorf("%s sent %d times, want once", id, n)
		}
	}
}
