package journal

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
)

// HeaderMarker is set on the marker a reader appends to a stream to find
// its end; every reader skips markers.
const HeaderMarker = "warren-journal-marker"

// headerOffset is the position of a delivery in the stream; RabbitMQ sets it
// on every message consumed from a stream.
const headerOffset = "x-stream-offset"

// Timings a test may shorten.
var (
	// confirmTimeout bounds the wait for the marker's confirm.
	confirmTimeout = 10 * time.Second
	// probeTimeout bounds the search for Until's offset; see untilOffset.
	probeTimeout = 5 * time.Second
	// stallTimeout ends a read that receives nothing at all for this long
	// before reaching its end, rather than hanging.
	stallTimeout = 30 * time.Second
)

// prefetch is the stream consumer's credit; RabbitMQ requires one.
const prefetch = 500

// ErrStop, returned by a Read callback, ends the read without error.
var ErrStop = errors.New("stop reading")

// Read calls fn with every message of stream in w, oldest first, and
// returns once it reached the end of w or the end the stream had when Read
// began.
//
// Over AMQP 0-9-1 RabbitMQ 3.10 says nothing of a stream's length (the
// declare-ok of a stream counts 0 messages) and a stream consumer never
// ends: it waits for the next message. An idle timeout would guess. Read
// knows instead: it first appends a marker message to the stream itself,
// confirmed, and stops when it reads its own marker back, so it sees exactly
// what the stream held before it began (and stops even while the
// application keeps publishing). Markers are a few bytes each and every
// reader skips them.
func Read(ctx context.Context, conn *amqp.Connection, stream string, w Window, fn func(*amqp.Delivery) error) error {
	if err := broker.RequireStreams(conn); err != nil {
		return err
	}
	if !w.Since.IsZero() && w.Since.After(time.Now()) {
		return nil // nothing was written in the future
	}
	if err := checkStream(conn, stream); err != nil {
		return err
	}
	marker, err := appendMarker(ctx, conn, stream)
	if err != nil {
		return err
	}
	until := int64(-1)
	if !w.Until.IsZero() && w.Until.Before(time.Now()) {
		if until, err = untilOffset(ctx, conn, stream, w.Until); err != nil {
			return err
		}
	}

	ch, deliveries, err := consume(conn, stream, w.Since, prefetch)
	if err != nil {
		return err
	}
	defer ch.Close()
	var unacked int
	stall := time.NewTimer(stallTimeout)
	defer stall.Stop()
	for {
		var d amqp.Delivery
		var ok bool
		select {
		case d, ok = <-deliveries:
		case <-stall.C:
			return fmt.Errorf("read %s: nothing received for %s before the end of the stream", stream, stallTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			return fmt.Errorf("read %s: %w", stream, closeReason(ch))
		}
		stall.Reset(stallTimeout)
		if id, isMarker := d.Headers[HeaderMarker].(string); isMarker {
			if id == marker {
				return nil
			}
			continue
		}
		if off, ok := offset(&d); ok && until >= 0 && off >= until {
			return nil
		}
		if err := fn(&d); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
		// Acks only return credit on a stream; one goroutine owns this
		// channel, so a multiple ack covers exactly what it has read.
		if unacked++; unacked == prefetch/2 {
			if err := d.Ack(true); err != nil {
				return err
			}
			unacked = 0
		}
	}
}

// checkStream fails with the fix when stream does not exist. It uses its
// own channel: a failed passive declare closes the channel.
func checkStream(conn *amqp.Connection, stream string) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if _, err := ch.QueueDeclarePassive(stream, true, false, false, false, nil); err != nil {
		return fmt.Errorf("stream %q not found (is broker.journal set, and has `warren run` or `warren topology --apply` run?): %w", stream, err)
	}
	return nil
}

// appendMarker publishes a marker to the end of stream, confirmed, and
// returns its id.
func appendMarker(ctx context.Context, conn *amqp.Connection, stream string) (string, error) {
	id := "mark_" + rand.Text()
	pub, err := newConfirmer(conn, 1)
	if err != nil {
		return "", err
	}
	defer pub.close()
	ctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	err = pub.publish(ctx, "", stream, amqp.Publishing{
		MessageId:    id,
		DeliveryMode: amqp.Persistent,
		Headers:      amqp.Table{HeaderMarker: id},
	})
	if err == nil {
		err = pub.wait(ctx)
	}
	if err != nil {
		return "", fmt.Errorf("mark the end of %s: %w", stream, err)
	}
	return id, nil
}

// untilOffset finds the first offset the broker wrote at or after t: a
// consumer attached at t gets it first. The stream holds the reader's
// marker, written after t, so a message is there; probeTimeout covers a
// broker clock running behind this host's, and then the marker ends the
// read instead.
func untilOffset(ctx context.Context, conn *amqp.Connection, stream string, t time.Time) (int64, error) {
	ch, deliveries, err := consume(conn, stream, t, 1)
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	select {
	case d, ok := <-deliveries:
		if !ok {
			return 0, fmt.Errorf("read %s: %w", stream, closeReason(ch))
		}
		if off, ok := offset(&d); ok {
			return off, nil
		}
		return -1, nil
	case <-time.After(probeTimeout):
		return -1, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// consume attaches a stream consumer at since (the start when zero) on a
// channel of its own.
func consume(conn *amqp.Connection, stream string, since time.Time, credit int) (*amqp.Channel, <-chan amqp.Delivery, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, nil, err
	}
	if err := ch.Qos(credit, 0, false); err != nil {
		ch.Close()
		return nil, nil, err
	}
	var start any = "first"
	if !since.IsZero() {
		start = since // an AMQP timestamp: the first chunk written at or after it
	}
	deliveries, err := ch.Consume(stream, "",
		false, // auto-ack: streams need manual acks
		false, // exclusive
		false, // no-local
		false, // no-wait
		amqp.Table{headerOffset: start})
	if err != nil {
		ch.Close()
		return nil, nil, fmt.Errorf("read stream %q: %w", stream, err)
	}
	return ch, deliveries, nil
}

func offset(d *amqp.Delivery) (int64, bool) {
	switch v := d.Headers[headerOffset].(type) {
	case int64:
		return v, true
	case int32:
		return int64(v), true
	}
	return 0, false
}

// closeReason says why a consumer's delivery channel closed.
func closeReason(ch *amqp.Channel) error {
	if ch.IsClosed() {
		return errors.New("channel closed by the broker")
	}
	return errors.New("consumer cancelled by the broker")
}
