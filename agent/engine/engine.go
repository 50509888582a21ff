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
	"reflect"
	"slices"
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
	log     *slog.Logger
	metrics *metrics.Metrics
	seen    *dedup.Window
	reloads chan *config.Config // latest config to switch to

	// Timings, exported so tests can shorten them.
	MinBackoff     time.Duration // first wait before redialing
	MaxBackoff     time.Duration // cap of the doubling wait
	PublishTimeout time.Duration // a copy not confirmed by then is requeued
	SampleEvery    time.Duration // how often queue depths are read for metrics

	mu        sync.Mutex
	cfg       *config.Config
	subs      []*subscriber // in config order
	connected bool
	lastErr   error
}

// New prepares an engine for cfg, reporting to m.
func New(cfg *config.Config, log *slog.Logger, m *metrics.Metrics) *Engine {
	e := &Engine{
		cfg:            cfg,
		log:            log,
		metrics:        m,
		seen:           dedup.New(cfg.Server.DedupWindow),
		reloads:        make(chan *config.Config, 1),
		MinBackoff:     500 * time.Millisecond,
		MaxBackoff:     30 * time.Second,
		PublishTimeout: 10 * time.Second,
		SampleEvery:    5 * time.Second,
	}
	for _, s := range cfg.Subscriptions {
		e.subs = append(e.subs, e.newSubscriber(cfg, s))
	}
	return e
}

func (e *Engine) newSubscriber(cfg *config.Config, s config.Subscription) *subscriber {
	return newSubscriber(cfg, s, buildinfo.UserAgent(), e.seen, e.log, e.metrics.For(s.Name))
}

// Reload switches to cfg without dropping or duplicating in-flight events:
// new subscriptions start, removed ones stop after draining, changed (and
// paused) ones restart. A changed broker section reconnects.
func (e *Engine) Reload(cfg *config.Config) {
	select {
	case <-e.reloads: // superseded
	default:
	}
	e.reloads <- cfg
}

// errReload ends a session so the next one starts on a new broker config.
var errReload = errors.New("broker settings changed")

// errBlocked ends a session whose publishing connection the broker blocked.
var errBlocked = errors.New("broker blocked publishing")

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
		cfg, _ := e.current()
		time.AfterFunc(cfg.Server.ShutdownGrace, stopHard)
	})
	defer stopTimer()
	// Idle keep-alive connections to the endpoints (two goroutines and a
	// socket each) would otherwise outlive Run until the transport's idle
	// timeout.
	defer func() {
		_, subs := e.current()
		for _, s := range subs {
			s.client.Close()
		}
	}()

	link := &link{log: e.log}
	backoff := e.MinBackoff
	for {
		up := false
		err := e.session(ctx, hard, func() {
			up = true
			cfg, subs := e.current()
			if link.connected(cfg, len(subs)) {
				backoff = e.MinBackoff
			}
			e.setConnected(true, nil)
		})
		e.setConnected(false, err)
		if ctx.Err() != nil {
			e.log.Info("stopped")
			return nil
		}
		if fatal := (*FatalError)(nil); errors.As(err, &fatal) {
			return err
		}
		if errors.Is(err, errReload) {
			e.log.Info("broker settings changed; reconnecting")
			continue
		}
		link.ended(err, up)
		// Full jitter around the doubling backoff keeps many agents from
		// reconnecting in step after a broker restart.
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, e.MaxBackoff)
		timer := time.NewTimer(wait)
	waiting:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				e.log.Info("stopped")
				return nil
			case cfg := <-e.reloads:
				// Nothing runs: the next session starts on it.
				e.swap(cfg, e.plan(cfg))
			case <-timer.C:
				break waiting
			}
		}
	}
}

// link tracks the broker connection across sessions so that a loss and a
// recovery are each logged once, however many redials lie between them.
type link struct {
	log             *slog.Logger
	connectedBefore bool
	down            bool // lost or never reached, and said so
	blocked         bool // the last session ended on a blocked publisher
}

