package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/spf13/cobra"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/config"
)

func (a *app) deadCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dead",
		Short: "List, replay or purge parked messages",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRunE("subcommand"),
	}
	var limit int
	sub := func(use, short string, run func(ctx context.Context, cfg *config.Config, s config.Subscription, conn *amqp.Connection) error) *cobra.Command {
		c := &cobra.Command{
			Use:   use + " SUBSCRIPTION",
			Short: short,
			Args:  exactArgs(1, "one SUBSCRIPTION"),
			RunE: func(cmd *cobra.Command, args []string) error {
				if limit < 0 {
					return usagef("--limit must be 0 (all) or more, got %d", limit)
				}
				cfg, err := a.loadConfig()
				if err != nil {
					return err
				}
				s, ok := cfg.Subscription(args[0])
				if !ok {
					return usagef("no subscription %q in %s", args[0], cfg.Path)
				}
				conn, err := broker.Dial(cmd.Context(), cfg.Broker, "dead-cli")
				if err != nil {
					return err
				}
				defer conn.Close()
				return run(cmd.Context(), cfg, s, conn)
			},
		}
		a.addConfigFlag(c)
		c.Flags().IntVar(&limit, "limit", 0, "at most N messages, oldest first (0: all)")
		return c
	}
	cmd.AddCommand(
		sub("list", "Show parked messages without consuming them", func(_ context.Context, cfg *config.Config, s config.Subscription, conn *amqp.Connection) error {
			return a.deadList(cfg.DeadQueue(s), conn, limit)
		}),
		sub("replay", "Move parked messages back to the work queue with the attempt count reset", func(ctx context.Context, cfg *config.Config, s config.Subscription, conn *amqp.Connection) error {
			return a.deadReplay(ctx, cfg.DeadQueue(s), cfg.WorkQueue(s), conn, limit)
		}),
		sub("purge", "Delete parked messages", func(_ context.Context, cfg *config.Config, s config.Subscription, conn *amqp.Connection) error {
			return a.deadPurge(cfg.DeadQueue(s), conn, limit)
		}),
	)
	return cmd
}

// eachParked gets up to limit messages (0: all that are there now) from
// queue and calls fn with each, unacked. The channel is closed afterwards,
// so whatever fn did not settle goes back to the queue.
func eachParked(conn *amqp.Connection, queue string, limit int, fn func(ch *amqp.Channel, d *amqp.Delivery) error) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("queue %q not found (has `warren run` or `warren topology --apply` run?): %w", queue, err)
	}
	// Only what is there now: replayed or requeued messages are not seen twice.
	n := q.Messages
	if limit > 0 {
		n = min(n, limit)
	}
	for range n {
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		if err := fn(ch, &d); err != nil {
			return err
		}
	}
	return nil
}

func (a *app) deadList(queue string, conn *amqp.Connection, limit int) error {
	w := tabwriter.NewWriter(a.env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "EVENT ID\tTYPE\tATTEMPTS\tLAST STATUS\tPARKED AT\tLAST ERROR")
	count := 0
	err := eachParked(conn, queue, limit, func(_ *amqp.Channel, d *amqp.Delivery) error {
		p := event.ReadParked(d)
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\n", p.ID, p.Type, p.Attempts, p.LastStatus, p.ParkedAt, p.LastError)
		count++
		return nil // left unacked: closing the channel puts it back
	})
	if err != nil {
		return err
	}
	w.Flush()
	fmt.Fprintf(a.env.Stdout, "%d parked message(s) listed from %s\n", count, queue)
	return nil
}

func (a *app) deadReplay(ctx context.Context, dead, work string, conn *amqp.Connection, limit int) error {
	pubCh, err := conn.Channel()
	if err != nil {
		return err
	}
	pub, err := broker.NewPublisher(pubCh)
	if err != nil {
		return err
	}
	defer pub.Close()
	count := 0
	err = eachParked(conn, dead, limit, func(_ *amqp.Channel, d *amqp.Delivery) error {
		ev := event.FromDelivery(d, time.Now())
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		// Confirmed on the work queue before it leaves the dead queue.
		if err := pub.Publish(pctx, "", work, event.Replay(d, ev)); err != nil {
			return fmt.Errorf("replay %s: %w", ev.ID, err)
		}
		count++
		return d.Ack(false)
	})
	if count > 0 || err == nil {
		// Say what moved even when a later message failed.
		fmt.Fprintf(a.env.Stdout, "replayed %d message(s) from %s to %s\n", count, dead, work)
	}
	return err
}

func (a *app) deadPurge(queue string, conn *amqp.Connection, limit int) error {
	count := 0
	err := eachParked(conn, queue, limit, func(_ *amqp.Channel, d *amqp.Delivery) error {
		count++
		return d.Ack(false)
	})
	if count > 0 || err == nil {
		fmt.Fprintf(a.env.Stdout, "purged %d message(s) from %s\n", count, queue)
	}
	return err
}
