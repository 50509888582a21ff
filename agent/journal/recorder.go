package journal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Attempt is one delivery attempt's outcome, one JSON record in P.attempts.
type Attempt struct {
	Subscription string    `json:"subscription"`
	EventID      string    `json:"event_id"`
	Type         string    `json:"type"`
	Attempt      int       `json:"attempt"`
	Status       int       `json:"status"` // HTTP status, 0 when there was no answer
	DurationMS   int64     `json:"duration_ms"`
	Outcome      string    `json:"outcome"` // delivered, retry, parked, ...
	Error        string    `json:"error,omitempty"`
	At           time.Time `json:"at"` // when the attempt ended
}

// RecorderOptions size a Recorder; zero fields take the defaults.
type RecorderOptions struct {
	BatchSize     int           // publish when this many records wait (default 100)
	FlushInterval time.Duration // or when the oldest waited this long (default 200ms)
	BufferSize    int           // records held at most; beyond, the oldest are dropped (default 10,000)
}

// Recorder appends Attempts to the P.attempts stream in confirmed batches.
// Record never blocks delivery: records wait in a bounded buffer, and when
// the broker cannot keep up the oldest are dropped and counted.
type Recorder struct {
	stream string
	opts   RecorderOptions

	mu      sync.Mutex
	buf     []Attempt // ring buffer of cap BufferSize
	head, n int
	closed  bool
	running chan struct{} // closed when the current Run returns; nil when none runs

	wake    chan struct{} // a batch is ready
	closing chan struct{}
	once    sync.Once

	recorded, dropped atomic.Uint64
}

// NewRecorder returns a recorder writing to stream (P.attempts). Call Run
// to start publishing.
func NewRecorder(stream string, opts RecorderOptions) *Recorder {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 100
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 200 * time.Millisecond
	}
	if opts.BufferSize <= 0 {
		opts.BufferSize = 10_000
	}
	opts.BatchSize = min(opts.BatchSize, opts.BufferSize)
	return &Recorder{
		stream:  stream,
		opts:    opts,
		buf:     make([]Attempt, opts.BufferSize),
		wake:    make(chan struct{}, 1),
		closing: make(chan struct{}),
	}
}

// Record queues a for the stream. It never blocks: with the buffer full it
// drops the oldest record; after Close it drops a.
func (r *Recorder) Record(a Attempt) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.dropped.Add(1)
		return
	}
	r.push(a)
	ready := r.n >= r.opts.BatchSize
	r.mu.Unlock()
	if ready {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// push appends under r.mu, dropping the oldest record when full.
func (r *Recorder) push(a Attempt) {
	if r.n == len(r.buf) {
		r.head = (r.head + 1) % len(r.buf)
		r.n--
		r.dropped.Add(1)
	}
	r.buf[(r.head+r.n)%len(r.buf)] = a
	r.n++
}

// take removes up to max records from the front.
func (r *Recorder) take(max int) []Attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	batch := make([]Attempt, min(max, r.n))
	for i := range batch {
		batch[i] = r.buf[(r.head+i)%len(r.buf)]
		r.buf[(r.head+i)%len(r.buf)] = Attempt{}
	}
	r.head = (r.head + len(batch)) % len(r.buf)
	r.n -= len(batch)
	return batch
}

// putBack returns an unpublished batch to the front, dropping its oldest
// records if newer ones filled the buffer meanwhile.
func (r *Recorder) putBack(batch []Attempt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	room := len(r.buf) - r.n
	if drop := len(batch) - room; drop > 0 {
		r.dropped.Add(uint64(drop))
		batch = batch[drop:]
	}
	for i := len(batch) - 1; i >= 0; i-- {
		r.head = (r.head - 1 + len(r.buf)) % len(r.buf)
		r.buf[r.head] = batch[i]
		r.n++
	}
}

// Recorded is how many records the broker confirmed.
func (r *Recorder) Recorded() uint64 { return r.recorded.Load() }

