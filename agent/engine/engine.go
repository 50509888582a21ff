// Package engine runs warren's delivery: one supervised consumer per
// subscription on channels spread over as many broker connections as
// needed, each failing and restarting alone, and one reload path that
// applies a new config whole or not at all.
package engine

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"reflect"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/buildinfo"
	"github.com/warren-hq/warren/agent/dedup"
	"github.com/warren-hq/warren/agent/journal"
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

	// Timings and sizes, exported so tests can shorten them.
	MinBackoff     time.Duration // first wait before redialing or restarting a subscription
	MaxBackoff     time.Duration // cap of the doubling wait
	PublishTimeout time.Duration // a copy not confirmed by then is tried again
	SampleEvery    time.Duration // how often queue depths are read for metrics
	// ChannelsPerConnection caps the consuming channels on one connection;
	// more subscriptions open more connections. It stays below RabbitMQ's
	// default channel_max of 2,047.
	ChannelsPerConnection int

	slots  *slots  // server.max_in_flight; nil: no cap
	budget *budget // bodies held, from server.memory_limit; nil: no bound

	mu      sync.Mutex
	cfg     *config.Config
	subs    []*subscriber // in config order
	links   *links
	lastErr error
	// unbind holds bindings a reload dropped while the broker was away.
	unbind []binding
}

// binding is one pattern binding a queue to an exchange.
type binding struct{ exchange, queue, pattern string }

// New prepares an engine for cfg, reporting to m.
func New(cfg *config.Config, log *slog.Logger, m *metrics.Metrics) *Engine {
	e := &Engine{
		cfg:                   cfg,
		log:                   log,
		metrics:               m,
		seen:                  dedup.New(cfg.Server.DedupWindow),
		reloads:               make(chan *config.Config, 1),
		MinBackoff:            500 * time.Millisecond,
		MaxBackoff:            30 * time.Second,
		PublishTimeout:        10 * time.Second,
		SampleEvery:           5 * time.Second,
		ChannelsPerConnection: 500,
	}
	e.slots = newSlots(cfg.Server.MaxInFlight)
	e.budget = newBudget(MemoryLimit(cfg.Server.MemoryLimit))
	e.subs = e.plan(cfg)
	m.ConfigHash.Set(hash(cfg))
	return e
}

// Reload asks Run to switch to cfg. It is applied whole or not at all, and
// the outcome is logged and counted in warren_config_reloads_total.
func (e *Engine) Reload(cfg *config.Config) {
	select {
	case <-e.reloads: // superseded
	default:
	}
	e.reloads <- cfg
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
		cfg, _ := e.current()
		time.AfterFunc(cfg.Server.ShutdownGrace, stopHard)
	})
	defer stopTimer()

	r := &runner{e: e, hard: hard, fatal: make(chan error, 1), running: map[*subscriber]*runningSub{}}
	cfg, subs := e.current()
	r.connect(cfg)
	for _, s := range subs {
		r.start(ctx, s)
	}
	go e.settleStartup(ctx)
	sampled := make(chan struct{})
	sctx, stopSampling := context.WithCancel(ctx)
	go func() {
		defer close(sampled)
		e.sampleDepths(sctx)
	}()
	defer func() { stopSampling(); <-sampled }()

	retry := time.NewTicker(time.Second) // a pending reload looks for the broker
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			r.stopAll()
			e.log.Info("stopped")
			return nil
		case err := <-r.fatal:
			r.stopAll()
			return err
		case next := <-e.reloads:
			r.apply(ctx, next)
		case <-retry.C:
			if r.pending != nil && r.links.up() {
				next := r.pending
				r.pending = nil
				r.apply(ctx, next)
			}
		}
	}
}

// runner is what Run keeps while it runs: the subscribers at work and the
// broker links they use.
type runner struct {
	pending  *config.Config // a reload waiting for the broker
	e        *Engine
	hard     context.Context
	fatal    chan error
	running  map[*subscriber]*runningSub
	links    *links
	recorder *journal.Recorder // nil without broker.journal
	// stopRecorder flushes what the recorder holds and stops it;
	// cutRecorder drops its connection at once (a stalled broker).
	stopRecorder, cutRecorder func()
}

// runningSub is a subscriber at work.
type runningSub struct {
	stop context.CancelFunc
	done chan struct{}
}

// connect replaces the broker links with ones for cfg's broker section.
func (r *runner) connect(cfg *config.Config) { r.use(r.newLinks(cfg)) }

