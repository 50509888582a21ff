package engine

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/dedup"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/config"
)

// fakeStore refuses the first `refuse` copies with err, then takes them.
type fakeStore struct {
	mu     sync.Mutex
	refuse int
	err    error
	stored []string // routing keys of the copies taken
	tries  int
	before func() // called as each copy is published
}

func (f *fakeStore) publish(_ context.Context, _, key string, _ amqp.Publishing) error {
	if f.before != nil {
		f.before()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	if f.tries <= f.refuse {
		return f.err
	}
	f.stored = append(f.stored, key)
	return nil
}

// fakeAck records how a delivery was settled.
type fakeAck struct{ acks, nacks atomic.Int32 }

func (a *fakeAck) Ack(uint64, bool) error        { a.acks.Add(1); return nil }
func (a *fakeAck) Nack(uint64, bool, bool) error { a.nacks.Add(1); return nil }
func (a *fakeAck) Reject(uint64, bool) error     { a.nacks.Add(1); return nil }

// handleOnce runs one delivery through handle against an endpoint that
// always answers status, with copies going to store; no broker.
func handleOnce(t *testing.T, status int, store *fakeStore) (requests int32, ack *fakeAck) {
	t.Helper()
	return handleSent(t, status, store, nil)
}

// handleSent is handleOnce with handle's sent hook.
func handleSent(t *testing.T, status int, store *fakeStore, sent func()) (requests int32, ack *fakeAck) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n.Add(1)
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	defer func(d time.Duration) { holdFirst = d }(holdFirst)
	holdFirst = time.Millisecond
	cfg := config.Default()
	sc := config.Subscription{Name: "unit", URL: srv.URL, Events: []string{"#"}, Options: cfg.Defaults}
	sc.Retry.Delays = []time.Duration{time.Second}
	cfg.Subscriptions = []config.Subscription{sc}
	m := metrics.New()
	s := newSubscriber(&cfg, sc, "warren/test", dedup.New(0), slog.New(slog.NewTextHandler(io.Discard, nil)), m.For("unit"))
	t.Cleanup(s.client.Close)
	e := &Engine{cfg: &cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: m}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack = &fakeAck{}
	d := amqp.Delivery{Acknowledger: ack, DeliveryTag: 1, MessageId: "evt_unit", RoutingKey: "order.created",
		ContentType: "application/json", Body: []byte(`{}`)}
	s.handle(ctx, &env{copies: store, hard: ctx, e: e}, &d, sent)
	return n.Load(), ack
}

// TestCopyRefusedIsHeldNotResent: the broker refuses the retry copy three
// times (nacked); the endpoint still gets one request, and the original is
// acked once when the copy is finally taken.
func TestCopyRefusedIsHeldNotResent(t *testing.T) {
	store := &fakeStore{refuse: 3, err: broker.ErrNacked}
	requests, ack := handleOnce(t, http.StatusServiceUnavailable, store)
	if requests != 1 {
		t.Errorf("endpoint got %d requests, want 1: a refused copy must not re-send the event", requests)
	}
	if store.tries != 4 || len(store.stored) != 1 || store.stored[0] != "warren.unit" {
		t.Errorf("copy tried %d times, stored %v; want 4 tries and one copy routed to warren.unit", store.tries, store.stored)
	}
	if ack.acks.Load() != 1 || ack.nacks.Load() != 0 {
		t.Errorf("original acked %d, nacked %d times; want acked once", ack.acks.Load(), ack.nacks.Load())
	}
}

// TestDeliveredIsAckedWithoutCopy: a 2xx is acked, nothing published.
func TestDeliveredIsAckedWithoutCopy(t *testing.T) {
	store := &fakeStore{}
	requests, ack := handleOnce(t, http.StatusOK, store)
	if requests != 1 || store.tries != 0 || ack.acks.Load() != 1 {
		t.Errorf("requests %d, copies %d, acks %d; want 1, 0, 1", requests, store.tries, ack.acks.Load())
	}
}

// TestGoneParksThroughTheDeadQueue: a 410 is parked via the dead queue.
func TestGoneParksThroughTheDeadQueue(t *testing.T) {
	store := &fakeStore{}
	requests, ack := handleOnce(t, http.StatusGone, store)
	if requests != 1 || len(store.stored) != 1 || store.stored[0] != "warren.unit.dead" || ack.acks.Load() != 1 {
		t.Errorf("requests %d, copies %v, acks %d; want 1, [warren.unit.dead], 1", requests, store.stored, ack.acks.Load())
	}
}

// TestSlotFreedBeforeTheCopyIsStored: an attempt that answers with a copy
// (retry or parking) frees its concurrency slot before it waits for the
// broker, so that confirms are waited for beside the next requests. A
// delivered event needs no broker and frees nothing early, and a 410
// keeps its slot: the subscription pauses before it takes another.
func TestSlotFreedBeforeTheCopyIsStored(t *testing.T) {
	for _, tc := range []struct {
		status int
		freed  bool
	}{{http.StatusServiceUnavailable, true}, {http.StatusBadRequest, true}, {http.StatusGone, false}, {http.StatusOK, false}} {
		var freed atomic.Int32
		store := &fakeStore{before: func() {
			if tc.freed && freed.Load() != 1 {
				t.Errorf("HTTP %d: copy published with the slot freed %d times, want once before", tc.status, freed.Load())
			}
		}}
		_, ack := handleSent(t, tc.status, store, func() { freed.Add(1) })
		if got := freed.Load() == 1; got != tc.freed || ack.acks.Load() != 1 {
			t.Errorf("HTTP %d: slot freed %d times, original acked %d times; want freed early %v, acked once", tc.status, freed.Load(), ack.acks.Load(), tc.freed)
		}
	}
}
