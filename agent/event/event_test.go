package event

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

var published = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// firstDelivery is a message as an application publishes it.
func firstDelivery() *amqp.Delivery {
	return &amqp.Delivery{
		MessageId:   "evt_1",
		RoutingKey:  "order.created",
		Exchange:    "events",
		Timestamp:   published,
		ContentType: "application/json",
		Headers:     amqp.Table{"api_version": "2024-01-01", "tenant": "eu"},
		Body:        bytes.Repeat([]byte("x"), 256),
	}
}

// retriedDelivery is a copy coming back from a retry tier.
func retriedDelivery() *amqp.Delivery {
	d := firstDelivery()
	d.RoutingKey = "bench.retry.5s"
	d.Exchange = ""
	d.Headers = amqp.Table{
		"api_version":         "2024-01-01",
		"tenant":              "eu",
		HeaderAttempt:         int32(2),
		HeaderRoutingKey:      "order.created",
		HeaderFirstAttemptAt:  "2026-01-02T03:04:06.123456789Z",
		HeaderLastStatus:      int32(503),
		HeaderLastError:       "HTTP 503",
		"x-death":             []any{amqp.Table{"count": int64(1)}},
		"x-first-death-queue": "q",
		"x-last-death-reason": "expired",
	}
	return d
}

func TestFromDelivery(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 5, 0, 0, time.UTC)
	ev := FromDelivery(retriedDelivery(), now)
	want := Event{
		ID: "evt_1", Type: "order.created", CreatedAt: published, Attempt: 3,
		FirstAttemptAt: time.Date(2026, 1, 2, 3, 4, 6, 123456789, time.UTC),
		ContentType:    "application/json", APIVersion: "2024-01-01", Body: retriedDelivery().Body,
		Headers: retriedDelivery().Headers,
	}
	if !reflect.DeepEqual(ev, want) {
		t.Errorf("FromDelivery =\n%+v\nwant\n%+v", ev, want)
	}

	d := firstDelivery()
	d.MessageId, d.Timestamp = "", time.Time{}
	ev = FromDelivery(d, now)
	if ev.Attempt != 1 || !ev.FirstAttemptAt.Equal(now) || !ev.CreatedAt.Equal(now) || ev.ID != ID("events", "order.created", time.Time{}, d.Body) {
		t.Errorf("FromDelivery of a bare message = %+v", ev)
	}
}

func TestCopy(t *testing.T) {
	d := retriedDelivery()
	d.Expiration = "60000"
	d.Priority, d.CorrelationId, d.AppId = 3, "corr", "shop"
	ev := FromDelivery(d, time.Now())
	parked := time.Date(2026, 1, 2, 3, 6, 0, 500, time.UTC)
	p := Copy(d, ev, Outcome{Status: 0, Error: "timeout"}, parked)
	want := amqp.Table{
		"api_version":        "2024-01-01",
		"tenant":             "eu",
		HeaderAttempt:        int32(3),
		HeaderRoutingKey:     "order.created",
		HeaderFirstAttemptAt: "2026-01-02T03:04:06.123456789Z",
		HeaderLastStatus:     int32(0),
		HeaderLastError:      "timeout",
		HeaderParkedAt:       "2026-01-02T03:06:00.0000005Z",
	}
	if !reflect.DeepEqual(p.Headers, want) {
		t.Errorf("headers =\n%v\nwant\n%v", p.Headers, want)
	}
	if p.Expiration != "" || p.MessageId != "evt_1" || p.DeliveryMode != amqp.Persistent || p.Priority != 3 ||
		p.CorrelationId != "corr" || p.AppId != "shop" || !p.Timestamp.Equal(published) || !bytes.Equal(p.Body, d.Body) {
		t.Errorf("properties = %+v", p)
	}
	if _, ok := d.Headers["x-death"]; !ok {
		t.Error("Copy changed the delivery's headers")
	}

	retry := Copy(d, ev, Outcome{Status: 503, Error: "HTTP 503"}, time.Time{})
	if _, ok := retry.Headers[HeaderParkedAt]; ok {
		t.Error("a retry copy has warren-parked-at")
	}
}

func BenchmarkFromDelivery(b *testing.B) {
	now := time.Now()
	for _, tc := range []struct {
		name string
		d    *amqp.Delivery
	}{{"first", firstDelivery()}, {"retried", retriedDelivery()}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				FromDelivery(tc.d, now)
			}
		})
	}
}

func BenchmarkCopy(b *testing.B) {
	d := firstDelivery()
	ev := FromDelivery(d, time.Now())
	o := Outcome{Status: 503, Error: "HTTP 503"}
	b.ReportAllocs()
	for b.Loop() {
		Copy(d, ev, o, time.Time{})
	}
}

// TestBrokerDeadLetteredKeepsIdentity: a message the broker dead-lettered
// by itself (a quorum delivery limit) has no warren headers; dead list
// reads its type from the oldest x-death entry and dead replay keeps its id.
func TestBrokerDeadLetteredKeepsIdentity(t *testing.T) {
	d := &amqp.Delivery{
		MessageId:  "evt_limit",
		RoutingKey: "warren.orders.dead",
		Headers: amqp.Table{"x-death": []any{
			amqp.Table{"queue": "warren.orders", "reason": "delivery_limit", "routing-keys": []any{"order.created"}},
		}},
		Body: []byte(`{}`),
	}
	p := ReadParked(d)
	if p.ID != "evt_limit" || p.Type != "order.created" {
		t.Errorf("dead list shows %s %s, want evt_limit order.created", p.ID, p.Type)
	}
	replay := Replay(d, FromDelivery(d, time.Now()))
	if replay.MessageId != "evt_limit" || replay.Headers[HeaderRoutingKey] != "order.created" {
		t.Errorf("dead replay sends id %q, type %v; want evt_limit, order.created", replay.MessageId, replay.Headers[HeaderRoutingKey])
	}
	if _, ok := replay.Headers["x-death"]; ok {
		t.Error("replay keeps x-death")
	}
}

