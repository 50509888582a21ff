// Command warren delivers RabbitMQ events as signed webhooks.
//
// main is a thin shim: it turns signals into a cancelled context and a
// reload channel, and the command line's result into an exit code.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/warren-hq/warren/agent/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default: // a reload is already pending
			}
		}
	}()

	code := cli.Execute(ctx, cli.Env{
		Args:   os.Args[1:],
		Stdin:  os.Stdin,
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		Reload: reload,
	})
	stop()
	os.Exit(code)
}