// Dropped is how many records were dropped: buffer full, or recorded after
// Close.
func (r *Recorder) Dropped() uint64 { return r.dropped.Load() }

// Pending is how many records wait for the broker.
func (r *Recorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// flushTimeout bounds one batch's confirms, and the final flush.
const flushTimeout = 5 * time.Second

// Run publishes records on conn until ctx ends or Close is called, then
// flushes what is buffered (within 5s) and returns nil. A publish that
// fails puts its batch back and returns the error: call Run again on a new
// connection, and nothing buffered is lost. One Run at a time.
func (r *Recorder) Run(ctx context.Context, conn *amqp.Connection) error {
	done := make(chan struct{})
	r.mu.Lock()
	if r.running != nil {
		r.mu.Unlock()
		return errors.New("recorder already running")
	}
	r.running = done
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.running = nil
		r.mu.Unlock()
		close(done)
	}()

	pub, err := newConfirmer(conn, r.opts.BatchSize)
	if err != nil {
		return fmt.Errorf("record attempts: %w", err)
	}
	defer pub.close()
	tick := time.NewTicker(r.opts.FlushInterval)
	defer tick.Stop()
	for {
		all := false
		select {
		case <-r.wake:
		case <-tick.C:
			all = true
		case <-ctx.Done():
			return r.final(ctx, pub)
		case <-r.closing:
			return r.final(ctx, pub)
		}
		if err := r.flush(ctx, pub, all); err != nil {
			return err
		}
	}
}

// final flushes everything left, past the cancellation of ctx.
func (r *Recorder) final(ctx context.Context, pub *confirmer) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
	defer cancel()
	return r.flush(ctx, pub, true)
}

// flush publishes full batches, and with all the last partial one too.
func (r *Recorder) flush(ctx context.Context, pub *confirmer, all bool) error {
	for {
		r.mu.Lock()
		n := r.n
		r.mu.Unlock()
		if n == 0 || n < r.opts.BatchSize && !all {
			return nil
		}
		batch := r.take(r.opts.BatchSize)
		if err := r.publish(ctx, pub, batch); err != nil {
			r.putBack(batch)
			return fmt.Errorf("record attempts to %s: %w", r.stream, err)
		}
		r.recorded.Add(uint64(len(batch)))
	}
}

func (r *Recorder) publish(ctx context.Context, pub *confirmer, batch []Attempt) error {
	ctx, cancel := context.WithTimeout(ctx, flushTimeout)
	defer cancel()
	// One message per batch, one JSON record per line: the broker's cost
	// is per message, and a message per attempt made the journal slow
	// delivery down by a fifth.
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	for _, a := range batch {
		if err := enc.Encode(a); err != nil {
			return err
		}
	}
	first := batch[0]
	err := pub.publish(ctx, "", r.stream, amqp.Publishing{
		ContentType:  "application/x-ndjson",
		DeliveryMode: amqp.Persistent,
		MessageId:    first.EventID + "/" + first.Subscription + "/" + strconv.Itoa(first.Attempt) + "+" + strconv.Itoa(len(batch)-1),
		Timestamp:    first.At,
		Body:         body.Bytes(),
	})
	if err != nil {
		return err
	}
	return pub.wait(ctx)
}

// Attempts reads the records of one message of P.attempts; a message that
// is not one warren wrote gives none.
func Attempts(d *amqp.Delivery) []Attempt {
	var out []Attempt
	dec := json.NewDecoder(bytes.NewReader(d.Body))
	for {
		var a Attempt
		if dec.Decode(&a) != nil {
			return out
		}
		out = append(out, a)
	}
}

// Close stops Run after a final flush and waits for it; records after
// Close are dropped. Safe to call more than once, and without Run.
func (r *Recorder) Close() {
	r.once.Do(func() { close(r.closing) })
	r.mu.Lock()
	r.closed = true
	running := r.running
	r.mu.Unlock()
	if running != nil {
		<-running
	}
}