// TestReplayKeepsTheMarkOfAHeadNobodyParked: a key's head that the broker
// dead-lettered released nothing, so dead replay sends it back as the
// head; a copy warren parked released its key and heads nothing, even one
// parked by a version that left the mark on.
func TestReplayKeepsTheMarkOfAHeadNobodyParked(t *testing.T) {
	xDeath := []any{amqp.Table{"queue": "warren.ledger", "reason": "delivery_limit", "routing-keys": []any{"account.updated"}}}
	for name, c := range map[string]struct {
		headers amqp.Table
		head    bool
	}{
		"dead-lettered by the broker": {amqp.Table{HeaderKeyHead: true, HeaderHeldKey: "acct_1", "x-death": xDeath}, true},
		"parked, mark left on":        {amqp.Table{HeaderKeyHead: true, HeaderParkedAt: "2026-01-01T00:00:00Z", "x-death": xDeath}, false},
		"no x-death":                  {amqp.Table{HeaderKeyHead: true, HeaderHeldKey: "acct_1"}, false},
	} {
		d := &amqp.Delivery{MessageId: "evt_head", RoutingKey: "warren.ledger.dead", Headers: c.headers, Body: []byte(`{}`)}
		replay := Replay(d, FromDelivery(d, time.Now()))
		if got := IsKeyHead(&amqp.Delivery{Headers: replay.Headers}); got != c.head {
			t.Errorf("%s: replay is a head: %v, want %v", name, got, c.head)
		}
	}
	head := &amqp.Delivery{MessageId: "evt_head", Headers: amqp.Table{HeaderKeyHead: true, HeaderHeldKey: "acct_1", "x-death": xDeath}, Body: []byte(`{}`)}
	if IsKeyHead(&amqp.Delivery{Headers: Stamp(head, FromDelivery(head, time.Now())).Headers}) {
		t.Error("an id stamp keeps a head mark")
	}
}

// TestAttemptCountCannotOverflow: a foreign warren-attempt at the top of
// int64 must not wrap into a negative attempt (which would index the
// retry schedule out of range and crash).
func TestAttemptCountCannotOverflow(t *testing.T) {
	for _, v := range []any{int64(9223372036854775807), "9223372036854775807", int32(-5)} {
		ev := FromDelivery(&amqp.Delivery{MessageId: "evt", Headers: amqp.Table{HeaderAttempt: v}}, time.Now())
		if ev.Attempt != 1 {
			t.Errorf("warren-attempt %v gives attempt %d, want 1", v, ev.Attempt)
		}
	}
}

// TestMoveKeepsTheEvent: an event moved to a held key's queue and back
// travels through the default exchange, whose routing key is a queue's
// name. At the other end it is the same event: type, id, attempt count.
func TestMoveKeepsTheEvent(t *testing.T) {
	for name, d := range map[string]*amqp.Delivery{"first": firstDelivery(), "retried": retriedDelivery()} {
		before := FromDelivery(d, published)
		p := Move(d, before)
		moved := &amqp.Delivery{MessageId: p.MessageId, RoutingKey: "bench.orders.held.0123456789abcdef", Timestamp: p.Timestamp, Headers: p.Headers, Body: p.Body}
		after := FromDelivery(moved, published)
		if after.ID != before.ID || after.Type != before.Type || after.Attempt != before.Attempt {
			t.Errorf("%s: moved event is %s %s attempt %d, want %s %s attempt %d", name, after.ID, after.Type, after.Attempt, before.ID, before.Type, before.Attempt)
		}
	}
}

// TestKeyHeadMark: the head mark is true, as older versions read it, and
// the key beside it ("" included); an older version's mark names none.
func TestKeyHeadMark(t *testing.T) {
	for _, key := range []string{"acct_1", ""} {
		h := amqp.Table{}
		MarkHead(h, key)
		d := &amqp.Delivery{Headers: h}
		if got, named := HeldKey(d); !IsKeyHead(d) || !named || got != key || h[HeaderKeyHead] != true {
			t.Errorf("marked the head of %q: head %v, key %q named %v, mark %v", key, IsKeyHead(d), got, named, h[HeaderKeyHead])
		}
		Unmark(h)
		if IsKeyHead(d) || len(h) != 0 {
			t.Errorf("unmarked, headers %v", h)
		}
	}
	older := &amqp.Delivery{Headers: amqp.Table{HeaderKeyHead: true}}
	if _, named := HeldKey(older); !IsKeyHead(older) || named {
		t.Error("an older version's mark is not a head that names no key")
	}
	notHead := &amqp.Delivery{Headers: amqp.Table{HeaderKeyHead: false, HeaderHeldKey: "acct_1"}}
	if _, named := HeldKey(notHead); IsKeyHead(notHead) || named {
		t.Error("a key without the mark makes a head")
	}
}
