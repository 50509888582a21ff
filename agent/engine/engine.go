// Package engine runs warren's delivery loop: one broker session at a time
// (a consuming and a publishing connection), one consumer per subscription,
// and a supervisor that rebuilds the session whenever the broker goes away.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/buildinfo"
	"github.com/warren-hq/warren/agent/dedup"
	"github.com/warren-hq/warren/agent/logging"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
)

// Engine delivers the events of every subscription in a config.
type Engine struct {
	cfg     *config.Config
	log     *slog.Logger
	metrics *metrics.Metrics
	subs    []*subscriber

	// Timings, exported so tests can shorten them.
	MinBackoff     time.Duration // first wait before redialing
	MaxBackoff     time.Duration // cap of the doubling wait
	PublishTimeout time.Duration // a copy not confirmed by then is requeued
	SampleEvery    time.Duration // how often queue depths are read for metrics

	mu        sync.Mutex
	connected bool
	lastErr   error
}

// New prepares an engine for cfg, reporting to m.
func New(cfg *config.Config, log *slog.Logger, m *metrics.Metrics) *Engine {
	e := &Engine{
		cfg:            cfg,
		log:            log,
		metrics:        m,
		MinBackoff:     500 * time.Millisecond,
		MaxBackoff:     30 * time.Second,
		PublishTimeout: 10 * time.Second,
		SampleEvery:    5 * time.Second,
	}
	seen := dedup.New(cfg.Server.DedupWindow)
	ua := buildinfo.UserAgent()
	for _, s := range cfg.Subscriptions {
		e.subs = append(e.subs, newSubscriber(cfg, s, ua, seen, log, m.For(s.Name)))
	}
	return e
}

// FatalError stops the engine: retrying cannot fix it.
type FatalError struct{ Err error }

func (e *FatalError) Error() string { return e.Err.Error() }
func (e *FatalError) Unwrap() error { return e.Err }

// Run delivers until ctx is cancelled, then shuts down gracefully: stop
// consuming, let in-flight attempts finish within server.shutdown_grace,
// requeue the rest. Broker failures are retried forever; only a FatalError
// (a topology conflict) ends Run early.
func (e *Engine) Run(ctx context.Context) error {
	// hard ends in-flight attempts once the grace period after ctx is over.
	hard, stopHard := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHard()
	stopTimer := context.AfterFunc(ctx, func() {
		time.AfterFunc(e.cfg.Server.ShutdownGrace, stopHard)
	})
	defer stopTimer()

	backoff := e.MinBackoff
	down := false
	for {
		up := false
		err := e.session(ctx, hard, func() {
			up = true
			backoff = e.MinBackoff
			e.setConnected(true, nil)
			if down {
				e.log.Info("broker connection restored")
			} else {
				e.log.Info("connected to broker", "url", e.cfg.Broker.RedactedURL(), "subscriptions", len(e.subs))
			}
			down = false
		})
		e.setConnected(false, err)
		if ctx.Err() != nil {
			e.log.Info("stopped")
			return nil
		}
		if fatal := (*FatalError)(nil); errors.As(err, &fatal) {
			return err
		}
		if !down || up {
			if up {
				e.log.Error("broker connection lost; reconnecting", logging.Err(err))
			} else {
				e.log.Error("broker unreachable; retrying until it answers", logging.Err(err))
			}
			down = true
		} else {
			e.log.Debug("reconnect failed", logging.Err(err))
		}
		// Full jitter around the doubling backoff keeps many agents from
		// reconnecting in step after a broker restart.
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, e.MaxBackoff)
		select {
		case <-ctx.Done():
			e.log.Info("stopped")
			return nil
		case <-time.After(wait):
		}
	}
}

// session is one pair of broker connections and everything running on them.
type session struct {
	consume   *amqp.Connection
	publisher *broker.Publisher
	// abort closes the publishing connection, ending the session: used when
	// a publish hangs (a blocked broker).
	abort func()
}

