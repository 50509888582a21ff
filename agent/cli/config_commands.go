package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/agent/buildinfo"
	"github.com/warren-hq/warren/agent/topic"
	"github.com/warren-hq/warren/agent/topology"
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
	cmd := &cobra.Command{
		Use:   "routes ROUTING_KEY",
		Short: "List the subscriptions a routing key reaches",
		Args:  exactArgs(1, "one ROUTING_KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			key := args[0]
			found := false
			for _, s := range cfg.Subscriptions {
				var matched []string
				for _, p := range s.Events {
					if topic.Match(p, key) {
						matched = append(matched, fmt.Sprintf("%q", p))
					}
				}
				if len(matched) > 0 {
					found = true
					fmt.Fprintf(a.env.Stdout, "%s\t%s\t(%s)\n", s.Name, cfg.WorkQueue(s), strings.Join(matched, ", "))
				}
			}
			if !found {
				fmt.Fprintf(a.env.Stdout, "no subscription receives %q\n", key)
			}
			return nil
		},
	}
	a.addConfigFlag(cmd)
	return cmd
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
