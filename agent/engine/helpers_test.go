package engine_test

import (
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

// waitQuiet waits until cfg's work and tier queues hold nothing, ready or
// unacked: every event there was has been settled.
func waitQuiet(t *testing.T, cfg *config.Config, _ *engine.Engine) {
	t.Helper()
	warrentest.WaitSettled(t, cfg, 20*time.Second)
}

// ids lists the webhook-id of each request, in arrival order.
func ids(reqs []warrentest.Request) []string {
	out := make([]string, len(reqs))
	for i, r := range reqs {
		out[i] = r.Header.Get("Webhook-Id")
	}
	return out
}

func ptr(d amqp.Delivery) *amqp.Delivery { return &d }

// events returns n JSON events with ids prefix-000, prefix-001, ...
func events(n int, prefix string) []amqp.Publishing {
	msgs := make([]amqp.Publishing, n)
	for i := range msgs {
		msgs[i] = warrentest.JSON(fmt.Sprintf("%s-%03d", prefix, i), `{}`)
	}
	return msgs
}

// counter reads a counter of the engine's metrics with one label matching.
func counter(t *testing.T, e *engine.Engine, name, label, value string) float64 {
	t.Helper()
	families, err := engine.MetricsOf(e).Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}
