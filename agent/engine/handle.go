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
// ends the attempt and the holding.
func (s *subscriber) handle(ctx context.Context, env *env, d *amqp.Delivery) {
	now := time.Now()
	ev := event.FromDelivery(d, now)
	// Facts about the message park it at once: no attempt, and nothing a
	// circuit breaker counts.
	if max := s.opts.MaxBodyBytes; max > 0 && int64(len(d.Body)) > int64(max) {
		s.parkUnsent(env, d, &ev, now, fmt.Sprintf("body of %d bytes is over max_body_bytes (%s): raise it for this subscription or publish smaller events", len(d.Body), max))
		return
	}
	var in *rules.Input
	if s.rules != nil || s.rulesErr != nil {
		in = rules.NewInput(ev, d.Headers)
		wanted, err := s.wants(in)
		if err != nil {
			s.parkUnsent(env, d, &ev, now, err.Error())
			return
		}
		if !wanted {
			ack(d, s.log)
			s.metrics.Filtered.Inc()
			env.record(s, &ev, 0, 0, metrics.OutcomeFiltered, "")
			s.logEvent(slog.LevelDebug, "filtered", &ev)
			return
		}
	}
	if d.MessageId == "" {
		// Give the event an id of its own before anything is sent: derived
		// from the content, two equal publishes would be one event.
		s.replace(env, d, &ev, "", s.work, event.Stamp(d, ev), "stamped")
		return
	}
	dedupKey := dedup.Key{Subscription: s.name, Event: ev.ID}
	if !event.IsReplay(d) && s.seen.Contains(dedupKey) {
		ack(d, s.log)
		s.metrics.DedupSkipped.Inc()
		s.logEvent(slog.LevelInfo, "duplicate of an event already delivered; acked without sending", &ev)
		return
	}
	if in != nil && s.rules.HasTransform() {
		body, ok, err := s.rules.Transform(in)
		if err != nil {
			s.parkUnsent(env, d, &ev, now, err.Error())
			return
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
			return
		}
	}
	if err := env.e.slots.acquire(ctx, s.opts.Priority); err != nil {
		s.requeue(d, &ev, "shutting down")
		return
	}
	if s.paused.Load() || ctx.Err() != nil {
		env.e.slots.release()
		s.requeue(d, &ev, "subscription stopping")
		return
	}
	s.metrics.InFlight.Inc()
	res := s.client.Send(env.hard, s.endpoint, &ev, time.Now())
	s.metrics.InFlight.Dec()
	env.e.slots.release()
	if res.Status == 0 && env.hard.Err() != nil {
		s.requeue(d, &ev, "attempt cut short by shutdown")
		return
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
		ack(d, s.log)
		s.metrics.Delivered.Inc()
		env.record(s, &ev, res.Status, res.Duration, metrics.OutcomeDelivered, "")
		s.logEvent(slog.LevelInfo, "delivered", &ev, attrs...)
		return
	case delivery.Retry:
		msg := event.Copy(d, ev, event.Outcome{Status: res.Status, Error: lastError(dec, res)}, time.Time{})
		if s.replace(env, d, &ev, s.tiers[dec.Delay], s.work, msg, "retry") {
			s.metrics.Retried.Inc()
			env.record(s, &ev, res.Status, res.Duration, metrics.OutcomeRetried, res.Err.Error())
			s.logEvent(slog.LevelWarn, "retry scheduled", &ev, append(attrs, logging.Err(res.Err), slog.String("delay", dec.Delay.String()))...)
		}
		return
	}
	if s.park(env, d, &ev, now, res.Status, lastError(dec, res)) {
		env.record(s, &ev, res.Status, res.Duration, metrics.OutcomeParked, lastError(dec, res))
		s.logEvent(slog.LevelError, "parked", &ev, append(attrs, logging.Err(res.Err), slog.String("reason", dec.Reason))...)
	}
	if dec.Pause && !s.paused.Swap(true) {
		s.metrics.Paused.Set(1)
		s.pause <- struct{}{}
		env.announce(KeyPaused, OperatorEvent{Subscription: s.name, Reason: dec.Reason, At: now.UTC()})
	}
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
func (s *subscriber) parkUnsent(env *env, d *amqp.Delivery, ev *event.Event, now time.Time, reason string) {
	if s.park(env, d, ev, now, 0, reason) {
		env.record(s, ev, 0, 0, metrics.OutcomeParked, reason)
		s.logEvent(slog.LevelError, "parked", ev, slog.String("reason", reason))
	}
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
func (s *subscriber) park(env *env, d *amqp.Delivery, ev *event.Event, now time.Time, status int, reason string) bool {
	msg := event.Copy(d, *ev, event.Outcome{Status: status, Error: reason}, now)
	if !s.replace(env, d, ev, "", s.dead, msg, "parking") {
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

// replace stores msg through exchange with routing key, then acks the
// original. While the broker will not take the copy it holds the original
// and tries again with backoff, redeclaring this subscription's queues and
// the tiers when the copy was unroutable; only shutdown (env.hard) gives up
// and requeues. It reports whether the original was replaced.
func (s *subscriber) replace(env *env, d *amqp.Delivery, ev *event.Event, exchange, key string, msg amqp.Publishing, what string) bool {
	wait := holdFirst
	for try := 1; ; try++ {
		err := env.copies.publish(env.hard, exchange, key, msg)
		if err == nil {
			ack(d, s.log)
			if try > 1 {
				s.logEvent(slog.LevelInfo, "stored the "+what+" copy after holding the original", ev, slog.Int("tries", try))
			}
			return true
		}
		if env.hard.Err() != nil {
			s.requeue(d, ev, "could not store the "+what+" copy before shutdown")
			return false
		}
		if try == 1 {
			s.logEvent(slog.LevelWarn, "could not store the "+what+" copy; holding the original and trying again", ev, logging.Err(err))
		}
		if errors.Is(err, broker.ErrUnroutable) || isNotFound(err) {
			// An operator deleted a tier (its queue: unroutable; its
			// exchange: the broker closes the channel with 404) or the dead
			// queue: declare them anew.
			s.repair(env)
		}
		select {
		case <-env.hard.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, holdMax)
	}
}

// repair redeclares the queues a copy of this subscription may go to.
func (s *subscriber) repair(env *env) {
	if env.links == nil {
		return
	}
	plan := s.shared
	plan.Queues = s.queues
	if err := env.e.declare(env.hard, env.links, plan); err != nil {
		s.log.Warn("could not redeclare the subscription's queues", logging.Err(err))
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
