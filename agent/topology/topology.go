// Package topology turns a config into the exchanges, queues and bindings
// warren needs, prints that plan and declares it on the broker.
package topology

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/config"
)

// Plan is every broker object a config implies.
type Plan struct {
	Exchange Exchange
	// Tiers are the retry queues shared by every subscription of the
	// prefix, each fed by a fanout exchange of the same name.
	Tiers  []Queue
	Queues []Queue // per subscription: work, then dead
}

// Exchange is the topic exchange the application publishes to.
type Exchange struct {
	Name    string
	Declare bool // false: it must already exist
}

// Queue is one durable queue and the patterns that bind it to the exchange.
type Queue struct {
	Name     string
	Args     amqp.Table
	Patterns []string
}

// For returns the plan for a whole config.
func For(cfg *config.Config) Plan {
	p := Shared(cfg)
	for _, s := range cfg.Subscriptions {
		p.Queues = append(p.Queues, Subscription(cfg, s)...)
	}
	return p
}

// Shared is the part of the plan every subscription uses: the exchange and
// the retry tiers.
//
// A copy to retry after delay d is published to the fanout exchange P.retry.<d>
// with the subscription's work queue as routing key. The tier queue has a
// TTL and dead-letters to the default exchange without a routing key of its
// own, so each expired message goes back to the work queue its key names.
// Every message in a tier waits the same time, so none waits behind a
// longer one.
func Shared(cfg *config.Config) Plan {
	p := Plan{Exchange: Exchange{Name: cfg.Broker.Exchange, Declare: cfg.Broker.DeclareExchange}}
	for _, d := range cfg.Tiers() {
		t := deadLetter(cfg, amqp.Table{"x-queue-type": cfg.Broker.QueueType}, "")
		t["x-message-ttl"] = d.Milliseconds()
		p.Tiers = append(p.Tiers, Queue{Name: cfg.RetryQueue(d), Args: t})
	}
	if j := cfg.Broker.Journal; j != nil {
		p.Queues = append(p.Queues,
			// Bound with "#": the broker keeps every event the app publishes.
			Queue{Name: cfg.JournalStream(), Args: StreamArgs(*j), Patterns: []string{"#"}},
			// Written by warren itself, never bound.
			Queue{Name: cfg.AttemptsStream(), Args: StreamArgs(*j)})
	}
	return p
}

// maxSegment is RabbitMQ's default stream segment size.
const maxSegment = 500_000_000

// StreamArgs declares a stream with the journal's retention. Retention
// removes whole segments, so a segment is at most a tenth of max_bytes:
// otherwise a small journal would keep up to a 500MB segment past its limit.
func StreamArgs(j config.Journal) amqp.Table {
	return amqp.Table{
		"x-queue-type":                    "stream",
		"x-max-age":                       maxAge(j.MaxAge),
		"x-max-length-bytes":              int64(j.MaxBytes),
		"x-stream-max-segment-size-bytes": min(max(int64(j.MaxBytes)/10, 64*1024), maxSegment),
	}
}