func (e *Engine) session(ctx, hard context.Context, onUp func()) error {
	consumeConn, err := broker.Dial(e.cfg.Broker, "consume")
	if err != nil {
		return err
	}
	defer closeConn(consumeConn)
	publishConn, err := broker.Dial(e.cfg.Broker, "publish")
	if err != nil {
		return err
	}
	defer closeConn(publishConn)

	if err := topology.Apply(publishConn, topology.For(e.cfg)); err != nil {
		if isPermanent(err) {
			return &FatalError{err}
		}
		return err
	}
	ch, err := publishConn.Channel()
	if err != nil {
		return fmt.Errorf("open publishing channel: %w", err)
	}
	publisher, err := broker.NewPublisher(ch)
	if err != nil {
		return err
	}
	defer publisher.Close()

	consumeClosed := consumeConn.NotifyClose(make(chan *amqp.Error, 1))
	publishClosed := publishConn.NotifyClose(make(chan *amqp.Error, 1))
	blocked := publishConn.NotifyBlocked(make(chan amqp.Blocking, 4))
	sess := &session{
		consume:   consumeConn,
		publisher: publisher,
		abort:     func() { closeConn(publishConn) },
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, len(e.subs))
	for _, s := range e.subs {
		go func() { done <- s.run(sctx, hard, sess, e.PublishTimeout) }()
	}
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		e.sampleDepths(sctx, publishConn)
	}()
	defer func() { <-sampled }()
	onUp()

	running := len(e.subs)
	var cause error
	for cause == nil && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case err := <-consumeClosed:
			cause = fmt.Errorf("consuming connection closed: %w", closedErr(err))
		case err := <-publishClosed:
			cause = fmt.Errorf("publishing connection closed: %w", closedErr(err))
		case b := <-blocked:
			// Publishes would hang: stop taking deliveries until the
			// broker recovers; the next session waits for it.
			if b.Active {
				cause = fmt.Errorf("broker blocked publishing (%s)", b.Reason)
			}
		case err := <-done:
			running--
			cause = err
		}
	}
	cancel()
	for ; running > 0; running-- {
		if err := <-done; cause == nil {
			cause = err
		}
	}
	return cause
}

// Connected reports whether a broker session is up, and the last error.
func (e *Engine) Connected() (bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.connected, e.lastErr
}

func (e *Engine) setConnected(up bool, err error) {
	e.mu.Lock()
	e.connected, e.lastErr = up, err
	e.mu.Unlock()
	if up {
		e.metrics.BrokerConnected.Set(1)
	} else {
		e.metrics.BrokerConnected.Set(0)
	}
}

// sampleDepths reads every queue's depth with passive declares on a channel
// of its own until ctx ends.
func (e *Engine) sampleDepths(ctx context.Context, conn *amqp.Connection) {
	tick := time.NewTicker(e.SampleEvery)
	defer tick.Stop()
	var ch *amqp.Channel
	defer func() {
		if ch != nil {
			ch.Close()
		}
	}()
	depth := func(queue string) int {
		if ch == nil || ch.IsClosed() {
			var err error
			if ch, err = conn.Channel(); err != nil {
				return 0
			}
		}
		// A missing queue closes the channel; the next call reopens it.
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			return 0
		}
		return q.Messages
	}
	for {
		for _, s := range e.subs {
			retry := 0
			for _, q := range s.tiers {
				retry += depth(q)
			}
			s.metrics.WorkMessages.Set(float64(depth(s.work)))
			s.metrics.RetryMessages.Set(float64(retry))
			s.metrics.DeadMessages.Set(float64(depth(s.dead)))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// SubscriptionStates maps each subscription to what it is doing.
func (e *Engine) SubscriptionStates() map[string]string {
	states := make(map[string]string, len(e.subs))
	for _, s := range e.subs {
		states[s.name] = s.State()
	}
	return states
}

func closeConn(c *amqp.Connection) {
	// A blocked broker does not read: do not wait for close-ok forever.
	_ = c.CloseDeadline(time.Now().Add(5 * time.Second))
}

func closedErr(err *amqp.Error) error {
	if err == nil {
		return errors.New("closed")
	}
	return err
}

// isPermanent tells a broker refusal that redialing cannot fix (a queue
// declared with other arguments, a missing exchange) from a lost connection.
func isPermanent(err error) bool {
	var amqpErr *amqp.Error
	if !errors.As(err, &amqpErr) {
		return false
	}
	switch amqpErr.Code {
	case amqp.PreconditionFailed, amqp.NotFound, amqp.AccessRefused, amqp.NotAllowed:
		return true
	}
	return false
}
