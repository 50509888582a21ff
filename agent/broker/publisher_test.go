package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/internal/brokertest"
)

func newPublisher(t *testing.T) (*broker.Publisher, *amqp.Channel) {
	t.Helper()
	conn := brokertest.Dial(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := broker.NewPublisher(ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	admin, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return pub, admin
}

// TestPublishReportsEachMessagesFate mixes routable and unroutable
// publishes from many goroutines, all with one message_id as when one event
// fans out to several subscriptions: exactly the unroutable ones must fail,
// each matched to its own publish, and every routable one must be stored.
// The queue is durable so that routed publishes are confirmed only after
// the disk write, while unroutable ones come back at once.
func TestPublishReportsEachMessagesFate(t *testing.T) {
	pub, admin := newPublisher(t)
	queue := brokertest.Unique(t)
	if _, err := admin.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.QueueDelete(queue, false, false, false) })

	const n = 400
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			key := queue
			if i%3 == 0 {
				key = queue + ".missing"
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			errs[i] = pub.Publish(ctx, "", key, amqp.Publishing{MessageId: "evt_shared", Body: []byte("x")})
		})
	}
	wg.Wait()
	stored := 0
	for i, err := range errs {
		switch {
		case i%3 == 0 && !errors.Is(err, broker.ErrUnroutable):
			t.Errorf("unroutable publish %d: %v, want ErrUnroutable", i, err)
		case i%3 != 0 && err != nil:
			t.Errorf("routable publish %d: %v", i, err)
		case i%3 != 0:
			stored++
		}
	}
	q, err := admin.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != stored {
		t.Errorf("queue holds %d messages, %d publishes were confirmed", q.Messages, stored)
	}
}

func TestPublishAfterChannelClosedFails(t *testing.T) {
	pub, _ := newPublisher(t)
	pub.Close()
	err := pub.Publish(context.Background(), "", "any", amqp.Publishing{MessageId: "m", Body: []byte("x")})
	if err == nil {
		t.Fatal("publish on a closed publisher succeeded")
	}
}