// connected notes a session that came up. It reports whether the redial
// backoff should start over: not while the broker blocks publishers, since
// each such session ends as soon as it publishes.
func (l *link) connected(cfg *config.Config, subscriptions int) (resetBackoff bool) {
	switch {
	case !l.connectedBefore:
		l.log.Info("connected to broker", "url", cfg.Broker.RedactedURL(), "subscriptions", subscriptions)
	case l.down:
		l.log.Info("broker connection restored")
	}
	l.connectedBefore, l.down = true, false
	return !l.blocked
}

// ended notes a session that ended with err (up: it had come up at all).
func (l *link) ended(err error, up bool) {
	wasBlocked := l.blocked
	l.blocked = errors.Is(err, errBlocked)
	switch {
	case l.blocked && !wasBlocked:
		l.log.Warn("broker blocked publishing (memory or disk alarm): deliveries paused until it recovers", logging.Err(err))
	case l.blocked:
		l.log.Debug("broker still blocks publishing", logging.Err(err))
	case up:
		l.log.Error("broker connection lost; reconnecting", logging.Err(err))
		l.down = true
	case !l.down:
		l.log.Error("broker unreachable; retrying until it answers", logging.Err(err))
		l.down = true
	default:
		l.log.Debug("reconnect failed", logging.Err(err))
	}
}

// session is one pair of broker connections and everything running on them.
type session struct {
	consume   *amqp.Connection
	publisher *broker.Publisher
	// abort closes the publishing connection, ending the session: used when
	// a publish hangs (a blocked broker).
	abort func()
	// operatorExchange receives operator events; "" when they are off.
	operatorExchange string
	log              *slog.Logger
}

func (e *Engine) session(ctx, hard context.Context, onUp func()) error {
	cfg, subs := e.current()
	consumeConn, err := broker.Dial(ctx, cfg.Broker, "consume")
	if err != nil {
		return err
	}
	defer closeConn(consumeConn)
	publishConn, err := broker.Dial(ctx, cfg.Broker, "publish")
	if err != nil {
		return err
	}
	defer closeConn(publishConn)

	if err := topology.Apply(publishConn, topology.For(cfg)); err != nil {
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
		abort:     func() { closeConnNow(publishConn) },
		log:       e.log,
	}
	if cfg.Broker.OperatorEvents {
		sess.operatorExchange = cfg.Broker.Exchange
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	failed := make(chan error, 1)
	running := map[string]*runningSub{}
	start := func(s *subscriber) {
		rctx, stop := context.WithCancel(sctx)
		r := &runningSub{stop: stop, done: make(chan struct{})}
		go func() {
			defer close(r.done)
			if err := s.run(rctx, hard, sess, e.PublishTimeout); err != nil && rctx.Err() == nil {
				select {
				case failed <- err:
				default: // the session is ending already
				}
			}
		}()
		running[s.name] = r
	}
	defer func() {
		cancel()
		for _, r := range running {
			<-r.done
		}
	}()
	for _, s := range subs {
		start(s)
	}
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		// On the consuming connection: the broker never blocks it.
		e.sampleDepths(sctx, consumeConn)
	}()
	defer func() { cancel(); <-sampled }()
	onUp()

	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-consumeClosed:
			return fmt.Errorf("consuming connection closed: %w", closedErr(err))
		case err := <-publishClosed:
			return fmt.Errorf("publishing connection closed: %w", closedErr(err))
		case b := <-blocked:
			// Publishes would hang: stop taking deliveries. Closing the
			// publishing connection at once fails the publishes waiting
			// for a confirm, so their originals are requeued now; a
			// blocked broker would never answer a polite close.
			if b.Active {
				closeConnNow(publishConn)
				return fmt.Errorf("%w (%s)", errBlocked, b.Reason)
			}
		case err := <-failed:
			return err
		case next := <-e.reloads:
			if err := e.reload(sess, publishConn, running, start, next); err != nil {
				return err
			}
		}
	}
}

// runningSub is a subscriber at work in a session.
type runningSub struct {
	stop context.CancelFunc
	done chan struct{}
}

