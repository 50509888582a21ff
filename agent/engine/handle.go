package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/dedup"
	"github.com/warren-hq/warren/agent/delivery"
	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/journal"
	"github.com/warren-hq/warren/agent/logging"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/agent/rules"
	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
)

// store is how a copy reaches the broker: publish, then wait for the
// confirm. The engine's links implement it; unit tests fake it.
type store interface {
	publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error
}

// Hold-and-retry timings for a copy the broker would not take.
var (
	holdFirst = 100 * time.Millisecond
	holdMax   = 10 * time.Second
)

// handle settles one delivery: ack after a 2xx, after the subscription's
// rules filtered it out, or after the broker confirmed the copy that
// replaces it (retry, parking, or the id stamp). A copy the broker will not
// take is repaired where it can be and tried again with backoff while the
// original is held, so the endpoint never sees the event again at once.
// ctx ends waiting for the rate limiter and a slot (shutdown); env.hard
// ends the attempt and the holding. sent, when set, is called once the
// request is over and a copy is about to be stored.
func (s *subscriber) handle(ctx context.Context, env *env, d *amqp.Delivery, sent func()) {
	s.attempt(ctx, env, d, nil, sent)
}

// attempt is handle, and reports whether the event is done with (delivered,
// parked, filtered or skipped) rather than waiting for a retry or back in
// the queue. k binds the attempt to its key in an ordered subscription.
func (s *subscriber) attempt(ctx context.Context, env *env, d *amqp.Delivery, k *keyHooks, sent func()) bool {
	now := time.Now()
	ev := event.FromDelivery(d, now)
	// Facts about the message park it at once: no attempt, and nothing a
	// circuit breaker counts.
	if max := s.opts.MaxBodyBytes; max > 0 && int64(len(d.Body)) > int64(max) {
		return s.parkUnsent(env, d, &ev, now, fmt.Sprintf("body of %d bytes is over max_body_bytes (%s): raise it for this subscription or publish smaller events", len(d.Body), max), k)
	}
	var in *rules.Input
	if s.rules != nil || s.rulesErr != nil {
		in = rules.NewInput(ev, d.Headers)
		wanted, err := s.wants(in)
		if err != nil {
			return s.parkUnsent(env, d, &ev, now, err.Error(), k)
		}
		if !wanted {
			if !s.done(env, d, &ev, k) {
				return false
			}
			s.metrics.Filtered.Inc()
			env.record(s, &ev, 0, 0, metrics.OutcomeFiltered, "")
			s.logEvent(slog.LevelDebug, "filtered", &ev)
			return true
		}
	}
	if d.MessageId == "" {
		// Give the event an id of its own before anything is sent: derived
		// from the content, two equal publishes would be one event. In an
		// ordered subscription the stamped copy goes to the back of the
		// queue as its key's head, and the key is held until it is done,
		// so later events of the key wait behind it.
		msg := event.Stamp(d, ev)
		var hold func() error
		if k != nil {
			event.MarkHead(msg.Headers, k.key)
			hold = func() error { return k.hold(msg.MessageId) }
		}
		s.replace(env, d, &ev, "", s.work, msg, "stamped", hold)
		return false
	}
	dedupKey := dedup.Key{Subscription: s.name, Event: ev.ID}
	if !event.IsReplay(d) && s.seen.Contains(dedupKey) {
		if !s.done(env, d, &ev, k) {
			return false
		}
		s.metrics.DedupSkipped.Inc()
		s.logEvent(slog.LevelInfo, "duplicate of an event already delivered; acked without sending", &ev)
		return true
	}
	if in != nil && s.rules.HasTransform() {
		body, ok, err := s.rules.Transform(in)
		if err != nil {
			return s.parkUnsent(env, d, &ev, now, err.Error(), k)
		}
		if ok {
			ev.Body = body
			if s.opts.Format != config.FormatEnvelope {
				ev.ContentType = "application/json"
			}
		}
	}
	if s.limiter != nil {
		if err := s.limiter.Wait(ctx); err != nil {
			s.requeue(d, &ev, "shutting down")
			return false
		}
	}
	if err := env.e.slots.acquire(ctx, s.opts.Priority); err != nil {
		s.requeue(d, &ev, "shutting down")
		return false
	}
	if s.paused.Load() || ctx.Err() != nil {
		env.e.slots.release()
		s.requeue(d, &ev, "subscription stopping")
		return false
	}
	s.metrics.InFlight.Inc()
	res := s.client.Send(env.hard, s.endpoint, &ev, time.Now())
	s.metrics.InFlight.Dec()
	env.e.slots.release()
	if res.Status == 0 && env.hard.Err() != nil {
		s.requeue(d, &ev, "attempt cut short by shutdown")
		return false
	}
	dec := delivery.Decide(res, ev.Attempt, s.opts.Retry)
	if !res.Invalid {
		// Only an attempt that reached the endpoint says anything about it.
		s.metrics.Latency.Observe(res.Duration.Seconds())
		s.breaker.record(!dec.EndpointFailed)
	}
	attrs := []slog.Attr{slog.Int("status", res.Status), slog.Int64("duration_ms", res.Duration.Milliseconds())}
	switch dec.Action {
	case delivery.Ack:
		s.seen.Add(dedupKey)
		if !s.done(env, d, &ev, k) {
			return false
		}
		s.metrics.Delivered.Inc()
		env.record(s, &ev, res.Status, res.Duration, metrics.OutcomeDelivered, "")
		s.logEvent(slog.LevelInfo, "delivered", &ev, attrs...)
		return true
	case delivery.Retry:
		if sent != nil {
			sent()
		}
		msg := event.Copy(d, ev, event.Outcome{Status: res.Status, Error: lastError(dec, res)}, time.Time{})
		var hold func() error
		if k != nil {
			event.MarkHead(msg.Headers, k.key)
			hold = func() error { return k.hold(ev.ID) }
		}
		if s.replace(env, d, &ev, s.cfg.RetryQueue(dec.Delay), s.work, msg, "retry", hold) {
			s.metrics.Retried.Inc()
			env.record(s, &ev, res.Status, res.Duration, metrics.OutcomeRetried, res.Err.Error())
			s.logEvent(slog.LevelWarn, "retry scheduled", &ev, append(attrs, logging.Err(res.Err), slog.String("delay", dec.Delay.String()))...)
		}
		return false
	}
	if sent != nil && !dec.Pause {
		sent() // a 410 frees nothing: the subscription pauses after it
	}
	done := s.park(env, d, &ev, now, res.Status, lastError(dec, res), k)
	if done {
		env.record(s, &ev, res.Status, res.Duration, metrics.OutcomeParked, lastError(dec, res))
		s.logEvent(slog.LevelError, "parked", &ev, append(attrs, logging.Err(res.Err), slog.String("reason", dec.Reason))...)
	}
	if dec.Pause && !s.paused.Swap(true) {
		s.metrics.Paused.Set(1)
		s.pause <- struct{}{}
		env.announce(KeyPaused, OperatorEvent{Subscription: s.name, Reason: dec.Reason, At: now.UTC()})
	}
	return done
}

