package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/rules"
)

// Ordered delivery (ordering.key). The work queue of an ordered
// subscription has a single active consumer (x-single-active-consumer), so
// one warren at a time delivers it, whatever the number of instances, and
// it sends the events of one key one at a time, in queue order, while
// other keys go on concurrently.
//
// A key whose event must wait for a retry is held, in RabbitMQ, not in
// memory: its event goes to the retry tier marked as the key's head, and
// every later event of the key is moved, in order, to the key's held queue
// P.S.held.<hash>. When the head comes back and is done with (delivered or
// parked), the next held event is moved back to the work queue as the new
// head, until the held queue is empty and deleted. A held key therefore
// never fills the prefetch window, never holds a message unacked past the
// broker's consumer_timeout, and is found again (its held queue exists) by
// whichever warren takes over.

// keyHooks bind an attempt to its key: hold runs before a retry is acked
// (the retry copy becomes the key's head), release before an event that is
// done with is acked (the key's next event becomes its head).
type keyHooks struct {
	key     string
	hold    func(head string) error
	release func() error
}

// keys is an ordered subscription's view of its held keys, valid while
// this consumer is the active one (a new session starts afresh). Its
// broker operations share one channel, one at a time.
type keys struct {
	s   *subscriber
	env *env
	ctx context.Context

	mu      sync.Mutex
	ch      *amqp.Channel
	release func()              // gives ch's slot back
	held    map[string]bool     // known state per key
	heads   map[string]headTime // per held key, since when its head heads it
}

// headTime is which event heads a held key, since when (zero: unknown, a
// record of an older version), and when warren last warned that it is
// late.
type headTime struct {
	head          string
	since, warned time.Time
}

// maxKnownKeys bounds the held-state cache; past it, it starts over and
// keys are looked up on the broker again.
const maxKnownKeys = 100_000

// queue names a key's held queue: P.S.held.<first 16 hex digits of the
// SHA-256 of the key>.
func (k *keys) queue(key string) string {
	sum := sha256.Sum256([]byte(key))
	return k.s.work + ".held." + hex.EncodeToString(sum[:8])
}

func (k *keys) channel() (*amqp.Channel, error) {
	if k.ch != nil && !k.ch.IsClosed() {
		return k.ch, nil
	}
	k.drop()
	ch, release, err := k.env.links.channel(k.ctx)
	if err != nil {
		return nil, err
	}
	k.ch, k.release = ch, release
	return ch, nil
}

func (k *keys) drop() {
	if k.ch != nil {
		k.ch.Close()
		k.release()
		k.ch = nil
	}
}

// isHeld reports whether key has a held queue.
func (k *keys) isHeld(key string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if held, known := k.held[key]; known {
		return held, nil
	}
	ch, err := k.channel()
	if err != nil {
		return false, err
	}
	_, err = ch.QueueDeclarePassive(k.queue(key), true, false, false, false, nil)
	if isNotFound(err) {
		k.drop() // the broker closed the channel
	} else if err != nil {
		return false, err
	}
	k.remember(key, err == nil)
	return err == nil, nil
}

func (k *keys) remember(key string, held bool) {
	if len(k.held) >= maxKnownKeys {
		clear(k.held)
	}
	k.held[key] = held
}