// newLinks prepares broker links for cfg's broker section; nothing is
// dialed until a channel is asked for.
func (r *runner) newLinks(cfg *config.Config) *links {
	e := r.e
	shared := topology.Shared(cfg)
	l := &links{
		broker:         cfg.Broker,
		log:            e.log,
		perConn:        e.ChannelsPerConnection,
		publishTimeout: e.PublishTimeout,
		minBackoff:     e.MinBackoff,
		maxBackoff:     e.MaxBackoff,
		onDial: func(conn *amqp.Connection) error {
			if err := topology.RequireStreams(conn, shared); err != nil {
				return &FatalError{err}
			}
			ch, err := conn.Channel()
			if err != nil {
				return err
			}
			defer ch.Close()
			if err := topology.Declare(ch, shared); err != nil {
				return err
			}
			e.unbindPending(conn.Channel)
			return nil
		},
	}
	l.life, l.endLife = context.WithCancel(context.Background())
	// Only the links in use speak for the broker connection: not links a
	// reload tried and dropped, nor the ones it replaced.
	l.onChange = func(up bool, err error) {
		e.mu.Lock()
		current := e.links == l
		e.mu.Unlock()
		if current {
			e.setConnected(up, err)
		}
	}
	return l
}

// use replaces the broker links with l.
func (r *runner) use(l *links) {
	e := r.e
	r.disconnect()
	r.links = l
	if l.broker.Journal != nil {
		ctx, stop := context.WithCancel(context.Background())
		stream := (&config.Config{Broker: l.broker}).AttemptsStream()
		rec, done := journal.NewRecorder(stream, journal.RecorderOptions{}), make(chan struct{})
		var conn atomic.Pointer[amqp.Connection]
		go func() {
			defer close(done)
			e.runRecorder(ctx, l.broker, rec, &conn)
		}()
		r.recorder = rec
		r.cutRecorder = func() {
			if c := conn.Load(); c != nil {
				closeConnNow(c)
			}
		}
		r.stopRecorder = func() {
			stop()
			// The last flush waits for confirms: a broker that stopped
			// answering gets lastAcks, then the connection is cut.
			select {
			case <-done:
			case <-time.After(lastAcks):
				r.cutRecorder()
				<-done
			}
		}
	}
	e.mu.Lock()
	e.links = l
	e.mu.Unlock()
}

func (r *runner) start(ctx context.Context, s *subscriber) {
	rctx, stop := context.WithCancel(ctx)
	rs := &runningSub{stop: stop, done: make(chan struct{})}
	r.running[s] = rs
	env := r.env()
	go func() {
		defer close(rs.done)
		if err := s.run(rctx, env); err != nil {
			select {
			case r.fatal <- err:
			default:
			}
		}
	}()
}

// stop stops subscribers after they drained, all at once.
func (r *runner) stop(subs []*subscriber) {
	for _, s := range subs {
		r.running[s].stop()
	}
	for _, s := range subs {
		<-r.running[s].done
		delete(r.running, s)
		s.client.Close()
	}
}

// lastAcks is how long stopping may still take once shutdown_grace is
// over, before the broker connections are cut.
const lastAcks = 5 * time.Second

func (r *runner) stopAll() {
	subs := make([]*subscriber, 0, len(r.running))
	for s := range r.running {
		subs = append(subs, s)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		r.stop(subs)
	}()
	select {
	case <-stopped:
	case <-r.hard.Done():
		// Attempts cut short now requeue, and acks still go out: give them
		// a moment. A broker that stopped answering would hold the
		// consumers' cancels (and this process) forever, so then the
		// connections are cut, which ends every call waiting on them.
		select {
		case <-stopped:
		case <-time.After(lastAcks):
			if r.links != nil {
				r.links.closeWithin(100 * time.Millisecond)
			}
			if r.recorder != nil {
				r.cutRecorder()
			}
			<-stopped
		}
	}
	r.disconnect()
}

// disconnect flushes the recorder and closes the links, if any.
func (r *runner) disconnect() {
	if r.recorder != nil {
		r.stopRecorder()
		r.recorder = nil
	}
	if r.links != nil {
		r.links.close()
	}
}

func (r *runner) env() *env {
	return &env{links: r.links, copies: r.links, hard: r.hard, e: r.e, recorder: r.recorder}
}

// runRecorder keeps rec publishing to P.attempts on a connection of its
// own (kept in current while it is open), redialing after a failure, until
// ctx ends; Run flushes what is left then.
func (e *Engine) runRecorder(ctx context.Context, b config.Broker, rec *journal.Recorder, current *atomic.Pointer[amqp.Connection]) {
	wait := e.MinBackoff
	for ctx.Err() == nil {
		conn, err := broker.Dial(ctx, b, "attempts")
		if err == nil {
			current.Store(conn)
			err = rec.Run(ctx, conn)
			closeConn(conn)
			current.Store(nil)
			if err == nil {
				return
			}
		}
		e.log.Warn("attempts journal: reconnecting", logging.Err(err))
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, e.MaxBackoff)
	}
}

