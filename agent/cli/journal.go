package cli

import (
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/spf13/cobra"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/journal"
	"github.com/warren-hq/warren/agent/rules"
	"github.com/warren-hq/warren/agent/topic"
	"github.com/warren-hq/warren/config"
)

// windowFlags are --since and --until, read as journal.ParseTime reads them.
type windowFlags struct{ since, until string }

func (f *windowFlags) add(cmd *cobra.Command, sinceHelp string) {
	cmd.Flags().StringVar(&f.since, "since", "", sinceHelp+": a duration back from now (2h) or RFC 3339")
	cmd.Flags().StringVar(&f.until, "until", "", "up to this time (default: the end): a duration back from now or RFC 3339")
}

func (f *windowFlags) window() (journal.Window, error) {
	var w journal.Window
	now := time.Now()
	for _, t := range []struct {
		flag, value string
		dst         *time.Time
	}{{"--since", f.since, &w.Since}, {"--until", f.until, &w.Until}} {
		if t.value == "" {
			continue
		}
		v, err := journal.ParseTime(t.value, now)
		if err != nil {
			return w, usagef("%s: %v", t.flag, err)
		}
		*t.dst = v
	}
	if !w.Since.IsZero() && !w.Until.IsZero() && !w.Until.After(w.Since) {
		return w, usagef("--until %s is not after --since %s", w.Until.Format(time.RFC3339), w.Since.Format(time.RFC3339))
	}
	return w, nil
}

// journalConfig loads the config and fails unless it has a journal.
func (a *app) journalConfig() (*config.Config, error) {
	cfg, err := a.loadConfig()
	if err != nil {
		return nil, err
	}
	if cfg.Broker.Journal == nil {
		return nil, usagef("%s has no broker.journal: without it there are no %s and %s streams to read", cfg.Path, cfg.JournalStream(), cfg.AttemptsStream())
	}
	return cfg, nil
}

func (a *app) eventsCommand() *cobra.Command {
	var (
		win     windowFlags
		pattern string
		id      string
		limit   int
	)
	cmd := &cobra.Command{
		Use:   "events",
		Short: "List the events the journal holds: id, type, time, size",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			w, err := win.window()
			if err != nil {
				return err
			}
			if limit < 0 {
				return usagef("--limit must be 0 (all) or more, got %d", limit)
			}
			cfg, err := a.journalConfig()
			if err != nil {
				return err
			}
			conn, err := broker.Dial(cmd.Context(), cfg.Broker, "events-cli")
			if err != nil {
				return err
			}
			defer conn.Close()

			out := tabwriter.NewWriter(a.env.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(out, "EVENT ID\tTYPE\tTIME\tSIZE")
			prog := newProgress(a.env.Stderr)
			read, listed := 0, 0
			err = journal.Read(cmd.Context(), conn, cfg.JournalStream(), w, func(d *amqp.Delivery) error {
				read++
				prog.show("read %d event(s), %d listed", read, listed)
				ev := event.FromDelivery(d, time.Time{})
				if pattern != "" && !topic.Match(pattern, d.RoutingKey) || id != "" && ev.ID != id {
					return nil
				}
				fmt.Fprintf(out, "%s\t%s\t%s\t%d\n", ev.ID, ev.Type, stamp(d.Timestamp), len(d.Body))
				if listed++; listed == limit {
					return journal.ErrStop
				}
				return nil
			})
			prog.done()
			out.Flush()
			if err != nil {
				return err
			}
			fmt.Fprintf(a.env.Stdout, "%d event(s) listed from %s\n", listed, cfg.JournalStream())
			return nil
		},
	}
	a.addConfigFlag(cmd)
	win.add(cmd, "from this time (default: the start of the journal)")
	cmd.Flags().StringVar(&pattern, "type", "", `only types (routing keys) matching this topic pattern, such as "order.*"`)
	cmd.Flags().StringVar(&id, "id", "", "only the event with this id")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most N events, oldest first (0: all)")
	return cmd
}

