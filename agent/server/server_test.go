package server_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/agent/server"
	"github.com/warren-hq/warren/config"
)

func TestMetricsCountOutcomesAndReadyzReportsStates(t *testing.T) {
	ok := warrentest.NewReceiver(t, nil)
	// The flaky endpoint fails every first attempt: one retry per event.
	flaky := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		if r.Header.Get("Webhook-Id") == "evt_flaky" {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	gone := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusGone })
	cfg := warrentest.Config(t,
		config.Subscription{Name: "ok", URL: ok.URL, Events: []string{"a.*"}},
		config.Subscription{Name: "flaky", URL: flaky.URL, Events: []string{"a.#"}},
		config.Subscription{Name: "gone", URL: gone.URL, Events: []string{"b"}},
	)
	m := metrics.New()
	e := engine.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), m)
	e.SampleEvery = 100 * time.Millisecond
	srv := httptest.NewServer(server.Handler(e, m))
	defer srv.Close()

	// Before the engine runs, warren cannot work: not ready.
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, `"ready": false`) {
		t.Errorf("/readyz before start = %d %s, want 503 and ready false", code, body)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "a.x", warrentest.JSON("evt_1", `{}`), warrentest.JSON("evt_2", `{}`))
	warrentest.Publish(t, cfg, "a.x.y", warrentest.JSON("evt_flaky", `{}`))
	warrentest.Publish(t, cfg, "b", warrentest.JSON("evt_gone", `{}`))

	// ok: 2 delivered. flaky: evt_1, evt_2 delivered (a.x matches a.#),
	// evt_flaky retried twice, then parked. gone: 1 parked (410).
	want := map[string]string{
		`warren_deliveries_total{outcome="delivered",subscription="ok"}`:    "2",
		`warren_deliveries_total{outcome="delivered",subscription="flaky"}`: "2",
		`warren_deliveries_total{outcome="retried",subscription="flaky"}`:   "2",
		`warren_deliveries_total{outcome="parked",subscription="flaky"}`:    "1",
		`warren_deliveries_total{outcome="parked",subscription="gone"}`:     "1",
		`warren_deliveries_total{outcome="retried",subscription="ok"}`:      "0",
		`warren_subscription_paused{subscription="gone"}`:                   "1",
		`warren_broker_connected`:                                           "1",
		`warren_attempt_duration_seconds_count{subscription="flaky"}`:       "5",
		`warren_queue_messages{kind="dead",subscription="flaky"}`:           "1",
	}
	var got map[string]string
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, body := get(t, srv.URL+"/metrics")
		got = samples(body)
		if matches(got, want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %s", k, got[k], v)
		}
	}

	code, body := get(t, srv.URL+"/readyz")
	var r server.Readiness
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	// A paused subscription is shown but does not fail readiness.
	if code != http.StatusOK || !r.Ready || r.Subscriptions["gone"] != engine.StatePaused || r.Subscriptions["ok"] != engine.StateConsuming {
		t.Errorf("/readyz = %d %+v, want 200, ready, gone paused, ok consuming", code, r)
	}
	if code, body := get(t, srv.URL+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// samples parses the text exposition format into series -> value.
func samples(body string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			out[line[:i]] = line[i+1:]
		}
	}
	return out
}

func matches(got, want map[string]string) bool {
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}
