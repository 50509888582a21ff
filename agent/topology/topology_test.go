package topology

import (
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
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

func TestMaxPriorityOnWorkQueueOnly(t *testing.T) {
	cfg := testConfig(config.QueueClassic, time.Second)
	cfg.Subscriptions[0].MaxPriority = 10
	queues := For(cfg).Queues
	if got := queues[0].Args["x-max-priority"]; got != int32(10) {
		t.Errorf("work queue x-max-priority = %#v, want int32(10)", got)
	}
	for _, q := range queues[1:] {
		if _, ok := q.Args["x-max-priority"]; ok {
			t.Errorf("queue %s has x-max-priority, want it on the work queue only", q.Name)
		}
	}
	cfg.Subscriptions[0].MaxPriority = 0
	if _, ok := For(cfg).Queues[0].Args["x-max-priority"]; ok {
		t.Error("x-max-priority set with max_priority 0")
	}
}

// TestMaxPriorityOnBroker declares a work queue with max_priority and checks
// that RabbitMQ hands out higher AMQP priorities first.
func TestMaxPriorityOnBroker(t *testing.T) {
	conn := brokertest.Dial(t)
	prefix := brokertest.Unique(t)
	cfg := testConfig(config.QueueClassic, time.Second)
	cfg.Broker.QueuePrefix, cfg.Broker.Exchange = prefix, prefix
	cfg.Subscriptions[0].MaxPriority = 10
	plan := For(cfg)
	t.Cleanup(func() {
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer ch.Close()
		for _, q := range plan.Queues {
			if _, err := ch.QueueDelete(q.Name, false, false, false); err != nil {
				t.Errorf("delete queue %s: %v", q.Name, err)
			}
		}
		if err := ch.ExchangeDelete(prefix, false, false); err != nil {
			t.Errorf("delete exchange %s: %v", prefix, err)
		}
	})
	if err := Apply(conn, plan); err != nil {
		t.Fatal(err)
	}

	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for _, p := range []uint8{1, 9, 5, 0} {
		conf, err := ch.PublishWithDeferredConfirmWithContext(t.Context(), prefix, "order.created", false, false,
			amqp.Publishing{Priority: p, Body: []byte{p}})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := conf.WaitContext(t.Context()); !ok || err != nil {
			t.Fatalf("publish priority %d: confirmed %v, %v", p, ok, err)
		}
	}
	var got []uint8
	for range 4 {
		d, ok, err := ch.Get(cfg.WorkQueue(cfg.Subscriptions[0]), true)
		if err != nil || !ok {
			t.Fatalf("get: %v, %v (got %v so far)", ok, err, got)
		}
		got = append(got, d.Priority)
	}
	if want := []uint8{9, 5, 1, 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("priorities in delivery order = %v, want %v", got, want)
	}
}
