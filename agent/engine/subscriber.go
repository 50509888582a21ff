package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/dedup"
	"github.com/warren-hq/warren/agent/delivery"
	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/logging"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/config"
	"golang.org/x/time/rate"
)

// Subscription states, as /readyz shows them.
const (
	StateStarting  = "starting"
	StateConsuming = "consuming"
	StatePaused    = "paused" // after 410 Gone, until reload or restart
)

// subscriber runs one subscription: a consumer on its work queue feeding
// `concurrency` workers.
type subscriber struct {
	name     string
	opts     config.Subscription
	work     string
	dead     string
	tiers    map[time.Duration]string // delay -> tier queue
	endpoint *delivery.Endpoint
	client   *delivery.Client
	seen     *dedup.Window
	log      *slog.Logger
	metrics  *metrics.Subscription

	state   atomic.Value // string
	paused  atomic.Bool
	pause   chan struct{} // a 410 asks the consume loop to stop
	breaker *breaker
	limiter *rate.Limiter // nil: unlimited
}

func newSubscriber(cfg *config.Config, s config.Subscription, userAgent string, seen *dedup.Window, log *slog.Logger, m *metrics.Subscription) *subscriber {
	sub := &subscriber{
		name:     s.Name,
		opts:     s,
		work:     cfg.WorkQueue(s),
		dead:     cfg.DeadQueue(s),
		tiers:    make(map[time.Duration]string),
		endpoint: delivery.NewEndpoint(s, userAgent),
		client:   delivery.NewClient(s),
		seen:     seen,
		log:      log.With("subscription", s.Name),
		metrics:  m,
		pause:    make(chan struct{}, 1),
	}
	for _, d := range s.Tiers() {
		sub.tiers[d] = cfg.RetryQueue(s, d)
	}
	sub.breaker = newBreaker(s.CircuitBreaker.Failures, s.CircuitBreaker.Cooldown, sub.log, m)
	if s.RateLimit > 0 {
		sub.limiter = rate.NewLimiter(rate.Limit(s.RateLimit), 1)
	}
	sub.state.Store(StateStarting)
	m.Paused.Set(0)
	m.CircuitOpen.Set(0)
	return sub
}

// State is what the subscription is doing now.
func (s *subscriber) State() string { return s.state.Load().(string) }

// run consumes until ctx ends or the channel fails, stopping and
// restarting the consumer as the subscription pauses or its circuit opens.
func (s *subscriber) run(ctx, hard context.Context, sess *session, publishTimeout time.Duration) error {
	ch, err := sess.consume.Channel()
	if err != nil {
		return fmt.Errorf("subscription %s: open channel: %w", s.name, err)
	}
	defer ch.Close()
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	cancelled := ch.NotifyCancel(make(chan string, 1))
	for {
		probe := false
		switch {
		case s.paused.Load():
			s.state.Store(StatePaused)
			<-ctx.Done()
			return nil
		case s.breaker.current() == open:
			s.state.Store(StateCircuitOpen)
			select {
			case <-ctx.Done():
				return nil
			case err := <-closed:
				return fmt.Errorf("subscription %s: channel closed: %w", s.name, closedErr(err))
			case <-time.After(s.breaker.cooldown):
			}
			s.breaker.probe()
			probe = true
		case s.breaker.current() == halfOpen:
			probe = true
		}
		if err := s.consume(ctx, hard, sess, ch, closed, cancelled, probe, publishTimeout); err != nil || ctx.Err() != nil {
			return err
		}
	}
}

// consume runs one consumer until ctx ends, the channel fails, or the
// subscription's state changes (paused, circuit opened or closed). Before
// returning it stops the consumer, requeues what was prefetched but not
// started, and waits for in-flight attempts (hard cuts them short on
// shutdown). A probe consumes one message at a time.
func (s *subscriber) consume(ctx, hard context.Context, sess *session, ch *amqp.Channel,
	closed <-chan *amqp.Error, cancelled <-chan string, probe bool, publishTimeout time.Duration) error {
	prefetch, workers := s.opts.EffectivePrefetch(), s.opts.Concurrency
	if probe {
		prefetch, workers = 1, 1
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return fmt.Errorf("subscription %s: set prefetch: %w", s.name, err)
	}
	tag := "warren." + s.name
	deliveries, err := ch.Consume(s.work, tag,
		false, // auto-ack: no, ack after the outcome is safe
		false, // exclusive: no, several agents compete
		false, // no-local
		false, // no-wait
		nil)
	if err != nil {
		return fmt.Errorf("subscription %s: consume %s: %w", s.name, s.work, err)
	}
	if probe {
		s.state.Store(StateCircuitHalfOpen)
	} else {
		s.state.Store(StateConsuming)
	}

	var stopping atomic.Bool
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for d := range deliveries {
				if stopping.Load() || s.paused.Load() {
					// Prefetched but not started: back to the queue as is.
					nack(&d, s.log)
					continue
				}
				s.handle(hard, sess, &d, publishTimeout)
			}
		})
	}
	stop := func() {
		stopping.Store(true)
		_ = ch.Cancel(tag, false) // deliveries closes once the buffer is drained
		wg.Wait()
	}

	select {
	case <-ctx.Done():
		stop()
		return nil
	case <-s.pause:
		stop()
		s.log.Error("subscription paused: the endpoint answered 410 Gone; reload or restart to resume")
		return nil
	case <-s.breaker.changed:
		stop()
		return nil
	case err := <-closed:
		stopping.Store(true)
		wg.Wait()
		return fmt.Errorf("subscription %s: channel closed: %w", s.name, closedErr(err))
	case <-cancelled:
		stop()
		return fmt.Errorf("subscription %s: the broker cancelled the consumer (queue %s deleted?)", s.name, s.work)
	}
}

