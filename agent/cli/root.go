// Package cli is warren's command line: it parses flags, loads the config
// and runs one command. main turns its result into an exit code.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warren-hq/warren/agent/logging"
	"github.com/warren-hq/warren/config"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// Env is what the process gives the command line.
type Env struct {
	Args   []string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Reload receives a value on SIGHUP.
	Reload <-chan struct{}
}

// usageError marks bad usage: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// app carries the global flags and shared state to every command.
type app struct {
	env        Env
	configPath string
	logFormat  string
	logLevel   string
	log        *slog.Logger
	logOut     *logging.Buffer // flushed before Execute returns
}

// Execute runs the command line and returns the exit code. Errors are
// printed once, here, without usage text.
func Execute(ctx context.Context, env Env) int {
	a := &app{env: env}
	root := a.rootCommand()
	root.SetArgs(env.Args)
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	err := root.ExecuteContext(ctx)
	if a.logOut != nil {
		_ = a.logOut.Flush() // before the error below, and before exit
	}
	if err == nil {
		return ExitOK
	}
	var cfgErr *config.Error
	if errors.As(err, &cfgErr) {
		// Each problem already names its file and line.
		fmt.Fprintln(env.Stderr, cfgErr.Error())
		return ExitUsage
	}
	fmt.Fprintln(env.Stderr, "error: "+err.Error())
	var usage usageError
	if errors.As(err, &usage) {
		return ExitUsage
	}
	return ExitFailure
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "warren",
		Short:         "Deliver RabbitMQ events as signed webhooks",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			a.logOut = logging.NewBuffer(a.env.Stderr)
			log, err := logging.New(a.logOut, a.logFormat, a.logLevel)
			if err != nil {
				return usageError{err}
			}
			a.log = log
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.Args = cobra.ArbitraryArgs // so an unknown command reaches RunE
	root.RunE = groupRunE("COMMAND")
	flags := root.PersistentFlags()
	flags.StringVar(&a.logFormat, "log-format", logging.FormatAuto, "log format: auto (text on a terminal, JSON otherwise), text or json")
	flags.StringVar(&a.logLevel, "log-level", "info", "log level: debug, info, warn or error")

	root.AddCommand(
		a.runCommand(),
		a.validateCommand(),
		a.topologyCommand(),
		a.routesCommand(),
		a.publishCommand(),
		a.deadCommand(),
		a.eventsCommand(),
		a.replayCommand(),
		a.attemptsCommand(),
		a.listenCommand(),
		a.keysCommand(),
		a.versionCommand(),
	)
	return root
}

// addConfigFlag gives a command the -c flag.
func (a *app) addConfigFlag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&a.configPath, "config", "c", "", "config file (default $WARREN_CONFIG, then ./warren.yaml)")
}

// loadConfig reads the config named by -c, $WARREN_CONFIG or ./warren.yaml.
func (a *app) loadConfig() (*config.Config, error) {
	path := a.configPath
	if path == "" {
		path = os.Getenv("WARREN_CONFIG")
	}
	if path == "" {
		path = "warren.yaml"
	}
	cfg, err := config.Load(path)
	var cfgErr *config.Error
	if err != nil && !errors.As(err, &cfgErr) {
		// A missing or unreadable file is bad usage too.
		return nil, usageError{err}
	}
	return cfg, err
}

// groupRunE serves a command that only groups others: without arguments
// it prints help, with one it names the unknown subcommand.
func groupRunE(what string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		return usagef("unknown %s %q for %q (see %s --help)", strings.ToLower(what), args[0], cmd.CommandPath(), cmd.CommandPath())
	}
}

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("want %s, got %d argument(s)", names, len(args))
		}
		return nil
	}
}