// plan pairs each subscription of cfg with the subscriber to run it: the
// current one when nothing about it changed and it is not paused, else a
// new one.
func (e *Engine) plan(cfg *config.Config) []*subscriber {
	_, old := e.current()
	byName := make(map[string]*subscriber, len(old))
	for _, s := range old {
		byName[s.name] = s
	}
	subs := make([]*subscriber, 0, len(cfg.Subscriptions))
	for _, sc := range cfg.Subscriptions {
		if s, ok := byName[sc.Name]; ok && reflect.DeepEqual(s.opts, sc) && !s.paused.Load() {
			subs = append(subs, s)
			continue
		}
		subs = append(subs, e.newSubscriber(cfg, sc))
	}
	return subs
}

// swap makes cfg and subs current and forgets removed subscriptions'
// metrics.
// Replaced subscribers must have stopped.
func (e *Engine) swap(cfg *config.Config, subs []*subscriber) {
	e.mu.Lock()
	old := e.subs
	e.cfg, e.subs = cfg, subs
	e.mu.Unlock()
	for _, s := range old {
		if slices.Contains(subs, s) {
			continue
		}
		s.client.Close()
		if _, ok := cfg.Subscription(s.name); !ok {
			e.metrics.Forget(s.name)
		}
	}
}

// reload applies next inside a running session: stop (after draining)
// what was removed or changed, declare what is new, start it.
func (e *Engine) reload(sess *session, conn *amqp.Connection, running map[string]*runningSub, start func(*subscriber), next *config.Config) error {
	cur, old := e.current()
	subs := e.plan(next)
	if !reflect.DeepEqual(cur.Broker, next.Broker) {
		e.swap(next, subs)
		return errReload
	}
	keep := make(map[*subscriber]bool, len(subs))
	for _, s := range subs {
		keep[s] = true
	}
	for _, s := range old {
		if keep[s] {
			continue
		}
		running[s.name].stop()
		<-running[s.name].done
		delete(running, s.name)
		sc, still := next.Subscription(s.name)
		if still && s.paused.Load() {
			e.log.Info("subscription resumed by reload", "subscription", s.name)
			sess.announce(KeyResumed, OperatorEvent{Subscription: s.name, At: time.Now().UTC()})
		}
		gone := s.opts.Events
		if still {
			gone = slices.DeleteFunc(slices.Clone(gone), func(p string) bool { return slices.Contains(sc.Events, p) })
		} else {
			e.log.Warn("subscription removed: stopped after draining; its queues are kept and unbound, delete them once empty",
				"subscription", s.name, "queue", s.work)
		}
		// Stop routing new events to patterns no longer configured.
		if err := topology.Unbind(conn, cur.Broker.Exchange, s.work, gone); err != nil {
			return err
		}
	}
	if err := topology.Apply(conn, topology.For(next)); err != nil {
		if isPermanent(err) {
			e.log.Error("reload could not declare the new topology; restarting the session", logging.Err(err))
		}
		return err
	}
	e.swap(next, subs)
	for _, s := range subs {
		if _, ok := running[s.name]; !ok {
			start(s)
		}
	}
	if next.Server != cur.Server {
		e.log.Warn("server settings take effect on restart")
	}
	e.log.Info("config reloaded", "subscriptions", len(subs))
	return nil
}

func (e *Engine) current() (*config.Config, []*subscriber) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg, e.subs
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
		_, subs := e.current()
		for _, s := range subs {
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
	_, subs := e.current()
	states := make(map[string]string, len(subs))
	for _, s := range subs {
		states[s.name] = s.State()
	}
	return states
}

func closeConn(c *amqp.Connection) {
	// A blocked broker does not read: do not wait for close-ok forever.
	_ = c.CloseDeadline(time.Now().Add(5 * time.Second))
}

// closeConnNow drops a connection that cannot be closed politely (blocked,
// or a publish on it hangs).
func closeConnNow(c *amqp.Connection) {
	_ = c.CloseDeadline(time.Now().Add(100 * time.Millisecond))
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
