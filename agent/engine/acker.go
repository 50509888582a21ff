package engine

import (
	"cmp"
	"slices"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Acks are sent in groups: a settled delivery waits up to ackDelay for
// the deliveries before it on its channel, so that one ack frame
// (multiple=true) covers them all. One that still has an open delivery
// before it after ackStraggle is acked on its own: one slow attempt must
// not hold the acks, and so the prefetch window, of the others.
var (
	ackDelay    = time.Millisecond
	ackStraggle = 5 * time.Millisecond
)

// acker coalesces the acks of one consumer channel. It stands in as each
// delivery's Acknowledger: an attempt's d.Ack only marks the delivery
// settled, and a timer acks the run of settled deliveries at the front
// with one frame. Such an ack covers every tag up to its own, so it is
// sent only over a run in which each delivery was acked by its attempt or
// already nacked: no message is acked before its outcome is safe. Nacks
// and rejects go out at once, under the same lock, so a later multiple ack
// can never overtake them.
type acker struct {
	ch              amqp.Acknowledger
	delay, straggle time.Duration // ackDelay, ackStraggle when made

	mu      sync.Mutex
	open    []pendingAck // deliveries handed to attempts, in tag order
	settled int          // how many of open are settled but not yet acked
	timer   *time.Timer  // runs due while settled > 0
	armed   bool
}

type pendingAck struct {
	tag     uint64
	settled time.Time // zero while the attempt runs
}

func newAcker(ch amqp.Acknowledger) *acker {
	a := &acker{ch: ch, delay: ackDelay, straggle: ackStraggle}
	a.timer = time.AfterFunc(time.Hour, a.due)
	a.timer.Stop()
	return a
}

// track makes a the Acknowledger of d, which the consumer has just
// received. Tags on a channel only grow, so open stays in tag order.
func (a *acker) track(d *amqp.Delivery) {
	a.mu.Lock()
	a.open = append(a.open, pendingAck{tag: d.DeliveryTag})
	a.mu.Unlock()
	d.Acknowledger = a
}

// Ack marks tag settled; the timer acks it.
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
	if !a.open[i].settled.IsZero() {
		return nil // settled already: a second ack would close the channel
	}
	a.open[i].settled = time.Now()
	a.settled++
	if !a.armed {
		a.armed = true
		a.timer.Reset(a.delay)
	}
	return nil
}

// Nack sends the nack at once and drops tag from the open deliveries.
func (a *acker) Nack(tag uint64, multiple, requeue bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.ch.Nack(tag, multiple, requeue)
	a.forget(tag, multiple)
	return err
}

// Reject is Nack for one delivery.
func (a *acker) Reject(tag uint64, requeue bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.ch.Reject(tag, requeue)
	a.forget(tag, false)
	return err
}

// due acks the front run, and the stragglers that waited ackStraggle on
// their own, and comes back while anything settled is left.
func (a *acker) due() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ackSettled(time.Now().Add(-a.straggle))
	if a.armed = a.settled > 0; a.armed {
		a.timer.Reset(a.delay)
	}
}

// flush acks every settled delivery now: the consumer is stopping.
func (a *acker) flush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ackSettled(time.Now())
}

// ackSettled acks the run of settled deliveries at the front of open in
// one frame, then each other one settled before cutoff on its own. A
// failed ack is redelivered: at least once. a.mu is held.
func (a *acker) ackSettled(cutoff time.Time) {
	n := 0
	for n < len(a.open) && !a.open[n].settled.IsZero() {
		n++
	}
	if n > 0 {
		_ = a.ch.Ack(a.open[n-1].tag, n > 1)
		a.open = slices.Delete(a.open, 0, n)
		a.settled -= n
	}
	if a.settled == 0 {
		return
	}
	a.open = slices.DeleteFunc(a.open, func(p pendingAck) bool {
		late := !p.settled.IsZero() && !p.settled.After(cutoff)
		if late {
			_ = a.ch.Ack(p.tag, false)
			a.settled--
		}
		return late
	})
}

func (a *acker) find(tag uint64) (int, bool) {
	return slices.BinarySearchFunc(a.open, tag, func(p pendingAck, t uint64) int { return cmp.Compare(p.tag, t) })
}

func (a *acker) forget(tag uint64, multiple bool) {
	n := 0 // how many of open to drop: the first n, or the one at i
	i, ok := a.find(tag)
	if multiple {
		n = i
		if ok {
			n++
		}
		i = 0
	} else if ok {
		n = 1
	}
	for _, p := range a.open[i : i+n] {
		if !p.settled.IsZero() {
			a.settled--
		}
	}
	a.open = slices.Delete(a.open, i, i+n)
}
