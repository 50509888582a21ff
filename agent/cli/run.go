package cli

import (
	"context"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/logging"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/agent/server"
)

func (a *app) runCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Deliver events until SIGINT or SIGTERM; SIGHUP reloads the config",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			for _, w := range cfg.Warnings() {
				a.log.Warn("config: " + w)
			}
			if limit := engine.MemoryLimit(cfg.Server.MemoryLimit); limit > 0 {
				// The collector works harder near the limit instead of
				// letting garbage grow the heap past it.
				debug.SetMemoryLimit(limit)
				a.log.Info("memory limit", "bytes", limit, "bodies_held_at_most", limit/2)
			}
			m := metrics.New()
			e := engine.New(cfg, a.log, m)
			ctx := cmd.Context()
			if cfg.Server.Listen != "" {
				ln, err := net.Listen("tcp", cfg.Server.Listen)
				if err != nil {
					return err
				}
				srv := &http.Server{Handler: server.Handler(e, m), ReadHeaderTimeout: 5 * time.Second}
				a.log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String())
				srvCtx, stopSrv := context.WithCancel(context.WithoutCancel(ctx))
				served := make(chan error, 1)
				go func() { served <- serveUntil(srvCtx, srv, ln) }()
				defer func() {
					stopSrv()
					if err := <-served; err != nil {
						a.log.Error("operations server failed", logging.Err(err))
					}
				}()
			}
			watchCtx, stopWatch := context.WithCancel(ctx)
			watched := make(chan struct{})
			go func() {
				defer close(watched)
				watchConfig(watchCtx, cfg.Path, a.env.Reload, e, m, a.log)
			}()
			defer func() { stopWatch(); <-watched }()
			return e.Run(ctx)
		},
	}
	a.addConfigFlag(cmd)
	return cmd
}
