// Package topology turns a config into the exchange, queues and bindings
// warren needs, prints that plan and declares it on the broker.
package topology

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/config"
)

// Plan is every broker object a config implies.
type Plan struct {
	Exchange Exchange
	Queues   []Queue
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
	p := Plan{Exchange: Exchange{Name: cfg.Broker.Exchange, Declare: cfg.Broker.DeclareExchange}}
	for _, s := range cfg.Subscriptions {
		p.Queues = append(p.Queues, Subscription(cfg, s)...)
	}
	return p
}

// Subscription returns the queues of one subscription: work, tiers, dead.
func Subscription(cfg *config.Config, s config.Subscription) []Queue {
	quorum := cfg.Broker.QueueType == config.QueueQuorum
	work := cfg.WorkQueue(s)
	dead := cfg.DeadQueue(s)
	args := func() amqp.Table { return amqp.Table{"x-queue-type": cfg.Broker.QueueType} }
	// deadLetterTo routes what a queue expires or rejects to another queue.
	// Quorum queues dead-letter at most once unless both extra arguments are
	// set.
	deadLetterTo := func(t amqp.Table, queue string) amqp.Table {
		t["x-dead-letter-exchange"] = ""
		t["x-dead-letter-routing-key"] = queue
		if quorum {
			t["x-dead-letter-strategy"] = "at-least-once"
			t["x-overflow"] = "reject-publish"
		}
		return t
	}

	workArgs := args()
	if quorum {
		// Since RabbitMQ 4.0 a quorum queue drops a message redelivered more
		// than 20 times unless it has somewhere to dead-letter it.
		workArgs = deadLetterTo(workArgs, dead)
	}
	if s.MaxPriority > 0 {
		// Config allows it on classic queues only.
		workArgs["x-max-priority"] = int32(s.MaxPriority)
	}
	queues := []Queue{{Name: work, Args: workArgs, Patterns: s.Events}}
	for _, d := range s.Tiers() {
		t := deadLetterTo(args(), work)
		t["x-message-ttl"] = d.Milliseconds()
		queues = append(queues, Queue{Name: cfg.RetryQueue(s, d), Args: t})
	}
	return append(queues, Queue{Name: dead, Args: args()})
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
	for _, q := range p.Queues {
		fmt.Fprintf(&b, "queue %s (durable)%s\n", q.Name, formatArgs(q.Args))
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

// Apply declares the plan. Declaring is idempotent; a queue that exists
// with other arguments is reported with the fix.
func Apply(conn *amqp.Connection, p Plan) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()

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
	for _, q := range p.Queues {
		if err := declareQueue(ch, q); err != nil {
			return err
		}
		for _, pattern := range q.Patterns {
			if err := ch.QueueBind(q.Name, pattern, p.Exchange.Name, false, nil); err != nil {
				return fmt.Errorf("bind queue %q to %q with %q: %w", q.Name, p.Exchange.Name, pattern, err)
			}
		}
	}
	return nil
}

// Unbind removes bindings of a queue that the config no longer lists.
// Unbinding a binding that does not exist is not an error in RabbitMQ.
func Unbind(conn *amqp.Connection, exchange, queue string, patterns []string) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
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
	if errors.As(err, &amqpErr) && amqpErr.Code == amqp.PreconditionFailed {
		return fmt.Errorf("queue %q exists with other arguments: "+
			"a queue's settings cannot change in place; drain it, then delete it with "+
			"`rabbitmqctl delete_queue %s` and start warren again, or use another broker.queue_prefix: %w",
			q.Name, q.Name, err)
	}
	if err != nil {
		return fmt.Errorf("declare queue %q: %w", q.Name, err)
	}
	return nil
}

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
