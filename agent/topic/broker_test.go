package topic

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
)

// TestMatchAgreesWithBroker binds one queue per pattern of the table to a
// real topic exchange, publishes every key of the table, and checks that each
// queue received exactly the keys Match predicts.
func TestMatchAgreesWithBroker(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	var patterns, keys []string
	for _, c := range cases {
		if !slices.Contains(patterns, c.pattern) {
			patterns = append(patterns, c.pattern)
		}
		if !slices.Contains(keys, c.key) {
			keys = append(keys, c.key)
		}
	}

	conn := brokertest.Dial(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	exchange := brokertest.Unique(t)
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic,
		false, // durable
		false, // auto-delete
		false, // internal
		false, // no-wait
		nil,
	); err != nil {
		t.Fatal(err)
	}
	var queues []string
	// A fresh channel: a failed assertion may have closed ch.
	t.Cleanup(func() {
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer ch.Close()
		for _, q := range queues {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				t.Errorf("cleanup: delete queue %s: %v", q, err)
			}
		}
		if err := ch.ExchangeDelete(exchange, false, false); err != nil {
			t.Errorf("cleanup: delete exchange %s: %v", exchange, err)
		}
	})

	for _, p := range patterns {
		q, err := ch.QueueDeclare("",
			false, // durable
			false, // auto-delete
			true,  // exclusive
			false, // no-wait
			nil,
		)
		if err != nil {
			t.Fatal(err)
		}
		queues = append(queues, q.Name)
		if err := ch.QueueBind(q.Name, p, exchange, false, nil); err != nil {
			t.Fatalf("bind %q: %v", p, err)
		}
	}

	// Once the broker confirms a message it is in every queue it routes
	// to, so the reads below see everything.
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	prefix := exchange + "-"
	for i, k := range keys {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, k,
			false, // mandatory
			false, // immediate
			amqp.Publishing{MessageId: prefix + strconv.Itoa(i)},
		)
		if err != nil {
			t.Fatalf("publish %q: %v", k, err)
		}
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("publish %q: confirmed %v, %v", k, ok, err)
		}
	}

	for i, p := range patterns {
		got := make(map[string]bool)
		for {
			d, ok, err := ch.Get(queues[i], true /* auto-ack */)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			id, ours := strings.CutPrefix(d.MessageId, prefix)
			n, err := strconv.Atoi(id)
			if !ours || err != nil || n < 0 || n >= len(keys) || keys[n] != d.RoutingKey {
				t.Fatalf("pattern %q: unexpected message %q with key %q", p, d.MessageId, d.RoutingKey)
			}
			got[d.RoutingKey] = true
		}
		for _, k := range keys {
			if want := Match(p, k); got[k] != want {
				t.Errorf("pattern %q, key %q: broker routed %v, Match says %v", p, k, got[k], want)
			}
		}
	}
	t.Logf("checked %d patterns × %d keys against the broker", len(patterns), len(keys))
}
