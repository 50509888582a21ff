package journal

import (
	"context"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
)

// confirmer publishes up to window messages in order on one channel in
// confirm mode, then waits for all their confirms at once: pipelined, unlike
// one confirm at a time, and order-preserving, unlike publishing from many
// goroutines.
type confirmer struct {
	ch      *amqp.Channel
	returns chan amqp.Return
	pending []*amqp.DeferredConfirmation
}

func newConfirmer(conn *amqp.Connection, window int) (*confirmer, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	// At most window returns between two waits: the reader never blocks on
	// a full buffer. A return arrives before its ack, so once every ack of
	// a window is in, its returns are in the buffer.
	returns := ch.NotifyReturn(make(chan amqp.Return, window))
	return &confirmer{ch: ch, returns: returns, pending: make([]*amqp.DeferredConfirmation, 0, window)}, nil
}

// full reports whether the window is used up: wait before publishing more.
func (c *confirmer) full() bool { return len(c.pending) == cap(c.pending) }

func (c *confirmer) publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key,
		true,  // mandatory: a missing queue or stream is an error, not a silent drop
		false, // immediate
		msg)
	if err != nil {
		return fmt.Errorf("publish to %q: %w", key, err)
	}
	c.pending = append(c.pending, dc)
	return nil
}

// wait returns nil when the broker confirmed and routed every message
// published since the last wait.
func (c *confirmer) wait(ctx context.Context) error {
	defer func() { c.pending = c.pending[:0] }()
	for _, dc := range c.pending {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return fmt.Errorf("%w: %w", broker.ErrNotConfirmed, err)
		}
		if !ok {
			return fmt.Errorf("%w: nacked", broker.ErrNotConfirmed)
		}
	}
	var err error
	for {
		select {
		case r := <-c.returns:
			if err == nil {
				err = fmt.Errorf("%w (%q)", broker.ErrUnroutable, r.RoutingKey)
			}
		default:
			return err
		}
	}
}

func (c *confirmer) close() { c.ch.Close() }
