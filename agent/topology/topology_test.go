package topology

import (
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/config"
)

func testConfig(queueType string, delays ...time.Duration) *config.Config {
	cfg := config.Default()
	cfg.Broker.QueueType = queueType
	s := config.Subscription{Name: "orders", Events: []string{"order.*", "payment.#"}, Options: cfg.Defaults}
	s.Retry.Delays = delays
	cfg.Subscriptions = []config.Subscription{s}
	return &cfg
}

func TestQuorumPlanDeadLettersAtLeastOnce(t *testing.T) {
	queues := For(testConfig(config.QueueQuorum, time.Second, 30*time.Second)).Queues
	atLeastOnce := amqp.Table{
		"x-queue-type":           "quorum",
		"x-dead-letter-exchange": "",
		"x-dead-letter-strategy": "at-least-once",
		"x-overflow":             "reject-publish",
	}
	with := func(routingKey string, ttl int64) amqp.Table {
		t := amqp.Table{"x-dead-letter-routing-key": routingKey}
		for k, v := range atLeastOnce {
			t[k] = v
		}
		if ttl > 0 {
			t["x-message-ttl"] = ttl
		}
		return t
	}
	want := []Queue{
		// The work queue parks what RabbitMQ 4's delivery limit would drop.
		{Name: "warren.orders", Args: with("warren.orders.dead", 0), Patterns: []string{"order.*", "payment.#"}},
		{Name: "warren.orders.retry.1s", Args: with("warren.orders", 1000)},
		{Name: "warren.orders.retry.30s", Args: with("warren.orders", 30000)},
		{Name: "warren.orders.dead", Args: amqp.Table{"x-queue-type": "quorum"}},
	}
	if !reflect.DeepEqual(queues, want) {
		t.Errorf("quorum plan:\n got %#v\nwant %#v", queues, want)
	}
}

func TestEqualDelaysShareOneTier(t *testing.T) {
	var b strings.Builder
	plan := For(testConfig(config.QueueClassic, time.Second, time.Second, time.Second, 90*time.Second))
	if err := plan.Write(&b); err != nil {
		t.Fatal(err)
	}
	want := `exchange events (topic, durable)
queue warren.orders (durable) x-queue-type="classic"
  bound to events with "order.*"
  bound to events with "payment.#"
queue warren.orders.retry.1s (durable) x-dead-letter-exchange="" x-dead-letter-routing-key="warren.orders" x-message-ttl=1000 x-queue-type="classic"
queue warren.orders.retry.1m30s (durable) x-dead-letter-exchange="" x-dead-letter-routing-key="warren.orders" x-message-ttl=90000 x-queue-type="classic"
queue warren.orders.dead (durable) x-queue-type="classic"
`
	if b.String() != want {
		t.Errorf("plan:\n%s\nwant:\n%s", b.String(), want)
	}
	for _, q := range plan.Queues {
		for k := range q.Args {
			if k == "x-queue-mode" || k == "x-queue-version" {
				t.Errorf("queue %s sets %s, which RabbitMQ 4.3 rejects", q.Name, k)
			}
		}
	}
}
