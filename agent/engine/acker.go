package engine

import (
	"slices"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ackStraggle is how long a settled delivery may wait for the deliveries
// before it on its channel to settle too, so that one ack frame
// (multiple=true) covers them all. After it, it is acked on its own: one
// slow attempt must not hold the acks, and so the prefetch window, of the
// others.
var ackStraggle = 5 * time.Millisecond

// acker coalesces the acks of one consumer channel. It stands in as each
// delivery's Acknowledger: an attempt's d.Ack only marks the delivery
// settled, and when the oldest deliveries still open are all settled, one
// ack with multiple=true settles the run. Such an ack covers every tag up
// to its own, so it is sent only over a run in which each delivery was
// acked by its attempt or already nacked: no message is acked before its
// outcome is safe. Nacks and rejects go out at once, under the same lock,
// so a later multiple ack can never overtake them.
type acker struct {
	ch amqp.Acknowledger

	mu      sync.Mutex
	open    []pendingAck // deliveries handed to attempts, in tag order
	settled int          // how many of open are settled but not yet acked
	timer   *time.Timer  // acks stragglers on their own, see ackStraggle
}

type pendingAck struct {
	tag     uint64
	settled bool
}

func newAcker(ch amqp.Acknowledger) *acker { return &acker{ch: ch} }

// track makes a the Acknowledger of d, which the consumer has just
// received. Tags on a channel only grow, so open stays in tag order.
func (a *acker) track(d *amqp.Delivery) {
	a.mu.Lock()
	a.open = append(a.open, pendingAck{tag: d.DeliveryTag})
	a.mu.Unlock()
	d.Acknowledger = a
}

// Ack marks tag settled and acks the run of settled deliveries at the
// front, if there is one.
func (a *acker) Ack(tag uint64, multiple bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if multiple { // not used by warren; kept true to the protocol
		err := a.ch.Ack(tag, true)
		a.forget(tag, true)
		return err
	}
	i, ok := a.find(tag)
	if !ok {
		return a.ch.Ack(tag, false) // not tracked: say it as it is
	}
	a.open[i].settled = true
	a.settled++
	return a.flushFront()
}

// Nack sends the nack at once and drops tag from the open deliveries,
// which may complete a run of settled ones before it.
func (a *acker) Nack(tag uint64, multiple, requeue bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.ch.Nack(tag, multiple, requeue)
	a.forget(tag, multiple)
	if ferr := a.flushFront(); err == nil {
		err = ferr
	}
	return err
}

// Reject is Nack for one delivery.
func (a *acker) Reject(tag uint64, requeue bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.ch.Reject(tag, requeue)
	a.forget(tag, false)
	if ferr := a.flushFront(); err == nil {
		err = ferr
	}
	return err
}

// flush acks every settled delivery now: the consumer is stopping, or the
// stragglers waited long enough.
func (a *acker) flush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.flushAll()
}

func (a *acker) find(tag uint64) (int, bool) {
	return slices.BinarySearchFunc(a.open, tag, func(p pendingAck, t uint64) int {
		switch {
		case p.tag < t:
			return -1
		case p.tag > t:
			return 1
		}
		return 0
	})
}

func (a *acker) forget(tag uint64, multiple bool) {
	if multiple {
		a.open = slices.DeleteFunc(a.open, func(p pendingAck) bool {
			if p.tag <= tag && p.settled {
				a.settled--
			}
			return p.tag <= tag
		})
		return
	}
	if i, ok := a.find(tag); ok {
		if a.open[i].settled {
			a.settled--
		}
		a.open = slices.Delete(a.open, i, i+1)
	}
}

// flushFront acks the run of settled deliveries at the front and arms
// the straggler timer for settled ones behind an open delivery. a.mu is
// held.
func (a *acker) flushFront() error {
	err := a.ackFront()
	if a.settled > 0 && a.timer == nil {
		a.timer = time.AfterFunc(ackStraggle, a.flush)
	}
	return err
}

// ackFront acks the run of settled deliveries at the front of open in one
// frame. a.mu is held.
func (a *acker) ackFront() error {
	n := 0
	for n < len(a.open) && a.open[n].settled {
		n++
	}
	if n == 0 {
		return nil
	}
	err := a.ch.Ack(a.open[n-1].tag, n > 1)
	a.open = slices.Delete(a.open, 0, n)
	a.settled -= n
	return err
}

// flushAll acks the front run together and every other settled delivery
// on its own. a.mu is held.
func (a *acker) flushAll() {
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	_ = a.ackFront()
	if a.settled == 0 {
		return
	}
	a.open = slices.DeleteFunc(a.open, func(p pendingAck) bool {
		if p.settled {
			_ = a.ch.Ack(p.tag, false) // a failed ack is redelivered: at least once
		}
		return p.settled
	})
	a.settled = 0
}
