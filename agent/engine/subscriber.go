package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/dedup"
	"github.com/warren-hq/warren/agent/delivery"
	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/journal"
	"github.com/warren-hq/warren/agent/logging"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/agent/rules"
	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
	"golang.org/x/time/rate"
)

// Subscription states, as /readyz shows them.
const (
	StateStarting   = "starting"   // declaring its queues, not consuming yet
	StateConsuming  = "consuming"  // taking deliveries
	StateRestarting = "restarting" // its channel or connection failed; back after a backoff
	StatePaused     = "paused"     // after 410 Gone, until reload or restart
)

// subscriber runs one subscription: a supervised consumer on its work
// queue that starts an attempt per delivery, up to `concurrency` at once.
type subscriber struct {
	name string
	opts config.Subscription
	// cfg holds only the broker section the subscriber was made with, one
	// value shared by every subscriber of a config: its queues and tiers
	// are derived when needed rather than kept by each of thousands.
	cfg      *config.Config
	work     string
	dead     string
	endpoint *delivery.Endpoint
	client   *delivery.Client
	rules    *rules.Program
	rulesErr error
	seen     *dedup.Window
	log      *slog.Logger
	metrics  *metrics.Subscription

	state  atomic.Value // string
	paused atomic.Bool
	// empty is true while the consumer is up and holds no delivery: the
	// broker would have pushed it whatever was ready, so the work queue
	// has nothing ready and the depth sampler need not ask.
	empty atomic.Bool
	// keys are an ordered subscription's held keys while it consumes.
	keys    atomic.Pointer[keys]
	pause   chan struct{} // a 410 asks the consume loop to stop
	breaker *breaker
	limiter *rate.Limiter // nil: unlimited
}

func newSubscriber(cfg *config.Config, s config.Subscription, userAgent string, seen *dedup.Window, log *slog.Logger, m *metrics.Subscription) *subscriber {
	sub := &subscriber{
		name:     s.Name,
		opts:     s,
		cfg:      cfg,
		work:     cfg.WorkQueue(s),
		dead:     cfg.DeadQueue(s),
		endpoint: delivery.NewEndpoint(s, userAgent),
		client:   delivery.NewClient(s),
		seen:     seen,
		log:      log.With("subscription", s.Name),
		metrics:  m,
		pause:    make(chan struct{}, 1),
	}
	// Validate compiled every expression already: an error here is a bug,
	// and the subscription parks each event with it rather than guess.
	if s.Filter != "" || s.Transform != "" || s.APIVersion != "" || s.Ordering.Key != "" {
		sub.rules, sub.rulesErr = rules.Compile(s)
	}
	sub.breaker = newBreaker(s.CircuitBreaker.Failures, s.CircuitBreaker.Cooldown, sub.log, m)
	if s.RateLimit > 0 {
		sub.limiter = rate.NewLimiter(rate.Limit(s.RateLimit), 1)
	}
	sub.state.Store(StateStarting)
	return sub
}

// State is what the subscription is doing now.
func (s *subscriber) State() string { return s.state.Load().(string) }

// errReopen ends a session that closed its channel on purpose: the next
// one starts at once.
var errReopen = errors.New("channel closed to hand its messages back in order")

// env is what a running subscriber uses from the engine.
type env struct {
	links    *links
	copies   store           // the links; a fake in unit tests
	hard     context.Context // ends in-flight attempts after the shutdown grace
	e        *Engine
	recorder *journal.Recorder // nil without broker.journal
}

