package topology

import (
	"reflect"
	"slices"
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
	plan := For(testConfig(config.QueueQuorum, time.Second, 30*time.Second))
	atLeastOnce := func(extra amqp.Table) amqp.Table {
		t := amqp.Table{
			"x-queue-type":           "quorum",
			"x-dead-letter-exchange": "",
			"x-dead-letter-strategy": "at-least-once",
			"x-overflow":             "reject-publish",
		}
		for k, v := range extra {
			t[k] = v
		}
		return t
	}
	want := []Queue{
		// The work queue parks what RabbitMQ 4's delivery limit would drop.
		{Name: "warren.orders", Args: atLeastOnce(amqp.Table{"x-dead-letter-routing-key": "warren.orders.dead"}), Patterns: []string{"order.*", "payment.#"}},
		{Name: "warren.orders.dead", Args: amqp.Table{"x-queue-type": "quorum"}},
	}
	if !reflect.DeepEqual(plan.Queues, want) {
		t.Errorf("quorum queues:\n got %#v\nwant %#v", plan.Queues, want)
	}
	// Tiers have no routing key of their own: an expired copy goes back to
	// the work queue its routing key names.
	wantTiers := []Queue{
		{Name: "warren.retry.1s", Args: atLeastOnce(amqp.Table{"x-message-ttl": int64(1000)})},
		{Name: "warren.retry.30s", Args: atLeastOnce(amqp.Table{"x-message-ttl": int64(30000)})},
	}
	if !reflect.DeepEqual(plan.Tiers, wantTiers) {
		t.Errorf("quorum tiers:\n got %#v\nwant %#v", plan.Tiers, wantTiers)
	}
}

func TestTiersAreSharedAndEqualDelaysShareOne(t *testing.T) {
	cfg := testConfig(config.QueueClassic, time.Second, time.Second, time.Second, 90*time.Second)
	other := cfg.Subscriptions[0]
	other.Name, other.Events = "refunds", []string{"refund.#"}
	other.Retry.Delays = []time.Duration{time.Second, 10 * time.Second}
	cfg.Subscriptions = append(cfg.Subscriptions, other)
	var b strings.Builder
	plan := For(cfg)
	if err := plan.Write(&b); err != nil {
		t.Fatal(err)
	}
	want := `exchange events (topic, durable)
exchange warren.retry.1s (fanout, durable)
queue warren.retry.1s (durable) x-dead-letter-exchange="" x-message-ttl=1000 x-queue-type="classic"
  bound to warren.retry.1s
exchange warren.retry.10s (fanout, durable)
queue warren.retry.10s (durable) x-dead-letter-exchange="" x-message-ttl=10000 x-queue-type="classic"
  bound to warren.retry.10s
exchange warren.retry.1m30s (fanout, durable)
queue warren.retry.1m30s (durable) x-dead-letter-exchange="" x-message-ttl=90000 x-queue-type="classic"
  bound to warren.retry.1m30s
queue warren.orders (durable) x-queue-type="classic"
  bound to events with "order.*"
  bound to events with "payment.#"
queue warren.orders.dead (durable) x-queue-type="classic"
queue warren.refunds (durable) x-queue-type="classic"
  bound to events with "refund.#"
queue warren.refunds.dead (durable) x-queue-type="classic"
`
	if b.String() != want {
		t.Errorf("plan:\n%s\nwant:\n%s", b.String(), want)
	}
	for _, q := range append(plan.Tiers, plan.Queues...) {
		for k := range q.Args {
			if k == "x-queue-mode" || k == "x-queue-version" {
				t.Errorf("queue %s sets %s, which RabbitMQ 4.3 rejects", q.Name, k)
			}
		}
	}
}

func TestJournalPlan(t *testing.T) {
	cfg := testConfig(config.QueueClassic, time.Second)
	if p := For(cfg); slices.ContainsFunc(p.Queues, Queue.IsStream) {
		t.Fatalf("plan without broker.journal has streams: %+v", p.Queues)
	}
	cfg.Broker.Journal = &config.Journal{MaxAge: 168 * time.Hour, MaxBytes: 10 * config.GiB}
	var b strings.Builder
	if err := For(cfg).Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`stream warren.journal (durable) x-max-age="7D" x-max-length-bytes=10737418240 x-queue-type="stream" x-stream-max-segment-size-bytes=500000000` + "\n" +
			`  bound to events with "#"` + "\n",
		`stream warren.attempts (durable) x-max-age="7D"`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("plan does not contain\n%s\ngot:\n%s", want, b.String())
		}
	}
	if n := strings.Count(b.String(), `with "#"`); n != 1 {
		t.Errorf("%d bindings with \"#\", want 1 (the journal; attempts is not bound):\n%s", n, b.String())
	}
}

func TestStreamArgs(t *testing.T) {
	for _, tc := range []struct {
		age     time.Duration
		bytes   config.ByteSize
		maxAge  string
		segment int64
	}{
		{36 * time.Hour, config.MiB, "36h", int64(config.MiB) / 10},
		{90 * time.Second, 100, "90s", 64 * 1024},
		{5 * time.Minute, 10 * config.GiB, "5m", 500_000_000},
	} {
		args := StreamArgs(config.Journal{MaxAge: tc.age, MaxBytes: tc.bytes})
		if args["x-max-age"] != tc.maxAge || args["x-stream-max-segment-size-bytes"] != tc.segment {
			t.Errorf("StreamArgs(%s, %s) = %v, want x-max-age %q, segment %d", tc.age, tc.bytes, args, tc.maxAge, tc.segment)
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
		for _, q := range append(plan.Tiers, plan.Queues...) {
			if _, err := ch.QueueDelete(q.Name, false, false, false); err != nil {
				t.Errorf("delete queue %s: %v", q.Name, err)
			}
		}
		for _, q := range plan.Tiers {
			if err := ch.ExchangeDelete(q.Name, false, false); err != nil {
				t.Errorf("delete exchange %s: %v", q.Name, err)
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