// wants applies the subscription's api_version and filter.
func (s *subscriber) wants(in *rules.Input) (bool, error) {
	if s.rulesErr != nil {
		return false, s.rulesErr
	}
	return s.rules.Wants(in)
}

// parkUnsent parks an event that was never sent, for a reason about the
// message itself.
func (s *subscriber) parkUnsent(env *env, d *amqp.Delivery, ev *event.Event, now time.Time, reason string, k *keyHooks) bool {
	if !s.park(env, d, ev, now, 0, reason, k) {
		return false
	}
	env.record(s, ev, 0, 0, metrics.OutcomeParked, reason)
	s.logEvent(slog.LevelError, "parked", ev, slog.String("reason", reason))
	return true
}

// lastError is what a copy records of the attempt: the reason and the
// answer, with the start of the response body (it stays in this
// subscription's own queues).
func lastError(dec delivery.Decision, res delivery.Result) string {
	msg := res.Err.Error()
	if dec.Reason != "" && dec.Reason != msg {
		msg = dec.Reason + ": " + msg
	}
	return msg
}

// park moves the event to the dead queue with reason and announces it.
// Operator events carry the status and the reason, never the response
// body: they may reach other endpoints.
func (s *subscriber) park(env *env, d *amqp.Delivery, ev *event.Event, now time.Time, status int, reason string, k *keyHooks) bool {
	msg := event.Copy(d, *ev, event.Outcome{Status: status, Error: reason}, now)
	var release func() error
	if k != nil {
		release = k.release // a parked event releases its key
	}
	if !s.replace(env, d, ev, "", s.dead, msg, "parking", release) {
		return false
	}
	s.metrics.Parked.Inc()
	announced := reason
	if status != 0 {
		announced = fmt.Sprintf("HTTP %d after %d attempts", status, ev.Attempt)
	}
	env.announce(KeyParked, OperatorEvent{
		Subscription: s.name, EventID: ev.ID, Type: ev.Type, Attempts: ev.Attempt,
		LastStatus: status, Reason: announced, At: now.UTC(),
	})
	return true
}