func (a *app) replayCommand() *cobra.Command {
	var (
		win    windowFlags
		filter string
		dryRun bool
	)
	cmd := &cobra.Command{
		Use:   "replay SUBSCRIPTION --since T",
		Short: "Send the journal's events of a time window to a subscription again",
		Args:  exactArgs(1, "one SUBSCRIPTION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if win.since == "" {
				return usagef("--since is required: a duration back from now (2h) or RFC 3339")
			}
			w, err := win.window()
			if err != nil {
				return err
			}
			cfg, err := a.journalConfig()
			if err != nil {
				return err
			}
			s, ok := cfg.Subscription(args[0])
			if !ok {
				return usagef("no subscription %q in %s", args[0], cfg.Path)
			}
			programs, err := replayRules(s, filter)
			if err != nil {
				return err
			}
			conn, err := broker.Dial(cmd.Context(), cfg.Broker, "replay-cli")
			if err != nil {
				return err
			}
			defer conn.Close()

			prog := newProgress(a.env.Stderr)
			r := journal.Replay{
				Stream:       cfg.JournalStream(),
				WorkQueue:    cfg.WorkQueue(s),
				Subscription: s,
				Rules:        programs,
				Window:       w,
				DryRun:       dryRun,
				Progress: func(read, matched int) {
					prog.show("read %d event(s), %d for %s", read, matched, s.Name)
				},
			}
			res, err := r.Run(cmd.Context(), conn)
			prog.done()
			switch {
			case dryRun && err == nil:
				fmt.Fprintf(a.env.Stdout, "would replay %d of %d event(s) from %s to %s (dry run)\n", res.Matched, res.Read, r.Stream, r.WorkQueue)
			case res.Sent > 0 || err == nil:
				// Say what was sent even when a later publish failed.
				fmt.Fprintf(a.env.Stdout, "replayed %d of %d event(s) from %s to %s (replay %s)\n", res.Sent, res.Read, r.Stream, r.WorkQueue, res.ID)
			}
			return err
		},
	}
	a.addConfigFlag(cmd)
	win.add(cmd, "from this time (required)")
	cmd.Flags().StringVar(&filter, "filter", "", "CEL expression an event must satisfy too, with the variables of a subscription's filter")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count what would be replayed, send nothing")
	return cmd
}

func (a *app) attemptsCommand() *cobra.Command {
	var (
		win     windowFlags
		eventID string
		outcome string
	)
	cmd := &cobra.Command{
		Use:   "attempts [SUBSCRIPTION]",
		Short: "List delivery attempts and their outcomes",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("want at most one SUBSCRIPTION, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := win.window()
			if err != nil {
				return err
			}
			cfg, err := a.journalConfig()
			if err != nil {
				return err
			}
			sub := ""
			if len(args) == 1 {
				if _, ok := cfg.Subscription(args[0]); !ok {
					return usagef("no subscription %q in %s", args[0], cfg.Path)
				}
				sub = args[0]
			}
			conn, err := broker.Dial(cmd.Context(), cfg.Broker, "attempts-cli")
			if err != nil {
				return err
			}
			defer conn.Close()

			out := tabwriter.NewWriter(a.env.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(out, "AT\tSUBSCRIPTION\tEVENT ID\tTYPE\tATTEMPT\tSTATUS\tDURATION\tOUTCOME\tERROR")
			prog := newProgress(a.env.Stderr)
			read, listed := 0, 0
			err = journal.Read(cmd.Context(), conn, cfg.AttemptsStream(), w, func(d *amqp.Delivery) error {
				read++
				prog.show("read %d attempt(s), %d listed", read, listed)
				for _, at := range journal.Attempts(d) {
					if sub != "" && at.Subscription != sub || eventID != "" && at.EventID != eventID || outcome != "" && at.Outcome != outcome {
						continue
					}
					status := "-"
					if at.Status != 0 {
						status = strconv.Itoa(at.Status)
					}
					fmt.Fprintf(out, "%s\t%s\t%s\t%s\t%d\t%s\t%dms\t%s\t%s\n", stamp(at.At), at.Subscription, at.EventID, at.Type,
						at.Attempt, status, at.DurationMS, at.Outcome, strconv.Quote(at.Error))
					listed++
				}
				return nil
			})
			prog.done()
			out.Flush()
			if err != nil {
				return err
			}
			fmt.Fprintf(a.env.Stdout, "%d attempt(s) listed from %s\n", listed, cfg.AttemptsStream())
			return nil
		},
	}
	a.addConfigFlag(cmd)
	win.add(cmd, "from this time (default: the start of the stream)")
	cmd.Flags().StringVar(&eventID, "event", "", "only attempts of the event with this id")
	cmd.Flags().StringVar(&outcome, "outcome", "", "only attempts with this outcome, such as delivered, retry or parked")
	return cmd
}

// stamp prints a time in RFC 3339 UTC, "-" when unset.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// replayRules compiles the subscription's rules and the --filter
// expression, which gets the same checks as a filter in the config.
func replayRules(s config.Subscription, filter string) ([]*rules.Program, error) {
	own, err := rules.Compile(s)
	if err != nil {
		return nil, err
	}
	programs := []*rules.Program{own}
	if filter != "" {
		extra, err := rules.Compile(config.Subscription{Name: s.Name, Filter: filter})
		if err != nil {
			return nil, usagef("--filter: %v", err)
		}
		programs = append(programs, extra)
	}
	return programs, nil
}