// run supervises the subscription until ctx ends: whatever fails on its
// channel (an error, a cancelled consumer, a deleted queue) restarts this
// subscription alone, after a backoff of its own, redeclaring its queues.
// Only a FatalError (its queues conflict with the broker's) is returned.
func (s *subscriber) run(ctx context.Context, env *env) error {
	// The gauges are the subscription's, not this subscriber's: set here,
	// when it replaces the one before, not when a reload merely plans it.
	s.metrics.Start()
	s.metrics.Paused.Set(0)
	s.metrics.CircuitOpen.Set(0)
	backoff := env.e.MinBackoff
	for {
		started := time.Now()
		err := s.session(ctx, env)
		if ctx.Err() != nil {
			return nil
		}
		var fatal *FatalError
		if errors.As(err, &fatal) {
			return err
		}
		if errors.Is(err, errReopen) {
			continue
		}
		if time.Since(started) > env.e.MaxBackoff {
			backoff = env.e.MinBackoff // it ran a good while: start over
		}
		s.state.Store(StateRestarting)
		if env.links.up() {
			s.log.Warn("subscription restarting", logging.Err(err))
		} else {
			s.log.Debug("subscription waiting for the broker", logging.Err(err))
		}
		wait := jitter(backoff)
		backoff = min(2*backoff, env.e.MaxBackoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// session runs the subscription on one channel until ctx ends or the
// channel fails, stopping and restarting the consumer as the subscription
// pauses or its circuit opens.
func (s *subscriber) session(ctx context.Context, env *env) error {
	ch, release, err := env.links.channel(ctx)
	if err != nil {
		return err
	}
	defer release()
	defer ch.Close()
	if err := declarer.do(ctx, func() error {
		return topology.DeclareQueues(ch, s.cfg.Broker.Exchange, topology.Subscription(s.cfg, s.opts))
	}); err != nil {
		var conflict *topology.ConflictError
		if errors.As(err, &conflict) {
			return &FatalError{err}
		}
		return err
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	cancelled := ch.NotifyCancel(make(chan string, 1))
	for {
		probe := false
		switch {
		case s.paused.Load():
			s.state.Store(StatePaused)
			select {
			case <-ctx.Done():
				return nil
			case err := <-closed:
				return fmt.Errorf("channel closed: %w", closedErr(err))
			}
		case s.breaker.current() == open:
			s.state.Store(StateCircuitOpen)
			select {
			case <-ctx.Done():
				return nil
			case err := <-closed:
				return fmt.Errorf("channel closed: %w", closedErr(err))
			case <-time.After(s.breaker.cooldown):
			}
			s.breaker.probe()
			probe = true
		case s.breaker.current() == halfOpen:
			probe = true
		}
		if err := s.consume(ctx, env, ch, closed, cancelled, probe); err != nil || ctx.Err() != nil {
			return err
		}
	}
}

// consume runs one consumer until ctx ends, the channel fails, or the
// subscription's state changes (paused, circuit opened or closed). One
// goroutine reads deliveries and starts an attempt for each while fewer
// than `concurrency` run, so an idle subscription costs no workers. Before
// returning it stops the consumer, requeues what was prefetched but not
// started, and waits for the attempts in flight (hard cuts them short on
// shutdown). A probe consumes one message at a time.
func (s *subscriber) consume(ctx context.Context, env *env, ch *amqp.Channel,
	closed <-chan *amqp.Error, cancelled <-chan string, probe bool) error {
	win := &window{budget: env.e.budget, max: s.opts.EffectivePrefetch()}
	workers := s.opts.Concurrency
	var k *keys
	if s.ordered() {
		// A new consumer requeues what the old one had prefetched, which
		// an ordered subscription must not do while earlier events of the
		// same keys are in flight: its window stays as configured.
		win.budget = nil
		k = &keys{s: s, env: env, ctx: env.hard, held: map[string]bool{}, heads: map[string]headTime{}}
		s.keys.Store(k)
		defer func() {
			s.keys.Store(nil)
			k.close()
		}()
	}
	if probe {
		win.max, workers = 1, 1
	}
	defer win.release()
	acks := newAcker(ch)

	var (
		deliveries <-chan amqp.Delivery
		tag        string
		consumers  int
	)
	// requeue sends back what the consumer prefetched but never started,
	// stopping it first (cancel) or finding it stopped; its deliveries
	// channel closes once drained.
	requeue := func(cancel bool) {
		if cancel {
			_ = ch.Cancel(tag, false)
		}
		for d := range deliveries {
			s.metrics.Requeued.Inc()
			acks.track(&d)
			nack(&d, s.log)
		}
	}
	// subscribe starts a consumer with prefetch n. RabbitMQ fixes a
	// consumer's prefetch when it starts, so a new window is a new
	// consumer; attempts in flight go on, their acks on the same channel.
	subscribe := func(n int) error {
		if n == 0 {
			return nil
		}
		if deliveries != nil {
			// Until the new consumer is up, the queue may hold ready
			// messages nobody is pushed.
			s.empty.Store(false)
			requeue(true)
		}
		consumers++
		tag = fmt.Sprintf("warren.%s.%d", s.name, consumers)
		// On the declarer's goroutines, like the declares: this one stays
		// shallow, and an idle subscription's stack small.
		return declarer.do(ctx, func() error {
			if err := ch.Qos(n, 0, false); err != nil {
				return fmt.Errorf("set prefetch: %w", err)
			}
			d, err := ch.Consume(s.work, tag,
				false, // auto-ack: no, ack after the outcome is safe
				false, // exclusive: no, several agents compete
				false, // no-local
				false, // no-wait
				nil)
			if err != nil {
				return fmt.Errorf("consume %s: %w", s.work, err)
			}
			deliveries = d
			return nil
		})
	}
	if err := subscribe(win.start()); err != nil {
		return err
	}
	if probe {
		s.state.Store(StateCircuitHalfOpen)
	} else {
		s.state.Store(StateConsuming)
	}
	// An ordered queue may have a consumer of another warren active
	// instead of this one; a probe takes one message at a time.
	unheld := func() bool { return k == nil && !probe }
	s.empty.Store(unheld())
	defer s.empty.Store(false)

	// Attempts run in goroutines, at most `workers` at once sending; each
	// reports when it is done, with its key in an ordered subscription.
	// There the later events of a key in flight wait in waiting, in queue
	// order, and start one at a time. An attempt whose request is over and
	// that only waits for the broker to confirm its copy says so first:
	// it no longer counts against `workers`, so confirms are waited for
	// side by side with the next requests (the prefetch window still
	// bounds how many deliveries are open).
	type done struct {
		key   string
		keyed bool
		freed bool // only the slot: the attempt waits for its copy
		after bool // done, and its slot was freed before
	}
	finished := make(chan done, workers)
	busy, sending := 0, 0
	waiting := map[string][]amqp.Delivery{}
	run := func(d amqp.Delivery, key string) {
		busy++
		sending++
		attempts.run(func() {
			freed := false
			if k != nil {
				s.handleOrdered(ctx, env, k, &d, key)
			} else {
				s.handle(ctx, env, &d, func() {
					freed = true
					finished <- done{freed: true}
				})
			}
			finished <- done{key: key, keyed: k != nil, after: freed}
		})
	}
	// dispatch starts d, or queues it behind its key's event in flight.
	dispatch := func(d amqp.Delivery) {
		if k == nil {
			run(d, "")
			return
		}
		key, err := s.orderingKey(&d)
		if err != nil {
			busy++
			sending++
			attempts.run(func() {
				ev := event.FromDelivery(&d, time.Now())
				s.parkUnsent(env, &d, &ev, time.Now(), err.Error(), k.markedHead(&d, ev.ID))
				finished <- done{}
			})
			return
		}
		if queued, inFlight := waiting[key]; inFlight {
			waiting[key] = append(queued, d)
			return
		}
		waiting[key] = nil
		run(d, key)
	}
	// settle waits for the attempts in flight first: a later event of
	// their key must not go back to the queue, where another consumer
	// could take it, before they are settled. Then it requeues what was
	// prefetched (cancel: stopping the consumer first). An ordered
	// subscription closes its channel instead: the broker then returns
	// every unacked message in queue order before the next consumer gets
	// any, where nacks one by one could reorder them (a quorum queue
	// redelivers returned messages in the order they came back) and a
	// cancelled single active consumer hands over while it still holds
	// some.
	settle := func(cancel bool) {
		for busy > 0 {
			if f := <-finished; !f.freed {
				busy--
			}
		}
		if k != nil {
			acks.flush()
			ch.Close()
			return
		}
		requeue(cancel)
		acks.flush()
	}
	// reopen is what consume returns when it stopped for a change of
	// state: an ordered subscription closed its channel and needs another.
	reopen := func() error {
		if k != nil {
			return errReopen
		}
		return nil
	}
	for {
		var next <-chan amqp.Delivery
		if sending < workers {
			next = deliveries
		}
		select {
		case d, ok := <-next:
			if !ok {
				// The channel closed, or the broker cancelled the consumer.
				settle(false)
				select {
				case err := <-closed:
					return fmt.Errorf("channel closed: %w", closedErr(err))
				case <-cancelled:
				default:
				}
				return fmt.Errorf("the broker cancelled the consumer (queue %s deleted?)", s.work)
			}
			acks.track(&d)
			s.empty.Store(false)
			dispatch(d)
			if err := subscribe(win.arrived(int64(len(d.Body)))); err != nil {
				settle(false)
				return err
			}
		case f := <-finished:
			if f.freed {
				sending--
				continue
			}
			busy--
			if !f.after {
				sending--
			}
			if queued, ok := waiting[f.key]; ok && f.keyed {
				if len(queued) == 0 {
					delete(waiting, f.key)
				} else {
					waiting[f.key] = queued[1:]
					run(queued[0], f.key)
				}
			}
			if err := subscribe(win.settled()); err != nil {
				settle(false)
				return err
			}
			s.empty.Store(busy == 0 && unheld())
		case <-ctx.Done():
			settle(true)
			return nil
		case <-s.pause:
			settle(true)
			s.log.Error("subscription paused: the endpoint answered 410 Gone; reload or restart to resume")
			return reopen()
		case <-s.breaker.changed:
			settle(true)
			return reopen()
		case err := <-closed:
			settle(false)
			return fmt.Errorf("channel closed: %w", closedErr(err))
		case <-cancelled:
			settle(false)
			return fmt.Errorf("the broker cancelled the consumer (queue %s deleted?)", s.work)
		}
	}
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