// replace stores msg through exchange with routing key, then (after
// beforeAck, when set, succeeded) acks the original. While the broker will
// not take the copy it holds the original and tries again with backoff
// (see persist); only shutdown gives up and requeues. It reports whether
// the original was replaced.
func (s *subscriber) replace(env *env, d *amqp.Delivery, ev *event.Event, exchange, key string, msg amqp.Publishing, what string, beforeAck func() error) bool {
	stored := s.persist(env, ev, "store the "+what+" copy", func() error {
		return env.copies.publish(env.hard, exchange, key, msg)
	})
	// A step of its own: retrying it must not store the copy again.
	if stored && beforeAck != nil {
		stored = s.persist(env, ev, "update the event's key after its "+what+" copy", beforeAck)
	}
	if !stored {
		s.requeue(d, ev, "could not store the "+what+" copy before shutdown")
		return false
	}
	ack(d, s.log)
	return true
}

// persist runs step until it succeeds, with backoff, while the original
// is held unacked, so that the endpoint never sees the event again at
// once. A copy that was unroutable, or whose tier exchange is gone (404),
// means an operator deleted a queue: this subscription's queues and the
// tiers are declared anew. Only shutdown (env.hard) gives up: false.
func (s *subscriber) persist(env *env, ev *event.Event, what string, step func() error) bool {
	wait := holdFirst
	for try := 1; ; try++ {
		err := step()
		if err == nil {
			if try > 1 {
				s.logEvent(slog.LevelInfo, "could "+what+" after holding the original", ev, slog.Int("tries", try))
			}
			return true
		}
		if env.hard.Err() != nil {
			return false
		}
		if try == 1 {
			s.logEvent(slog.LevelWarn, "could not "+what+"; holding the original and trying again", ev, logging.Err(err))
		}
		if errors.Is(err, broker.ErrUnroutable) || isNotFound(err) {
			s.repair(env)
		}
		select {
		case <-env.hard.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, holdMax)
	}
}

// done acks an event that is done with (delivered, filtered, skipped). In
// an ordered subscription the key's next event becomes its head first, so
// that a crash in between leaves a head to deliver rather than a key held
// for good.
func (s *subscriber) done(env *env, d *amqp.Delivery, ev *event.Event, k *keyHooks) bool {
	if k != nil && !s.persist(env, ev, "release the event's key", k.release) {
		s.requeue(d, ev, "could not release the event's key before shutdown")
		return false
	}
	ack(d, s.log)
	return true
}

// repair redeclares the queues a copy of this subscription may go to.
func (s *subscriber) repair(env *env) {
	if env.links == nil {
		return
	}
	cfg, _ := env.e.current()
	plan := topology.Shared(cfg)
	plan.Queues = topology.Subscription(s.cfg, s.opts)
	if err := env.e.declare(env.hard, env.links, plan); err != nil {
		s.log.Warn("could not redeclare the subscription's queues", logging.Err(err))
	}
	if k := s.keys.Load(); k != nil {
		if err := k.redeclareHeld(); err != nil {
			s.log.Warn("could not redeclare the held keys' queues", logging.Err(err))
		}
	}
}

func (s *subscriber) requeue(d *amqp.Delivery, ev *event.Event, why string) {
	s.metrics.Requeued.Inc()
	nack(d, s.log)
	s.logEvent(slog.LevelWarn, why+"; requeued", ev)
}

// logEvent logs one line about ev: the event's attributes are added here,
// not with Logger.With, which would format them for every message even when
// the line is not written.
func (s *subscriber) logEvent(level slog.Level, msg string, ev *event.Event, attrs ...slog.Attr) {
	ctx := context.Background()
	if !s.log.Enabled(ctx, level) {
		return
	}
	all := make([]slog.Attr, 0, 3+len(attrs))
	all = append(all, slog.String("event_id", ev.ID), slog.String("type", ev.Type), slog.Int("attempt", ev.Attempt))
	s.log.LogAttrs(ctx, level, msg, append(all, attrs...)...)
}

// isNotFound tells a copy refused because its exchange is gone.
func isNotFound(err error) bool {
	var amqpErr *amqp.Error
	return errors.As(err, &amqpErr) && amqpErr.Code == amqp.NotFound
}

var _ store = (*links)(nil)

// record appends the outcome to the P.attempts stream when the journal is
// on; it never blocks.
func (env *env) record(s *subscriber, ev *event.Event, status int, took time.Duration, outcome, errText string) {
	if env.recorder == nil {
		return
	}
	env.recorder.Record(journal.Attempt{
		Subscription: s.name, EventID: ev.ID, Type: ev.Type, Attempt: ev.Attempt,
		Status: status, DurationMS: took.Milliseconds(), Outcome: outcome, Error: errText, At: time.Now().UTC(),
	})
}