// redeclareHeld declares again the held queue of every key known to be
// held: an operator may have deleted one while events of the key are
// moved into it. The key's head is still on its way and releases them. (A
// deleted record is declared by the release that finds it missing.)
func (k *keys) redeclareHeld() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var errs []error
	for key, held := range k.held {
		if !held {
			continue
		}
		ch, err := k.channel()
		if err == nil {
			err = k.declare(ch, k.queue(key))
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// headRecord is the one message of a held key's record queue
// P.S.held.<hash>.head: which event is the key's head now. A head that
// comes back after a crash (acked too late) finds another event recorded
// and releases nothing, so a key never has two heads.
type headRecord struct {
	Seq  int64     `json:"seq"`
	Head string    `json:"head"`
	At   time.Time `json:"at,omitzero"` // when it became the head; zero in records of older versions
}

func (k *keys) record(key string) string { return k.queue(key) + ".head" }

func (k *keys) declare(ch *amqp.Channel, queue string) error {
	_, err := ch.QueueDeclare(queue,
		true,  // durable
		false, // auto-delete
		false, // exclusive
		false, // no-wait
		amqp.Table{"x-queue-type": k.s.cfg.Broker.QueueType})
	return err
}

// hold makes head the head of key: declares the key's held queue and its
// record, and writes a record naming head, in place of the one there. A
// head that fails again keeps the time it became the head; rewriting its
// record rather than reading and requeueing it keeps the record's delivery
// count at zero (a quorum queue drops a message redelivered past its
// delivery limit). Only the key's head, or an event of a key that was not
// held, is attempted and can get here; another name in the record is one
// left by a crash, or the same event's before it got an id of its own
// (stamped).
func (k *keys) hold(key, head string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	ch, err := k.channel()
	if err != nil {
		return err
	}
	if err := k.declare(ch, k.queue(key)); err != nil {
		return fmt.Errorf("declare held queue for a key: %w", err)
	}
	if err := k.declare(ch, k.record(key)); err != nil {
		return fmt.Errorf("declare head record for a key: %w", err)
	}
	records, err := k.takeRecords(key)
	if err != nil {
		return err
	}
	rec, ok := current(records)
	since := time.Now().UTC()
	if ok && rec.Head == head && !rec.At.IsZero() {
		since = rec.At
	}
	if err := k.writeRecord(key, headRecord{Seq: rec.Seq + 1, Head: head, At: since}); err != nil {
		requeueAll(records)
		return err
	}
	ackAll(records)
	k.setHead(key, head, since)
	k.remember(key, true)
	return nil
}

// takeRecords gets, unacked, every message of key's record queue (one,
// or two after a crash between writing a record and acking the old one).
// A missing record queue (an operator deleted it) is no record; the 404
// closed the channel, so callers take k.channel() again after this.
func (k *keys) takeRecords(key string) ([]amqp.Delivery, error) {
	ch, err := k.channel()
	if err != nil {
		return nil, err
	}
	var out []amqp.Delivery
	for {
		d, ok, err := ch.Get(k.record(key), false)
		if err != nil {
			requeueAll(out)
			if isNotFound(err) {
				k.drop()
				return nil, nil
			}
			return nil, fmt.Errorf("read a key's head record: %w", err)
		}
		if !ok {
			return out, nil
		}
		out = append(out, d)
	}
}

// isHead reports whether id is the recorded head of key, or whether key
// has no record to say otherwise. The warren-key-head header alone proves
// nothing: the publishing application could set it. A release writes the
// record of the head it moved before another attempt of the key starts
// (one event of a key is in flight at a time), so a true head always finds
// itself recorded.
func (k *keys) isHead(key, id string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	head, ok, err := k.recordedHead(key, id)
	return !ok || head == id, err
}

// headsKey reports whether key's record names id: a marked event that the
// key expression now puts under another key still heads the key it was
// held under only then.
func (k *keys) headsKey(key, id string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	head, ok, err := k.recordedHead(key, id)
	return ok && head == id, err
}

// recordedHead is the head key's record names (ok false: no record). When
// this session last wrote or read it naming id, that is the answer without
// a read, which would count as one more delivery of the record. Any other
// answer is read: a consumer before this one may still have been finishing
// an attempt and released the key. k.mu is held.
func (k *keys) recordedHead(key, id string) (head string, ok bool, err error) {
	if h, known := k.heads[key]; known && h.head == id {
		return id, true, nil
	}
	rec, ok, err := k.readRecord(key)
	return rec.Head, ok, err
}

// readRecord reads key's record, leaves it in place, and remembers what it
// names (nothing, when there is none). k.mu is held.
func (k *keys) readRecord(key string) (headRecord, bool, error) {
	records, err := k.takeRecords(key)
	if err != nil {
		return headRecord{}, false, err
	}
	requeueAll(records)
	rec, ok := current(records)
	k.setHead(key, rec.Head, rec.At)
	return rec, ok, nil
}

// headLate is how long past the longest its retries may take a held key's
// head may stay away before warren warns that it may be lost, and how
// often it warns again.
var headLate = 10 * time.Minute

// checkLate warns when key's head has been away longer than its retries
// may take (as many as there are delays, each up to the longest one: a
// Retry-After picks the tier) plus headLate. A head that left the
// subscription's queues without an outcome warren decided (dead-lettered by
// the broker at a quorum queue's delivery limit, purged by an operator)
// holds its key for good, and nothing else would say so; a work queue that
// far behind warns too. It runs when an event of the key is moved aside,
// and reads the record only for a key held before this session.
func (k *keys) checkLate(key string, now time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	h, known := k.heads[key]
	if !known {
		if _, _, err := k.readRecord(key); err != nil {
			return // the move that follows retries and logs broker errors
		}
		h = k.heads[key]
	}
	var retries time.Duration
	if delays := k.s.opts.Retry.Delays; len(delays) > 0 {
		retries = time.Duration(len(delays)) * delays[len(delays)-1]
	}
	late := now.Sub(h.since) - retries
	if h.since.IsZero() || late <= headLate || now.Sub(h.warned) < headLate {
		return
	}
	h.warned = now
	k.heads[key] = h
	k.s.log.Warn("a held key's head is late; the key's later events wait for it",
		"held_queue", k.queue(key), "head", h.head, "head_since", h.since, "late_by", late.Round(time.Second).String())
}

// setHead remembers that head heads key since then; k.mu is held.
func (k *keys) setHead(key, head string, since time.Time) {
	h := k.heads[key]
	if h.head != head {
		h = headTime{head: head} // a new head: not warned about yet
	}
	h.since = since
	if len(k.heads) >= maxKnownKeys {
		clear(k.heads)
	}
	k.heads[key] = h
}

// current is the newest of records; ok is false when there is none.
func current(records []amqp.Delivery) (rec headRecord, ok bool) {
	for _, d := range records {
		var r headRecord
		if json.Unmarshal(d.Body, &r) == nil && (!ok || r.Seq > rec.Seq) {
			rec, ok = r, true
		}
	}
	return rec, ok
}

func (k *keys) writeRecord(key string, r headRecord) error {
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return k.env.copies.publish(k.env.hard, "", k.record(key), amqp.Publishing{
		MessageId: fmt.Sprintf("%s#%d", r.Head, r.Seq), ContentType: "application/json", Body: body,
	})
}

func requeueAll(ds []amqp.Delivery) {
	for _, d := range ds {
		_ = d.Nack(false, true)
	}
}

func ackAll(ds []amqp.Delivery) {
	for _, d := range ds {
		_ = d.Ack(false)
	}
}

// releaseKey, when head is the key's recorded head, moves the key's next
// held event back to the work queue as the new head (and records it), or
// deletes the held queue and the record when nothing is held any more. A
// key that is not held, or whose recorded head is another event (this head
// released it already, before a crash), has nothing to release.
func (k *keys) releaseKey(key, head string) error {
	if held, err := k.isHeld(key); err != nil || !held {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	records, err := k.takeRecords(key)
	if err != nil {
		return err
	}
	rec, ok := current(records)
	if ok && rec.Head != head {
		requeueAll(records)
		k.setHead(key, rec.Head, rec.At)
		return nil
	}
	ch, err := k.channel()
	if err != nil {
		requeueAll(records)
		return err
	}
	queue := k.queue(key)
	var next amqp.Delivery
	for {
		d, got, err := ch.Get(queue, false)
		if err != nil {
			requeueAll(records)
			if isNotFound(err) {
				// An operator deleted it: nothing is held any more. The
				// record left behind is rewritten when the key is held again.
				k.drop()
				k.remember(key, false)
				delete(k.heads, key)
				return nil
			}
			return fmt.Errorf("take the next event of a held key: %w", err)
		}
		if got && event.FromDelivery(&d, time.Now()).ID == head {
			// This head's own copy, left behind by a crash before its ack
			// in the held queue: it is on its way already.
			_ = d.Ack(false)
			continue
		}
		if !got {
			// An event of the key moved aside meanwhile (possible only
			// while its head is handled outside the key's turn, after a
			// reload) fails the delete below, and the release is tried
			// again; one whose move finds the queue gone decides again
			// (moveAside).
			if _, err := ch.QueueDelete(queue, false, true, false); err != nil && !isNotFound(err) {
				requeueAll(records)
				return fmt.Errorf("delete a released key's held queue: %w", err)
			}
			ackAll(records)
			if _, err := ch.QueueDelete(k.record(key), false, false, false); err != nil && !isNotFound(err) {
				return fmt.Errorf("delete a released key's head record: %w", err)
			}
			k.remember(key, false)
			delete(k.heads, key)
			return nil
		}
		next = d
		break
	}
	if !ok {
		// An operator deleted the record: it is declared before the move,
		// or the move would be made again once the record could not be
		// written, and the key would have two heads.
		if err := k.declare(ch, k.record(key)); err != nil {
			_ = next.Nack(false, true)
			return fmt.Errorf("declare head record for a key: %w", err)
		}
	}
	ev := event.FromDelivery(&next, time.Now())
	msg := event.Move(&next, ev)
	event.MarkHead(msg.Headers, key)
	now := time.Now().UTC()
	err = k.env.copies.publish(k.env.hard, "", k.s.work, msg)
	if err == nil {
		err = k.writeRecord(key, headRecord{Seq: rec.Seq + 1, Head: ev.ID, At: now})
	}
	if err != nil {
		_ = next.Nack(false, true) // back to the front of the held queue
		requeueAll(records)
		return err
	}
	_ = next.Ack(false)
	ackAll(records)
	k.setHead(key, ev.ID, now)
	return nil
}

func (k *keys) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.drop()
}

// handleOrdered settles one event of an ordered subscription, after every
// earlier event of its key: a later event of a held key is moved to the
// key's held queue; the key's head, or an event of a key not held, is
// attempted.
func (s *subscriber) handleOrdered(ctx context.Context, env *env, k *keys, d *amqp.Delivery, key string) {
	ev := event.FromDelivery(d, time.Now())
	// ask answers a question about the key from the broker, retrying; when
	// shutdown cuts it short the event is requeued: it could come back
	// after a later one of its key, so it is held while unanswered.
	ask := func(question string, answer func() (bool, error)) (yes, ok bool) {
		ok = s.persist(env, &ev, "tell whether "+question, func() (err error) {
			yes, err = answer()
			return err
		})
		if !ok {
			s.requeue(d, &ev, "could not tell whether "+question+" before shutdown")
		}
		return yes, ok
	}
	if marked, ok := event.HeldKey(d); ok && marked != key {
		// The key expression puts this head under another key than the
		// one it was held under (a reload changed it): it still heads
		// that key, and releases it, if the key's record names it.
		heads, ok := ask("the event heads the key it was held under", func() (bool, error) { return k.headsKey(marked, ev.ID) })
		if !ok {
			return
		}
		if heads {
			key = marked
		}
	}
	for {
		held, ok := ask("the event's key is held", func() (bool, error) { return k.isHeld(key) })
		if !ok {
			return
		}
		waits := held
		if held && event.IsKeyHead(d) {
			head, ok := ask("the event heads its key", func() (bool, error) { return k.isHead(key, ev.ID) })
			if !ok {
				return
			}
			waits = !head
		}
		if !waits {
			break
		}
		k.checkLate(key, time.Now())
		if moved := s.moveAside(env, k, d, &ev, key); moved {
			return
		}
		// The key was released meanwhile (its head is handled outside
		// this key's turn, when a reload changed or broke the key
		// expression): decide again.
	}
	s.attempt(ctx, env, d, &keyHooks{
		key:     key,
		hold:    func(head string) error { return k.hold(key, head) },
		release: func() error { return k.releaseKey(key, ev.ID) },
	}, nil)
}

// moveAside moves d to key's held queue and acks it, as replace does,
// and reports whether it did. A move that finds the held queue gone
// because the key was released meanwhile is not retried: false, and d is
// still to settle. Shutdown requeues d (true: nothing left to do).
func (s *subscriber) moveAside(env *env, k *keys, d *amqp.Delivery, ev *event.Event, key string) bool {
	released := false
	stored := s.persist(env, ev, "store the held-key copy", func() error {
		err := env.copies.publish(env.hard, "", k.queue(key), event.Move(d, *ev))
		if (errors.Is(err, broker.ErrUnroutable) || isNotFound(err)) && !k.knownHeld(key) {
			released = true
			return nil
		}
		return err
	})
	switch {
	case released:
		return false
	case !stored:
		s.requeue(d, ev, "could not store the held-key copy before shutdown")
	default:
		ack(d, s.log)
	}
	return true
}

// knownHeld reports what this session knows of key being held, without
// asking the broker.
func (k *keys) knownHeld(key string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.held[key]
}

// markedHead are the hooks of an event parked because its key expression
// fails (a reload may have changed it) when it is marked the head of a
// key: parking it releases that key if the key's record names it, so the
// events held behind it are not stranded. nil when it is not marked.
func (k *keys) markedHead(d *amqp.Delivery, id string) *keyHooks {
	key, ok := event.HeldKey(d)
	if !ok {
		return nil
	}
	return &keyHooks{key: key, release: func() error { return k.releaseKey(key, id) }}
}

// orderingKey evaluates the subscription's ordering key for d.
func (s *subscriber) orderingKey(d *amqp.Delivery) (string, error) {
	if s.rulesErr != nil {
		return "", s.rulesErr
	}
	key, _, err := s.rules.OrderingKey(rules.NewInput(event.FromDelivery(d, time.Now()), d.Headers))
	return key, err
}

// ordered reports whether the subscription delivers in order per key.
func (s *subscriber) ordered() bool {
	return s.rules != nil && s.rules.Ordered()
}