// apply is the one reload path, whether the broker is up or not. It first
// declares what the new config needs, so that a conflict leaves everything
// as it was; then it stops what was removed or changed (after draining),
// unbinds the patterns no longer configured (later, on the next
// connection, if the broker is away) and starts what is new.
func (r *runner) apply(ctx context.Context, next *config.Config) {
	e := r.e
	cur, old := e.current()
	subs := e.plan(next)
	brokerChanged := !reflect.DeepEqual(cur.Broker, next.Broker)

	keep := make(map[*subscriber]bool, len(subs))
	var added []config.Subscription
	for _, s := range subs {
		keep[s] = true
		if _, running := r.running[s]; !running {
			added = append(added, s.opts)
		}
	}
	if !brokerChanged && !r.links.up() {
		// Nothing can be declared, so nothing could be refused: the reload
		// waits for the broker, then goes all the way or not at all.
		r.pending = next
		e.log.Info("config reload waits for the broker connection")
		return
	}
	// discard closes what plan built for a config that is not applied.
	discard := func() {
		for _, s := range subs {
			if _, running := r.running[s]; !running {
				s.client.Close()
			}
		}
	}
	declared := false
	// A changed broker section gets links of its own, and the new queues
	// are declared through them before anything running is stopped.
	declareOn := r.links
	if brokerChanged {
		declareOn = r.newLinks(next)
	}
	if brokerChanged || r.links.up() {
		plan := topology.Shared(next)
		for _, sc := range added {
			plan.Queues = append(plan.Queues, topology.Subscription(next, sc)...)
		}
		// Every queue first, then the bindings: a conflict on one queue
		// must not leave new patterns bound to the queues before it.
		queuesOnly := plan
		queuesOnly.Queues = withoutPatterns(plan.Queues)
		err := e.declare(ctx, declareOn, queuesOnly)
		if err == nil {
			err = e.declare(ctx, declareOn, plan)
		}
		if err != nil && brokerChanged && !refused(err) {
			// The new broker does not answer yet: its queues are
			// declared on its first connection.
			err = nil
		} else if err == nil {
			declared = true
		}
		if err != nil {
			if brokerChanged {
				declareOn.close()
			}
			discard()
			e.metrics.Reloads.WithLabelValues("failure").Inc()
			e.log.Error("config reload rejected; keeping the running config", "err", err.Error())
			return
		}
	}

	var stopping []*subscriber
	for _, s := range old {
		if !keep[s] {
			stopping = append(stopping, s)
		}
	}
	r.stop(stopping)
	var gone []binding
	for _, s := range stopping {
		sc, still := next.Subscription(s.name)
		if still && s.paused.Load() {
			e.log.Info("subscription resumed by reload", "subscription", s.name)
			r.announce(KeyResumed, OperatorEvent{Subscription: s.name, At: time.Now().UTC()})
		}
		if !still {
			e.log.Warn("subscription removed: stopped after draining; its queues are kept and unbound, delete them once empty",
				"subscription", s.name, "queue", s.work)
		}
		for _, p := range s.opts.Events {
			if still && next.Broker.Exchange == cur.Broker.Exchange && next.WorkQueue(sc) == s.work && slices.Contains(sc.Events, p) {
				continue
			}
			gone = append(gone, binding{cur.Broker.Exchange, s.work, p})
		}
	}
	e.mu.Lock()
	e.unbind = append(e.unbind, gone...)
	e.mu.Unlock()
	if brokerChanged {
		r.use(declareOn)
	}
	if len(gone) > 0 && r.links.up() {
		// What fails here stays pending for the next connection.
		e.unbindPending(func() (*amqp.Channel, error) {
			ch, release, err := r.links.channel(ctx)
			if err == nil {
				release() // the slot is not needed past this one call
			}
			return ch, err
		})
	}
	e.swap(next, subs)
	for _, s := range subs {
		if _, running := r.running[s]; !running {
			r.start(ctx, s)
		}
	}
	e.metrics.Reloads.WithLabelValues("success").Inc()
	e.metrics.ConfigHash.Set(hash(next))
	how := "declared"
	if !declared {
		how = "declared on the next connection"
	}
	e.log.Info("config reloaded", "subscriptions", len(subs), "started", len(added), "stopped", len(stopping), "queues", how)
	if next.Server != cur.Server {
		e.log.Warn("server settings take effect on restart")
	}
}

func (r *runner) announce(key string, ev OperatorEvent) {
	r.env().announce(key, ev)
}

// declare declares plan on a channel of its own.
func (e *Engine) declare(ctx context.Context, l *links, plan topology.Plan) error {
	return e.withChannel(ctx, l, func(ch *amqp.Channel) error { return topology.Declare(ch, plan) })
}

