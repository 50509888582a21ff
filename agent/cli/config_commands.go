package cli

import (
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/spf13/cobra"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/buildinfo"
	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/rules"
	"github.com/warren-hq/warren/agent/topic"
	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
)

func (a *app) validateCommand() *cobra.Command {
	var verbose bool
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a config file and report every problem",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			for _, w := range cfg.Warnings() {
				fmt.Fprintf(a.env.Stderr, "%s: warning: %s\n", cfg.Path, w)
			}
			if verbose {
				a.env.Stdout.Write(cfg.Effective())
			}
			fmt.Fprintf(a.env.Stdout, "%s: ok (%d subscriptions)\n", cfg.Path, len(cfg.Subscriptions))
			return nil
		},
	}
	a.addConfigFlag(cmd)
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "also print the resolved config (secrets masked)")
	return cmd
}

func (a *app) topologyCommand() *cobra.Command {
	var apply bool
	cmd := &cobra.Command{
		Use:   "topology",
		Short: "Print the exchange, queues and bindings the config implies; --apply declares them",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			plan := topology.For(cfg)
			if err := plan.Write(a.env.Stdout); err != nil {
				return err
			}
			if !apply {
				return nil
			}
			conn, err := broker.Dial(cmd.Context(), cfg.Broker, "topology")
			if err != nil {
				return err
			}
			defer conn.Close()
			if err := topology.Apply(conn, plan); err != nil {
				return err
			}
			fmt.Fprintf(a.env.Stdout, "applied to %s\n", cfg.Broker.RedactedURL())
			return nil
		},
	}
	a.addConfigFlag(cmd)
	cmd.Flags().BoolVar(&apply, "apply", false, "declare the plan on the broker (idempotent)")
	return cmd
}

func (a *app) routesCommand() *cobra.Command {
	var (
		id, data string
		headers  []string
	)
	cmd := &cobra.Command{
		Use:   "routes ROUTING_KEY",
		Short: "List the subscriptions a routing key reaches, and what their routing rules make of an event",
		Long: `List the subscriptions whose patterns match ROUTING_KEY. For each, the
routing rules are run on an event with that key, the body from --data and
the headers from --header: whether it is delivered, filtered (and why) or
would be parked by a failing expression, its ordering key and the body a
transform gives.`,
		Args: exactArgs(1, "one ROUTING_KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			d := amqp.Delivery{RoutingKey: args[0], MessageId: id, Timestamp: time.Now(), Headers: amqp.Table{}}
			for _, h := range headers {
				k, v, ok := strings.Cut(h, "=")
				if !ok || k == "" {
					return usagef("--header %q: want NAME=VALUE", h)
				}
				d.Headers[k] = v // strings, as warren publish sends them
			}
			if data != "" {
				if d.Body, err = a.readBody(data); err != nil {
					return err
				}
			}
			in := rules.NewInput(event.FromDelivery(&d, d.Timestamp), d.Headers)
			found := false
			for _, s := range cfg.Subscriptions {
				var matched []string
				for _, p := range s.Events {
					if topic.Match(p, args[0]) {
						matched = append(matched, fmt.Sprintf("%q", p))
					}
				}
				if len(matched) == 0 {
					continue
				}
				found = true
				prg, err := rules.Compile(s)
				if err != nil {
					return err // validated at load: a bug
				}
				fmt.Fprintf(a.env.Stdout, "%s\t%s\t(%s)\t%s\n", s.Name, cfg.WorkQueue(s), strings.Join(matched, ", "), routeDetails(prg, s, in))
			}
			if !found {
				fmt.Fprintf(a.env.Stdout, "no subscription receives %q\n", args[0])
			}
			return nil
		},
	}
	a.addConfigFlag(cmd)
	cmd.Flags().StringVar(&data, "data", "", "event body: JSON, @FILE or - for standard input (default: none, so data is null)")
	cmd.Flags().StringArrayVar(&headers, "header", nil, "message header NAME=VALUE, a string value (repeatable); api_version=V sets the event's version")
	cmd.Flags().StringVar(&id, "id", "", "event id the expressions see as id (default: derived from the event, as for a message without message_id)")
	return cmd
}

// routeDetails says what one subscription's rules make of an event: the
// outcome, then the ordering key and the transformed body when it has them.
func routeDetails(prg *rules.Program, s config.Subscription, in *rules.Input) string {
	if !prg.APIVersionMatches(in) {
		return fmt.Sprintf("filtered: api_version %q, subscription takes %q", in.APIVersion(), s.APIVersion)
	}
	var b strings.Builder
	switch ok, err := prg.Filter(in); {
	case err != nil:
		fmt.Fprintf(&b, "parked: %v", err)
	case !ok:
		b.WriteString("filtered: filter is false")
	default:
		b.WriteString("delivered")
		if s.Filter != "" {
			b.WriteString(" (filter is true)")
		}
		if key, ok, err := prg.OrderingKey(in); ok {
			if err != nil {
				fmt.Fprintf(&b, "\n  parked: %v", err)
				return b.String()
			}
			fmt.Fprintf(&b, "\n  ordering key: %q", key)
		}
		if body, ok, err := prg.Transform(in); ok {
			if err != nil {
				fmt.Fprintf(&b, "\n  parked: %v", err)
				return b.String()
			}
			fmt.Fprintf(&b, "\n  body: %s", body)
		}
	}
	return b.String()
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit and Go version",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := buildinfo.Get()
			fmt.Fprintf(a.env.Stdout, "warren %s\ncommit %s\n%s\n", info.Version, info.Commit, info.GoVersion)
			return nil
		},
	}
}
