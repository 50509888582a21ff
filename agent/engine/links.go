package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/logging"
	"github.com/warren-hq/warren/config"
)

// errBlocked fails a publish while the broker blocks publishers (a memory
// or disk alarm): writing would hang.
var errBlocked = errors.New("broker blocks publishing (memory or disk alarm)")

// links holds warren's broker connections. Subscriptions take consuming
// channels on connections that still have room below the negotiated
// channel limit, dialing a new one when all are full; copies go through a
// few confirm channels on one publishing connection (flow control on it
// must not slow the acks on the consuming ones). A connection that fails
// touches only what runs on it: the next request for a channel dials anew.
type links struct {
	broker config.Broker
	log    *slog.Logger
	// onDial declares what every subscription relies on (the exchange and
	// the retry tiers) on each new consuming connection; an error fails the
	// dial.
	onDial func(*amqp.Connection) error
	// perConn caps the channels taken on one consuming connection.
	perConn        int
	publishTimeout time.Duration
	minBackoff     time.Duration
	maxBackoff     time.Duration
	onChange       func(up bool, err error)

	// life ends when the links close: a shared dial runs on it, not on the
	// context of whichever subscription asked first.
	life    context.Context
	endLife context.CancelFunc

	mu       sync.Mutex
	consume  []*consumeConn
	dialing  chan struct{} // closed when the dial in progress ends; nil when none
	dialErr  error         // the last dial's error while retryAt is ahead
	retryAt  time.Time
	backoff  time.Duration
	everUp   bool
	down     bool // a loss or an unreachable broker was logged
	isClosed bool

	pubMu   sync.Mutex
	pubConn *amqp.Connection
	pubs    []*broker.Publisher
	next    atomic.Uint64
	blocked atomic.Bool
}

type consumeConn struct {
	conn *amqp.Connection
	used int // channels taken; guarded by links.mu
}

// publishChannels is how many confirm channels carry copies: enough to
// keep confirms pipelined, few enough to cost nothing.
const publishChannels = 4

func (l *links) lockedBackoff() time.Duration {
	if l.backoff == 0 {
		l.backoff = l.minBackoff
	}
	wait := jitter(l.backoff)
	l.backoff = min(2*l.backoff, l.maxBackoff)
	return wait
}

// jitter is a wait around d, from d/2 to d: it keeps many warrens (or
// subscriptions) from retrying in step after a broker restart.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// channel returns a new channel on a consuming connection with room, and
// the function that gives its slot back once the channel is closed.
func (l *links) channel(ctx context.Context) (*amqp.Channel, func(), error) {
	for {
		l.mu.Lock()
		if l.isClosed {
			l.mu.Unlock()
			return nil, nil, errors.New("shutting down")
		}
		for _, c := range l.consume {
			if c.used < l.perConn && !c.conn.IsClosed() {
				c.used++
				l.mu.Unlock()
				release := sync.OnceFunc(func() { l.mu.Lock(); c.used--; l.mu.Unlock() })
				ch, err := c.conn.Channel()
				if err != nil {
					release()
					return nil, nil, fmt.Errorf("open channel: %w", err)
				}
				return ch, release, nil
			}
		}
		// Every connection is full or gone: one caller dials, the others
		// wait for it and look again.
		if wait := l.dialing; wait != nil {
			l.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			}
		}
		if time.Now().Before(l.retryAt) {
			err := l.dialErr
			l.mu.Unlock()
			return nil, nil, err
		}
		l.dialing = make(chan struct{})
		l.mu.Unlock()
		err := l.dialConsume(l.life)
		l.mu.Lock()
		close(l.dialing)
		l.dialing = nil
		l.mu.Unlock()
		if err != nil {
			return nil, nil, err
		}
	}
}

func (l *links) dialConsume(ctx context.Context) error {
	conn, err := l.dial(ctx, "consume")
	if err == nil {
		err = l.prepare(conn)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if conn != nil {
			closeConnNow(conn)
		}
		l.dialErr = err
		l.retryAt = time.Now().Add(l.lockedBackoff())
		if !l.down && !isFatal(err) {
			if l.everUp {
				l.log.Error("broker connection lost; reconnecting", logging.Err(err))
			} else {
				l.log.Error("broker unreachable; retrying until it answers", logging.Err(err))
			}
			l.down = true
		} else {
			l.log.Debug("reconnect failed", logging.Err(err))
		}
		l.onChange(l.upLocked(), err)
		return err
	}
	if l.isClosed {
		closeConnNow(conn)
		return errors.New("shutting down")
	}
	switch {
	case !l.everUp:
		l.log.Info("connected to broker", "url", l.broker.RedactedURL(), "node", conn.RemoteAddr().String())
	case l.down:
		l.log.Info("broker connection restored", "node", conn.RemoteAddr().String())
	}
	l.everUp, l.down, l.backoff, l.dialErr = true, false, 0, nil
	c := &consumeConn{conn: conn}
	l.consume = append(l.consume, c)
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	go func() {
		err := <-closed
		l.mu.Lock()
		defer l.mu.Unlock()
		for i, x := range l.consume {
			if x == c {
				l.consume = append(l.consume[:i], l.consume[i+1:]...)
				break
			}
		}
		if err != nil && !l.isClosed && !l.down {
			l.log.Error("broker connection lost; reconnecting", logging.Err(err))
			l.down = true
		}
		l.onChange(l.upLocked(), closedErr(err))
	}()
	l.onChange(true, nil)
	return nil
}

