package engine_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/config"
)

// TestStalledBrokerDoesNotHoldShutdown: the broker stops answering while
// warren consumes; on SIGTERM the consumers' cancels get no answer, and
// warren must still stop within shutdown_grace plus the 5 s it gives the
// last acks (not wait for the client's heartbeat timeout).
func TestStalledBrokerDoesNotHoldShutdown(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(fmt.Sprintf("journal=%t", journal), func(t *testing.T) { stalledBrokerStop(t, journal) })
	}
}

func stalledBrokerStop(t *testing.T, journal bool) {
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusOK })
	subs := make([]config.Subscription, 5)
	for i := range subs {
		subs[i] = config.Subscription{Name: "stall" + string(rune('a'+i)), URL: rc.URL, Events: []string{"#"}}
	}
	cfg := warrentest.Config(t, subs...)
	proxy := brokertest.NewProxy(t)
	cfg.Broker.URL = brokertest.URLAt(t, proxy.Addr)
	cfg.Server.ShutdownGrace = time.Second
	if journal {
		cfg.Broker.Journal = &config.Journal{MaxAge: time.Hour, MaxBytes: 10 * config.MiB}
	}

	e := engine.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	for _, s := range subs {
		waitState(t, e, s.Name, engine.StateConsuming)
	}
	if journal {
		// An attempt on record, so stopping has one to flush.
		warrentest.Publish(t, cfg, "stall.event", warrentest.JSON("evt_stall", `{}`))
		rc.WaitFor(t, 10*time.Second, "the event at every subscription", func(r []warrentest.Request) bool { return len(r) == len(subs) })
	}

	proxy.Stall()
	stopAt := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		t.Logf("stopped %s after SIGTERM with the broker stalled", time.Since(stopAt).Round(10*time.Millisecond))
	case <-time.After(cfg.Server.ShutdownGrace + 8*time.Second):
		t.Fatalf("still running %s after SIGTERM (shutdown_grace %s) with the broker stalled", time.Since(stopAt).Round(time.Second), cfg.Server.ShutdownGrace)
	}
}
