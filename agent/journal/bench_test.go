package journal_test

import (
	"context"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
)

// BenchmarkJournalCost measures what the journal costs the application:
// confirmed, persistent 256-byte publishes to the exchange, pipelined 256
// at a time, with one work queue bound, without and with the journal stream
// bound beside it (the broker then writes every event twice). Compare the
// msg/s of the two:
//
//	go test -run '^$' -bench JournalCost -benchtime 20000x ./agent/journal/
func BenchmarkJournalCost(b *testing.B) {
	for _, withJournal := range []bool{false, true} {
		name := "journal=off"
		if withJournal {
			name = "journal=on"
		}
		b.Run(name, func(b *testing.B) { benchPublish(b, withJournal) })
	}
}

func benchPublish(b *testing.B, withJournal bool) {
	conn := brokertest.Dial(b)
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	prefix := brokertest.Unique(b)
	exchange, work, stream := prefix, prefix+".work", prefix+".journal"
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	must(ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil))
	_, err = ch.QueueDeclare(work, true, false, false, false, nil)
	must(err)
	must(ch.QueueBind(work, "#", exchange, false, nil))
	if withJournal {
		_, err = ch.QueueDeclare(stream, true, false, false, false,
			topology.StreamArgs(config.Journal{MaxAge: 3600e9, MaxBytes: config.GiB}))
		must(err)
		must(ch.QueueBind(stream, "#", exchange, false, nil))
	}
	b.Cleanup(func() {
		ch.QueueDelete(work, false, false, false)
		ch.QueueDelete(stream, false, false, false)
		ch.ExchangeDelete(exchange, false, false)
		ch.Close()
	})

	pub, err := conn.Channel()
	must(err)
	must(pub.Confirm(false))
	defer pub.Close()
	msg := amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/json", Body: make([]byte, 256)}
	ctx := context.Background()
	pending := make([]*amqp.DeferredConfirmation, 0, 256)
	wait := func() {
		for _, dc := range pending {
			if ok, err := dc.WaitContext(ctx); !ok || err != nil {
				b.Fatalf("not confirmed: %v", err)
			}
		}
		pending = pending[:0]
	}
	b.ResetTimer()
	for range b.N {
		if len(pending) == cap(pending) {
			wait()
		}
		dc, err := pub.PublishWithDeferredConfirmWithContext(ctx, exchange, "order.created", false, false, msg)
		must(err)
		pending = append(pending, dc)
	}
	wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
}
