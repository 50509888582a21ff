package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrNotConfirmed means the broker did not take responsibility for a
// message: it nacked it, returned it as unroutable, or the channel closed
// first. The caller must keep (requeue or hold) the original.
var ErrNotConfirmed = errors.New("publish not confirmed by the broker")

// ErrNacked is the ErrNotConfirmed of a message the broker refused (an
// internal error, a queue at its limit with reject-publish).
var ErrNacked = fmt.Errorf("%w: nacked", ErrNotConfirmed)

// ErrUnroutable is the ErrNotConfirmed of a message no queue was bound for.
var ErrUnroutable = fmt.Errorf("%w: unroutable, no queue is bound for its key", ErrNotConfirmed)

// HeaderPublishTag carries the channel's publish sequence number on every
// message, so that a basic.return (which has no delivery tag) is matched to
// the exact publish it belongs to. Matching by message_id is not enough: one
// event fanned out to several subscriptions shares its id, and an
// unroutable publish is returned before the ack of an older routed one.
const HeaderPublishTag = "warren-publish-tag"

// Publisher publishes persistent messages with mandatory routing on one
// channel in confirm mode and reports, per message, whether the broker
// confirmed it and did not return it.
//
// basic.return for a message arrives before its basic.ack on the same
// reader goroutine. Returns and confirms are read by one goroutine from
// unbuffered channels, so a return is always recorded before the ack that
// follows it is looked at.
type Publisher struct {
	ch *amqp.Channel

	publishMu sync.Mutex // sequence number and publish happen together

	mu      sync.Mutex
	pending map[uint64]*Pending
	closed  error

	done chan struct{}
}

// Pending is a message written to the broker and not yet confirmed.
type Pending struct {
	p        *Publisher
	seq      uint64
	returned bool       // guarded by p.mu
	result   chan error // buffered 1
}

// NewPublisher puts ch in confirm mode and starts reading its confirms and
// returns. The publisher owns ch.
func NewPublisher(ch *amqp.Channel) (*Publisher, error) {
	if err := ch.Confirm(false); err != nil {
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	p := &Publisher{
		ch:      ch,
		pending: make(map[uint64]*Pending),
		done:    make(chan struct{}),
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation))
	returns := ch.NotifyReturn(make(chan amqp.Return))
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	go p.read(confirms, returns, closed)
	return p, nil
}

func (p *Publisher) read(confirms <-chan amqp.Confirmation, returns <-chan amqp.Return, closed <-chan *amqp.Error) {
	defer close(p.done)
	for confirms != nil || returns != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			p.markReturned(r)
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			p.settle(c)
		}
	}
	err := errors.New("channel closed")
	if e, ok := <-closed; ok && e != nil {
		err = e
	}
	p.failAll(err)
}

// markReturned flags the publish whose tag the returned message carries.
func (p *Publisher) markReturned(r amqp.Return) {
	seq, ok := r.Headers[HeaderPublishTag].(int64)
	if !ok {
		return
	}
	p.mu.Lock()
	if pp, ok := p.pending[uint64(seq)]; ok {
		pp.returned = true
	}
	p.mu.Unlock()
}

func (p *Publisher) settle(c amqp.Confirmation) {
	p.mu.Lock()
	pp, ok := p.pending[c.DeliveryTag]
	delete(p.pending, c.DeliveryTag)
	p.mu.Unlock()
	if !ok {
		return
	}
	switch {
	case !c.Ack:
		pp.result <- ErrNacked
	case pp.returned:
		pp.result <- ErrUnroutable
	default:
		pp.result <- nil
	}
}

func (p *Publisher) failAll(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = err
	for seq, pp := range p.pending {
		pp.result <- fmt.Errorf("%w: %w", ErrNotConfirmed, err)
		delete(p.pending, seq)
	}
}

// Send writes msg as persistent and mandatory without waiting for its
// confirm; Wait on the result does. msg.Headers gains HeaderPublishTag (a
// shared map is not modified: the headers are copied).
func (p *Publisher) Send(ctx context.Context, exchange, key string, msg amqp.Publishing) (*Pending, error) {
	msg.DeliveryMode = amqp.Persistent
	pp := &Pending{p: p, result: make(chan error, 1)}

	p.publishMu.Lock()
	defer p.publishMu.Unlock()
	// Read the sequence number before taking p.mu, never under it: while
	// amqp091 hands confirms it had held back for ordering to p.read
	// (confirms.resequence), its reader goroutine holds the lock that
	// GetNextPublishSeqNo takes, and p.read needs p.mu to settle them.
	// publishMu keeps seq valid until the publish below.
	pp.seq = p.ch.GetNextPublishSeqNo()
	headers := make(amqp.Table, len(msg.Headers)+1)
	for k, v := range msg.Headers {
		headers[k] = v
	}
	headers[HeaderPublishTag] = int64(pp.seq)
	msg.Headers = headers

	p.mu.Lock()
	if p.closed != nil {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrNotConfirmed, p.closed)
	}
	p.pending[pp.seq] = pp
	p.mu.Unlock()
	err := p.ch.PublishWithContext(ctx, exchange, key,
		true,  // mandatory: an unroutable copy comes back instead of vanishing
		false, // immediate
		msg)
	if err != nil {
		p.forget(pp.seq)
		return nil, fmt.Errorf("%w: publish to %q: %v", ErrNotConfirmed, key, err)
	}
	return pp, nil
}

// Wait blocks until the broker confirmed the message (nil), refused or
// returned it, or ctx ended.
func (pp *Pending) Wait(ctx context.Context) error {
	select {
	case err := <-pp.result:
		return err
	case <-ctx.Done():
		pp.p.forget(pp.seq)
		return fmt.Errorf("%w: %w", ErrNotConfirmed, ctx.Err())
	}
}

// Publish is Send then Wait.
func (p *Publisher) Publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	pp, err := p.Send(ctx, exchange, key, msg)
	if err != nil {
		return err
	}
	return pp.Wait(ctx)
}

func (p *Publisher) forget(seq uint64) {
	p.mu.Lock()
	delete(p.pending, seq)
	p.mu.Unlock()
}

// Close closes the channel and waits for the reader to stop.
func (p *Publisher) Close() error {
	err := p.ch.Close()
	<-p.done
	return err
}

// Done is closed once the channel is gone and every pending publish failed.
func (p *Publisher) Done() <-chan struct{} { return p.done }
