package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/spf13/cobra"

	"github.com/warren-hq/warren/agent/broker"
)

func (a *app) publishCommand() *cobra.Command {
	var (
		id          string
		contentType string
		headers     []string
	)
	cmd := &cobra.Command{
		Use:   "publish ROUTING_KEY [BODY | @FILE | -]",
		Short: "Publish one persistent, confirmed event to the configured exchange",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usagef("want ROUTING_KEY and an optional BODY, @FILE or -, got %d argument(s)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			body := []byte("{}")
			if len(args) == 2 {
				if body, err = a.readBody(args[1]); err != nil {
					return err
				}
			}
			table := amqp.Table{}
			for _, h := range headers {
				k, v, ok := strings.Cut(h, "=")
				if !ok || k == "" {
					return usagef("--header %q: want NAME=VALUE", h)
				}
				table[k] = v
			}
			if id == "" {
				id = newEventID()
			}
			conn, err := broker.Dial(cmd.Context(), cfg.Broker, "publish-cli")
			if err != nil {
				return err
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				return err
			}
			pub, err := broker.NewPublisher(ch)
			if err != nil {
				return err
			}
			defer pub.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			err = pub.Publish(ctx, cfg.Broker.Exchange, args[0], amqp.Publishing{
				MessageId:   id,
				Timestamp:   time.Now(),
				ContentType: contentType,
				Headers:     table,
				Body:        body,
			})
			if errors.Is(err, broker.ErrUnroutable) {
				return fmt.Errorf("no queue is bound for %q on exchange %q: the event was not stored (see `warren routes` and `warren topology --apply`)", args[0], cfg.Broker.Exchange)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(a.env.Stdout, "published %s %s (%d bytes)\n", id, args[0], len(body))
			return nil
		},
	}
	a.addConfigFlag(cmd)
	cmd.Flags().StringVar(&id, "id", "", "message_id, the webhook-id receivers deduplicate on (default: a random evt_ id)")
	cmd.Flags().StringVar(&contentType, "content-type", "application/json", "content_type property")
	cmd.Flags().StringArrayVar(&headers, "header", nil, "message header NAME=VALUE (repeatable)")
	return cmd
}

// readBody reads BODY, @FILE or - (standard input).
func (a *app) readBody(arg string) ([]byte, error) {
	switch {
	case arg == "-":
		return io.ReadAll(a.env.Stdin)
	case strings.HasPrefix(arg, "@"):
		return os.ReadFile(arg[1:])
	}
	return []byte(arg), nil
}

func newEventID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return "evt_" + hex.EncodeToString(b[:])
}