// maxAge writes a duration as RabbitMQ's x-max-age reads it: a whole number
// and one unit of D, h, m or s.
func maxAge(d time.Duration) string {
	for _, u := range []struct {
		unit string
		size time.Duration
	}{{"D", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}} {
		if d%u.size == 0 {
			return fmt.Sprintf("%d%s", d/u.size, u.unit)
		}
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

// IsStream reports whether q is a stream rather than a queue.
func (q Queue) IsStream() bool {
	return q.Args["x-queue-type"] == "stream"
}

// Subscription returns the queues of one subscription: work and dead.
func Subscription(cfg *config.Config, s config.Subscription) []Queue {
	work, dead := cfg.WorkQueue(s), cfg.DeadQueue(s)
	workArgs := amqp.Table{"x-queue-type": cfg.Broker.QueueType}
	if cfg.Broker.QueueType == config.QueueQuorum {
		// Since RabbitMQ 4.0 a quorum queue drops a message redelivered more
		// than 20 times unless it has somewhere to dead-letter it.
		workArgs = deadLetter(cfg, workArgs, dead)
	}
	if s.Ordering.Key != "" {
		// One warren at a time delivers an ordered subscription; another
		// takes over when it goes.
		workArgs["x-single-active-consumer"] = true
	}
	if s.MaxPriority > 0 {
		// Config allows it on classic queues only.
		workArgs["x-max-priority"] = int32(s.MaxPriority)
	}
	return []Queue{
		{Name: work, Args: workArgs, Patterns: s.Events},
		{Name: dead, Args: amqp.Table{"x-queue-type": cfg.Broker.QueueType}},
	}
}

// deadLetter routes what a queue expires or rejects through the default
// exchange, to queue when it is set, else by the message's own routing key.
// Quorum queues dead-letter at most once unless both extra arguments are
// set.
func deadLetter(cfg *config.Config, t amqp.Table, queue string) amqp.Table {
	t["x-dead-letter-exchange"] = ""
	if queue != "" {
		t["x-dead-letter-routing-key"] = queue
	}
	if cfg.Broker.QueueType == config.QueueQuorum {
		t["x-dead-letter-strategy"] = "at-least-once"
		t["x-overflow"] = "reject-publish"
	}
	return t
}

// Write prints the plan, one object per line, bindings indented under their
// queue.
func (p Plan) Write(w io.Writer) error {
	var b strings.Builder
	if p.Exchange.Declare {
		fmt.Fprintf(&b, "exchange %s (topic, durable)\n", p.Exchange.Name)
	} else {
		fmt.Fprintf(&b, "exchange %s (topic, must exist)\n", p.Exchange.Name)
	}
	for _, q := range p.Tiers {
		fmt.Fprintf(&b, "exchange %s (fanout, durable)\n", q.Name)
		fmt.Fprintf(&b, "queue %s (durable)%s\n", q.Name, formatArgs(q.Args))
		fmt.Fprintf(&b, "  bound to %s\n", q.Name)
	}
	for _, q := range p.Queues {
		kind := "queue"
		if q.IsStream() {
			kind = "stream"
		}
		fmt.Fprintf(&b, "%s %s (durable)%s\n", kind, q.Name, formatArgs(q.Args))
		for _, pattern := range q.Patterns {
			fmt.Fprintf(&b, "  bound to %s with %q\n", p.Exchange.Name, pattern)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func formatArgs(t amqp.Table) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(t)) {
		v := fmt.Sprint(t[k])
		if s, ok := t[k].(string); ok {
			v = fmt.Sprintf("%q", s)
		}
		fmt.Fprintf(&b, " %s=%s", k, v)
	}
	return b.String()
}

// Apply declares the plan on a channel of its own, after checking that the
// broker has streams if the plan needs them.
func Apply(conn *amqp.Connection, p Plan) error {
	if err := RequireStreams(conn, p); err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	return Declare(ch, p)
}

// RequireStreams fails with a clear error when p has a stream and the
// broker behind conn is older than 3.9.
func RequireStreams(conn *amqp.Connection, p Plan) error {
	if slices.ContainsFunc(p.Queues, Queue.IsStream) {
		return broker.RequireStreams(conn)
	}
	return nil
}

// Declare declares the plan on ch. Declaring is idempotent; a queue that
// exists with other arguments is reported with the fix. A failed declare
// closes ch.
func Declare(ch *amqp.Channel, p Plan) error {
	var err error
	if p.Exchange.Declare {
		err = ch.ExchangeDeclare(p.Exchange.Name, amqp.ExchangeTopic,
			true,  // durable
			false, // auto-delete
			false, // internal
			false, // no-wait
			nil)
	} else {
		err = ch.ExchangeDeclarePassive(p.Exchange.Name, amqp.ExchangeTopic, true, false, false, false, nil)
	}
	if err != nil {
		return exchangeError(p.Exchange, err)
	}
	for _, q := range p.Tiers {
		if err := DeclareTier(ch, q); err != nil {
			return err
		}
	}
	return DeclareQueues(ch, p.Exchange.Name, p.Queues)
}

// DeclareTier declares one retry tier: its fanout exchange and its queue.
func DeclareTier(ch *amqp.Channel, q Queue) error {
	if err := ch.ExchangeDeclare(q.Name, amqp.ExchangeFanout,
		true,  // durable
		false, // auto-delete
		false, // internal
		false, // no-wait
		nil); err != nil {
		return fmt.Errorf("declare exchange %q: %w", q.Name, err)
	}
	if err := declareQueue(ch, q); err != nil {
		return err
	}
	if err := ch.QueueBind(q.Name, "", q.Name, false, nil); err != nil {
		return fmt.Errorf("bind queue %q to %q: %w", q.Name, q.Name, err)
	}
	return nil
}

// DeclareQueues declares queues and binds each to exchange with its
// patterns.
func DeclareQueues(ch *amqp.Channel, exchange string, queues []Queue) error {
	for _, q := range queues {
		if err := declareQueue(ch, q); err != nil {
			return err
		}
		for _, pattern := range q.Patterns {
			if err := ch.QueueBind(q.Name, pattern, exchange, false, nil); err != nil {
				return fmt.Errorf("bind queue %q to %q with %q: %w", q.Name, exchange, pattern, err)
			}
		}
	}
	return nil
}

// Unbind removes bindings of a queue that the config no longer lists.
// Unbinding a binding that does not exist is not an error in RabbitMQ.
func Unbind(ch *amqp.Channel, exchange, queue string, patterns []string) error {
	for _, pattern := range patterns {
		if err := ch.QueueUnbind(queue, pattern, exchange, nil); err != nil {
			return fmt.Errorf("unbind queue %q from %q with %q: %w", queue, exchange, pattern, err)
		}
	}
	return nil
}

func declareQueue(ch *amqp.Channel, q Queue) error {
	_, err := ch.QueueDeclare(q.Name,
		true,  // durable
		false, // auto-delete
		false, // exclusive
		false, // no-wait
		q.Args)
	var amqpErr *amqp.Error
	if errors.As(err, &amqpErr) && amqpErr.Code == amqp.PreconditionFailed && q.IsStream() {
		return fmt.Errorf("stream %q exists with other arguments (were broker.journal's sizes changed?): "+
			"a stream's arguments cannot change in place; keep the old sizes, or delete it with "+
			"`rabbitmqctl delete_queue %s`, losing what it holds, and start warren again: %w",
			q.Name, q.Name, err)
	}
	if errors.As(err, &amqpErr) && amqpErr.Code == amqp.PreconditionFailed {
		return &ConflictError{Queue: q.Name, Type: fmt.Sprint(q.Args["x-queue-type"]), Err: err}
	}
	if err != nil {
		return fmt.Errorf("declare queue %q: %w", q.Name, err)
	}
	return nil
}

// ConflictError is a queue that exists with other arguments than the
// config implies, most often because broker.queue_type changed.
type ConflictError struct {
	Queue string
	Type  string // the queue type the config asks for
	Err   error
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("queue %q exists with other arguments than this config gives it (broker.queue_type %s, "+
		"retry tiers, max_priority): a queue's type and arguments cannot change in place; "+
		"drain it, then delete it with `rabbitmqctl delete_queue %s` and start warren again, "+
		"or use another broker.queue_prefix (the broker said: %v)", e.Queue, e.Type, e.Queue, e.Err)
}

func (e *ConflictError) Unwrap() error { return e.Err }

func exchangeError(e Exchange, err error) error {
	var amqpErr *amqp.Error
	if errors.As(err, &amqpErr) {
		switch amqpErr.Code {
		case amqp.NotFound:
			return fmt.Errorf("exchange %q does not exist: create it or set broker.declare_exchange: true: %w", e.Name, err)
		case amqp.PreconditionFailed:
			return fmt.Errorf("exchange %q exists with another type or settings: warren needs a durable topic exchange: %w", e.Name, err)
		}
	}
	return fmt.Errorf("declare exchange %q: %w", e.Name, err)
}