func (e *Engine) withChannel(ctx context.Context, l *links, f func(*amqp.Channel) error) error {
	ch, release, err := l.channel(ctx)
	if err != nil {
		return err
	}
	defer release()
	defer ch.Close()
	return f(ch)
}

// unbindPending removes the bindings earlier reloads dropped, each on a
// channel of its own: a queue or exchange deleted meanwhile (404) closes
// the channel and leaves nothing to unbind. What fails otherwise is kept
// for the next connection.
func (e *Engine) unbindPending(open func() (*amqp.Channel, error)) {
	e.mu.Lock()
	pending := e.unbind
	e.unbind = nil
	e.mu.Unlock()
	var failed []binding
	for _, b := range pending {
		ch, err := open()
		if err == nil {
			err = topology.Unbind(ch, b.exchange, b.queue, []string{b.pattern})
			ch.Close()
		}
		if err != nil && !isNotFound(err) {
			failed = append(failed, b)
		}
	}
	if len(failed) > 0 {
		e.mu.Lock()
		e.unbind = append(e.unbind, failed...)
		e.mu.Unlock()
	}
}

// plan pairs each subscription of cfg with the subscriber to run it: the
// current one when nothing about it (or the broker section) changed and it
// is not paused, else a new one.
func (e *Engine) plan(cfg *config.Config) []*subscriber {
	cur, old := e.current()
	byName := make(map[string]*subscriber, len(old))
	for _, s := range old {
		byName[s.name] = s
	}
	sameBroker := cur != nil && reflect.DeepEqual(cur.Broker, cfg.Broker)
	// New subscribers share the broker section, all they derive names
	// from, not the whole config, which a kept one would pin after later
	// reloads.
	broker := &config.Config{Broker: cfg.Broker}
	subs := make([]*subscriber, 0, len(cfg.Subscriptions))
	for _, sc := range cfg.Subscriptions {
		if s, ok := byName[sc.Name]; ok && sameBroker && reflect.DeepEqual(s.opts, sc) && !s.paused.Load() {
			subs = append(subs, s)
			continue
		}
		subs = append(subs, newSubscriber(broker, sc, buildinfo.UserAgent(), e.seen, e.log, e.metrics.For(sc.Name)))
	}
	return subs
}

// swap makes cfg and subs current and forgets removed subscriptions'
// metrics.
func (e *Engine) swap(cfg *config.Config, subs []*subscriber) {
	e.mu.Lock()
	old := e.subs
	e.cfg, e.subs = cfg, subs
	e.mu.Unlock()
	for _, s := range old {
		if _, ok := cfg.Subscription(s.name); !ok {
			e.metrics.Forget(s.name)
		}
	}
}

func (e *Engine) current() (*config.Config, []*subscriber) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg, e.subs
}

// Connected reports whether warren has a broker connection, and the last
// error.
func (e *Engine) Connected() (bool, error) {
	e.mu.Lock()
	l, err := e.links, e.lastErr
	e.mu.Unlock()
	return l != nil && l.up(), err
}

func (e *Engine) setConnected(up bool, err error) {
	e.mu.Lock()
	e.lastErr = err
	e.mu.Unlock()
	if up {
		e.metrics.BrokerConnected.Set(1)
	} else {
		e.metrics.BrokerConnected.Set(0)
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

// hash identifies a loaded config in warren_config_hash: the first 52 bits
// (a float64 holds them exactly) of the SHA-256 of its JSON form, secrets
// masked. JSON, not the YAML of validate -v: with thousands of
// subscriptions that encoding costs hundreds of MB.
func hash(cfg *config.Config) float64 {
	h := sha256.New()
	_ = json.NewEncoder(h).Encode(cfg)
	return float64(binary.BigEndian.Uint64(h.Sum(nil)[:8]) >> 12)
}

// refused tells a broker that refused the new topology (a queue with
// other arguments, a missing exchange) from one that could not be reached.
func refused(err error) bool {
	var conflict *topology.ConflictError
	return errors.As(err, &conflict) || isFatal(err) || isPermanent(err)
}

func withoutPatterns(queues []topology.Queue) []topology.Queue {
	out := make([]topology.Queue, len(queues))
	for i, q := range queues {
		q.Patterns = nil
		out[i] = q
	}
	return out
}

// settleStartup hands the garbage of starting up (thousands of declares
// and consumers) back to the operating system once every subscription
// consumes, so that an idle warren's RSS is what it holds, not what it
// went through.
func (e *Engine) settleStartup(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		starting := false
		for _, state := range e.SubscriptionStates() {
			if state == StateStarting {
				starting = true
				break
			}
		}
		if !starting {
			debug.FreeOSMemory()
			return
		}
	}
}
