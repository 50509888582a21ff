// Package server is warren's operations endpoint: /metrics, /healthz and
// /readyz.
package server

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/warren-hq/warren/agent/metrics"
)

// Status is what /readyz needs to know.
type Status interface {
	// Connected reports whether a broker session is up, and the last error.
	Connected() (bool, error)
	// SubscriptionStates maps each subscription to what it is doing.
	SubscriptionStates() map[string]string
}

// Readiness is the body of /readyz.
type Readiness struct {
	Ready         bool              `json:"ready"`
	Broker        string            `json:"broker"`
	Error         string            `json:"error,omitempty"`
	Subscriptions map[string]string `json:"subscriptions"`
}

// Handler serves the three endpoints.
func Handler(status Status, m *metrics.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		connected, err := status.Connected()
		r := Readiness{Ready: connected, Broker: "connected", Subscriptions: status.SubscriptionStates()}
		if !connected {
			r.Broker = "disconnected"
			if err != nil {
				r.Error = err.Error()
			}
		}
		w.Header().Set("Content-Type", "application/json")
		// Only warren's own inability to work fails readiness: a paused
		// subscription or open circuit is reported in the body, because a
		// failing sidecar probe takes the whole pod out of service.
		if !r.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(r)
	})
	return mux
}