// handle makes one attempt and settles the delivery: ack after a 2xx, or
// after the broker confirmed the retry or parking copy that replaces it;
// otherwise nack with requeue so nothing is lost.
func (s *subscriber) handle(hard context.Context, sess *session, d *amqp.Delivery, publishTimeout time.Duration) {
	now := time.Now()
	ev := event.FromDelivery(d, now)
	dedupKey := dedup.Key{Subscription: s.name, Event: ev.ID}
	if s.seen.Contains(dedupKey) {
		ack(d, s.log)
		s.logEvent(slog.LevelDebug, "duplicate of an event already delivered; acked without sending", &ev)
		return
	}

	if s.limiter != nil {
		if err := s.limiter.Wait(hard); err != nil {
			nack(d, s.log) // shutting down
			return
		}
		now = time.Now()
	}
	s.metrics.InFlight.Inc()
	res := s.client.Send(hard, s.endpoint, &ev, now)
	s.metrics.InFlight.Dec()
	if res.Status == 0 && hard.Err() != nil {
		s.metrics.Requeued.Inc()
		nack(d, s.log)
		s.logEvent(slog.LevelWarn, "attempt cut short by shutdown; requeued", &ev, slog.Int64("duration_ms", res.Duration.Milliseconds()))
		return
	}
	if !res.Invalid {
		s.metrics.Latency.Observe(res.Duration.Seconds())
	}
	dec := delivery.Decide(res, ev.Attempt, s.opts.Retry)
	s.breaker.record(dec.Action == delivery.Ack || !dec.EndpointFailed)
	if dec.Action == delivery.Ack {
		s.seen.Add(dedupKey)
		ack(d, s.log)
		s.metrics.Delivered.Inc()
		s.logEvent(slog.LevelInfo, "delivered", &ev, slog.Int("status", res.Status), slog.Int64("duration_ms", res.Duration.Milliseconds()))
		return
	}

	queue, parkedAt, lastErr := s.dead, now, res.Err.Error()
	if dec.Action == delivery.Retry {
		queue, parkedAt = s.tiers[dec.Delay], time.Time{}
	}
	if dec.Reason != "" && dec.Reason != lastErr {
		lastErr = dec.Reason + ": " + lastErr
	}
	msg := event.Copy(d, ev, event.Outcome{Status: res.Status, Error: lastErr}, parkedAt)
	pctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	err := sess.publisher.Publish(pctx, "", queue, msg)
	cancel()
	if err != nil {
		nack(d, s.log)
		s.metrics.Requeued.Inc()
		s.logEvent(slog.LevelWarn, "could not store the "+dec.Action.String()+" copy; requeued the original", &ev, logging.Err(err))
		if errors.Is(err, context.DeadlineExceeded) {
			// A publish that hangs means a blocked or broken connection:
			// end the session rather than hang every worker behind it.
			sess.abort()
		}
		return
	}
	ack(d, s.log)
	attrs := []slog.Attr{slog.Int("status", res.Status), slog.Int64("duration_ms", res.Duration.Milliseconds())}
	if dec.Reason != res.Err.Error() {
		attrs = append(attrs, logging.Err(res.Err))
	}
	if dec.Action == delivery.Retry {
		s.metrics.Retried.Inc()
		s.logEvent(slog.LevelWarn, "retry scheduled", &ev, append(attrs, slog.String("delay", dec.Delay.String()))...)
		return
	}
	s.metrics.Parked.Inc()
	s.logEvent(slog.LevelError, "parked", &ev, append(attrs, slog.String("reason", dec.Reason), slog.String("queue", s.dead))...)
	sess.announce(KeyParked, OperatorEvent{
		Subscription: s.name, EventID: ev.ID, Type: ev.Type, Attempts: ev.Attempt,
		LastStatus: res.Status, Reason: lastErr, At: now.UTC(),
	})
	if dec.Pause && !s.paused.Swap(true) {
		s.metrics.Paused.Set(1)
		s.pause <- struct{}{}
		sess.announce(KeyPaused, OperatorEvent{Subscription: s.name, Reason: dec.Reason, At: now.UTC()})
	}
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

func ack(d *amqp.Delivery, log *slog.Logger) {
	if err := d.Ack(false); err != nil {
		// The channel is gone; the broker redelivers the message.
		log.Debug("ack failed; the broker will redeliver", logging.Err(err))
	}
}

func nack(d *amqp.Delivery, log *slog.Logger) {
	if err := d.Nack(false, true); err != nil {
		log.Debug("nack failed; the broker will redeliver", logging.Err(err))
	}
}