// prepare declares the shared topology on a fresh connection.
func (l *links) prepare(conn *amqp.Connection) error {
	if err := l.onDial(conn); err != nil {
		if isPermanent(err) {
			return &FatalError{err}
		}
		return err
	}
	return nil
}

func (l *links) dial(ctx context.Context, role string) (*amqp.Connection, error) {
	return broker.Dial(ctx, l.broker, role)
}

// up reports whether at least one consuming connection is open.
func (l *links) up() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.upLocked()
}

func (l *links) upLocked() bool {
	for _, c := range l.consume {
		if !c.conn.IsClosed() {
			return true
		}
	}
	return false
}

// publisher returns one of the confirm channels, reopening it (and the
// publishing connection) when it is gone.
func (l *links) publisher(ctx context.Context) (*broker.Publisher, *amqp.Connection, error) {
	i := int(l.next.Add(1) % publishChannels)
	l.pubMu.Lock()
	defer l.pubMu.Unlock()
	if l.pubs == nil {
		l.pubs = make([]*broker.Publisher, publishChannels)
	}
	if l.pubConn == nil || l.pubConn.IsClosed() {
		conn, err := l.dial(ctx, "publish")
		if err != nil {
			return nil, nil, err
		}
		l.pubConn = conn
		l.blocked.Store(false)
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
		go l.watchBlocked(blocked)
		clear(l.pubs)
	}
	if p := l.pubs[i]; p != nil {
		select {
		case <-p.Done():
		default:
			return p, l.pubConn, nil
		}
	}
	ch, err := l.pubConn.Channel()
	if err != nil {
		return nil, nil, fmt.Errorf("open publishing channel: %w", err)
	}
	p, err := broker.NewPublisher(ch)
	if err != nil {
		return nil, nil, err
	}
	l.pubs[i] = p
	return p, l.pubConn, nil
}

func (l *links) watchBlocked(blocked <-chan amqp.Blocking) {
	for b := range blocked {
		if b.Active && !l.blocked.Swap(true) {
			l.log.Warn("broker blocked publishing (memory or disk alarm): retry and parking copies wait until it recovers", "reason", b.Reason)
		}
		if !b.Active && l.blocked.Swap(false) {
			l.log.Info("broker unblocked publishing")
		}
	}
	// The connection is gone, and with it what it said: the next publish
	// dials a new one and learns afresh.
	l.blocked.Store(false)
}

// publish stores msg and waits for the broker's confirm, within the
// publish timeout. A write that does not return in time means a blocked or
// broken connection: it is closed, so nothing hangs behind it. A confirm
// that does not come in time, or a nack, costs only its channel, which the
// next publish opens anew; the other publishes on the connection go on.
func (l *links) publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	if l.blocked.Load() {
		return errBlocked
	}
	ctx, cancel := context.WithTimeout(ctx, l.publishTimeout)
	defer cancel()
	p, conn, err := l.publisher(ctx)
	if err != nil {
		return err
	}
	watchdog := context.AfterFunc(ctx, func() { closeConnNow(conn) })
	pending, err := p.Send(ctx, exchange, key, msg)
	watchdog()
	if err != nil {
		return err
	}
	err = pending.Wait(ctx)
	if errors.Is(err, broker.ErrNacked) || errors.Is(err, context.DeadlineExceeded) {
		// A channel whose queue lost its leader can nack every publish
		// for as long as it lives: the next try gets a new one.
		go p.Close()
	}
	return err
}

// close ends every connection; nothing dials after it.
func (l *links) close() { l.closeWithin(5 * time.Second) }

// closeWithin is close waiting at most d for each connection's close-ok:
// a blocked broker does not read.
func (l *links) closeWithin(d time.Duration) {
	l.endLife()
	l.mu.Lock()
	l.isClosed = true
	conns := l.consume
	l.consume = nil
	l.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { _ = c.conn.CloseDeadline(time.Now().Add(d)) })
	}
	l.pubMu.Lock()
	if l.pubConn != nil {
		wg.Go(func() { _ = l.pubConn.CloseDeadline(time.Now().Add(d)) })
	}
	l.pubMu.Unlock()
	wg.Wait()
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

func isFatal(err error) bool {
	var fatal *FatalError
	return errors.As(err, &fatal)
}
