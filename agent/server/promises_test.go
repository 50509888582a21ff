package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/buildinfo"
	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/agent/server"
	"github.com/warren-hq/warren/config"
)

// closedPort returns a 127.0.0.1 port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// readyz serves /readyz for an engine running on cfg.
func readyz(t *testing.T, cfg *config.Config) (*engine.Engine, *httptest.Server) {
	t.Helper()
	m := metrics.New()
	e := engine.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), m)
	e.MinBackoff = 50 * time.Millisecond
	srv := httptest.NewServer(server.Handler(e, m))
	t.Cleanup(srv.Close)
	return e, srv
}

// TestReadyzWhileBrokerUnreachable: /readyz answers 503 with the cause
// while warren runs against a broker address nobody answers on, and 200
// with the subscription consuming against the real broker.
func TestReadyzWhileBrokerUnreachable(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, config.Subscription{Name: "waiting", URL: rc.URL, Events: []string{"#"}})

	down := *cfg
	down.Broker.URL = fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", closedPort(t))
	e, srv := readyz(t, &down)
	stop := run(t, e)
	// Let it try (and fail) to dial a few times: it keeps running.
	time.Sleep(500 * time.Millisecond)
	var r server.Readiness
	code, body := get(t, srv.URL+"/readyz")
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	if code != http.StatusServiceUnavailable || r.Ready || r.Broker != "disconnected" || r.Error == "" {
		t.Errorf("/readyz with the broker unreachable = %d %s, want 503, ready false, broker disconnected and the error", code, body)
	}
	if _, ok := r.Subscriptions["waiting"]; !ok {
		t.Errorf("/readyz with the broker unreachable lists %v, want the subscription", r.Subscriptions)
	}
	if code, _ := get(t, srv.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with the broker unreachable = %d, want 200", code)
	}
	stop()

	e, srv = readyz(t, cfg)
	run(t, e)
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body = get(t, srv.URL+"/readyz")
		r = server.Readiness{}
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("/readyz body %q: %v", body, err)
		}
		if code == http.StatusOK && r.Ready && r.Subscriptions["waiting"] == engine.StateConsuming {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz with the real broker = %d %s, want 200, ready and waiting consuming", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r.Broker != "connected" || r.Error != "" {
		t.Errorf("/readyz with the real broker = %s, want broker connected and no error", body)
	}
}

// run runs e until the returned stop is called or the test ends.
func run(t *testing.T, e *engine.Engine) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("engine stopped with: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("engine still running 15s after it was stopped")
		}
	}
	t.Cleanup(stop)
	return stop
}

// TestBuildInfoExported: /metrics carries warren_build_info 1 with the
// version, commit and Go version of the binary.
func TestBuildInfoExported(t *testing.T) {
	m := metrics.New()
	srv := httptest.NewServer(server.Handler(statusStub{}, m))
	defer srv.Close()
	_, body := get(t, srv.URL+"/metrics")
	info := buildinfo.Get()
	want := fmt.Sprintf(`warren_build_info{commit=%q,goversion=%q,version=%q}`, info.Commit, info.GoVersion, info.Version)
	if v, ok := samples(body)[want]; !ok || v != "1" {
		line := regexp.MustCompile(`(?m)^warren_build_info.*$`).FindString(body)
		t.Errorf("/metrics has %q, want %s 1", line, want)
	}
	if info.Version == "" || info.Commit == "" || info.GoVersion == "" {
		t.Errorf("build info %+v has an empty field", info)
	}
}

type statusStub struct{}

func (statusStub) Connected() (bool, error)              { return true, nil }
func (statusStub) SubscriptionStates() map[string]string { return map[string]string{} }
