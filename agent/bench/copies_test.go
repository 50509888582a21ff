package bench

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	amqpbroker "github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/event"
)

// copyPublishers is how many copies are in flight at once, each publisher
// waiting for its confirm: the workers of the retry runs.
const copyPublishers = 64

// BenchmarkCopyHeaders measures what the broker alone pays to store one
// retry copy on the 1h tier of the retry runs: as the bare bridge
// publishes it (the original's properties, no headers, to the tier
// queue) and as warren does (event.Copy's headers of SPEC §5 and the
// publish tag, mandatory, through the tier's exchange), with 64
// publishers each waiting for its confirm, alternating which goes first.
// It prints the broker's CPU per copy and the ratio per round and their
// median. It is part of `make bench` and has no goal: it shows how much of
// the retry path's gap is the broker's, for headers the contract requires.
func BenchmarkCopyHeaders(b *testing.B) {
	n := envInt(b, "WARREN_BENCH_N", defaultBacklog)
	rounds := envInt(b, "WARREN_BENCH_ROUNDS", defaultRounds)
	e := newEnv(b)
	fmt.Printf("\ncopies: %d persistent copies to the retry tier, %d publishers, %d rounds\n", n, copyPublishers, rounds)
	var ratios []float64
	for range b.N {
		for r := range rounds {
			order := []string{"bare", "warren's"}
			if r%2 == 1 {
				slices.Reverse(order)
			}
			cost := map[string]float64{}
			for _, kind := range order {
				s, ok := e.measure(kind+" copies", func() sample { return sample{broker: e.copies(kind == "warren's", n)} })
				if !ok {
					continue
				}
				cost[kind] = s.broker
			}
			if len(cost) < 2 {
				continue
			}
			ratio := cost["warren's"] / cost["bare"]
			ratios = append(ratios, ratio)
			fmt.Printf("round %d: broker CPU per copy: bare %.1f µs, warren's %.1f µs, %.2f×\n", r+1, cost["bare"], cost["warren's"], ratio)
		}
	}
	fmt.Printf("warren's copy / bare copy, broker CPU (median of %d rounds): %.2f×\n", len(ratios), median(ratios))
	b.ReportMetric(median(ratios), "warren/bare_broker_cpu")
}

// copies publishes n copies of a backlog message to the empty tier and
// returns the broker's CPU per copy, in µs, from the first publish until
// the tier holds them all.
func (e *env) copies(headers bool, n int) float64 {
	e.purge()
	ch, err := e.pubConn.Channel()
	if err != nil {
		e.fail("open a channel: %v", err)
	}
	var publish func(*amqp.Delivery) error
	if headers {
		p, err := amqpbroker.NewPublisher(ch)
		if err != nil {
			ch.Close()
			e.fail("%v", err)
		}
		defer p.Close()
		publish = func(d *amqp.Delivery) error {
			ev := event.FromDelivery(d, time.Now())
			msg := event.Copy(d, ev, event.Outcome{Status: 503, Error: "HTTP 503: Service Unavailable"}, time.Time{})
			return p.Publish(e.b.Context(), e.tier, e.work, msg)
		}
	} else {
		publish = bareCopy(e, ch)
		defer ch.Close()
	}
	run := e.nextRun()
	b0 := e.brokerCPU()
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range copyPublishers {
		wg.Go(func() {
			for i := int(next.Add(1)); i <= n; i = int(next.Add(1)) {
				now := time.Now()
				d := &amqp.Delivery{
					ContentType: "application/json", DeliveryMode: amqp.Persistent, Timestamp: now,
					MessageId: fmt.Sprintf("bench-%d-%d", run, i), RoutingKey: routingKey, Body: body(run, i, now),
				}
				if err := publish(d); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		e.fail("publish a copy: %v", firstErr)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if got, _ := e.queue(e.tier); got == n {
			break
		}
		if time.Now().After(deadline) {
			e.fail("the retry tier does not hold the %d copies after a minute", n)
		}
	}
	return perMsg(e.brokerCPU()-b0, n)
}

// bareCopy is the bridge's copy: the original's properties and headers
// (none in the backlog), to the tier queue, confirmed.
func bareCopy(e *env, ch *amqp.Channel) func(*amqp.Delivery) error {
	if err := ch.Confirm(false); err != nil {
		e.fail("confirm mode: %v", err)
	}
	return func(d *amqp.Delivery) error {
		dc, err := ch.PublishWithDeferredConfirm("", e.tier, false, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, ContentType: d.ContentType, MessageId: d.MessageId,
			Timestamp: d.Timestamp, Headers: d.Headers, Body: d.Body,
		})
		if err != nil {
			return err
		}
		if !dc.Wait() {
			return fmt.Errorf("nacked")
		}
		return nil
	}
}
