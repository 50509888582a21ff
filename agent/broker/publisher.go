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
// first. The caller must keep (requeue) the original.
var ErrNotConfirmed = errors.New("publish not confirmed by the broker")

// ErrUnroutable is the ErrNotConfirmed of a message no queue was bound for.
var ErrUnroutable = fmt.Errorf("%w: unroutable, no queue is bound for its key", ErrNotConfirmed)

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
	pending map[uint64]*pendingPublish
	closed  error

	done chan struct{}
}

type pendingPublish struct {
	messageID string
	returned  bool
	result    chan error // buffered 1
}

// NewPublisher puts ch in confirm mode and starts reading its confirms and
// returns. The publisher owns ch.
func NewPublisher(ch *amqp.Channel) (*Publisher, error) {
	if err := ch.Confirm(false); err != nil {
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	p := &Publisher{
		ch:      ch,
		pending: make(map[uint64]*pendingPublish),
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
			p.markReturned(r.MessageId)
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

// markReturned flags the oldest unconfirmed publish with this message id.
func (p *Publisher) markReturned(messageID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var oldest uint64
	for seq, pp := range p.pending {
		if pp.messageID == messageID && !pp.returned && (oldest == 0 || seq < oldest) {
			oldest = seq
		}
	}
	if oldest != 0 {
		p.pending[oldest].returned = true
	}
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
		pp.result <- fmt.Errorf("%w: nacked", ErrNotConfirmed)
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
		pp.result <- fmt.Errorf("%w: %v", ErrNotConfirmed, err)
		delete(p.pending, seq)
	}
}

// Publish sends msg as persistent and mandatory and waits until the broker
// confirmed it or ctx ends. msg.MessageId must be set: returns are matched
// by it.
func (p *Publisher) Publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	msg.DeliveryMode = amqp.Persistent
	pp := &pendingPublish{messageID: msg.MessageId, result: make(chan error, 1)}

	p.publishMu.Lock()
	// Read the sequence number before taking p.mu, never under it: while
	// amqp091 hands confirms it had held back for ordering to p.read
	// (confirms.resequence), its reader goroutine holds the lock that
	// GetNextPublishSeqNo takes, and p.read needs p.mu to settle them.
	// Holding p.mu here deadlocked the channel and, with its reader stuck,
	// the whole publishing connection. publishMu keeps seq valid until the
	// publish below.
	seq := p.ch.GetNextPublishSeqNo()
	p.mu.Lock()
	if p.closed != nil {
		p.mu.Unlock()
		p.publishMu.Unlock()
		return fmt.Errorf("%w: %v", ErrNotConfirmed, p.closed)
	}
	p.pending[seq] = pp
	p.mu.Unlock()
	err := p.ch.PublishWithContext(ctx, exchange, key,
		true,  // mandatory: an unroutable copy comes back instead of vanishing
		false, // immediate
		msg)
	p.publishMu.Unlock()
	if err != nil {
		p.forget(seq)
		return fmt.Errorf("publish to %q: %w", key, err)
	}

	select {
	case err := <-pp.result:
		return err
	case <-ctx.Done():
		p.forget(seq)
		return fmt.Errorf("%w: %w", ErrNotConfirmed, ctx.Err())
	}
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
