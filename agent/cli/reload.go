package cli

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"time"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/logging"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/config"
)

// configPollInterval is how often the config file is compared with what
// runs. Reading the file (not watching inode events) also catches the
// symlink swap Kubernetes does when a ConfigMap changes.
const configPollInterval = 2 * time.Second

// watchConfig reloads the engine on SIGHUP and whenever the file's content
// changes. An invalid file is rejected with every problem logged, and the
// running config stays.
func watchConfig(ctx context.Context, path string, hup <-chan struct{}, e *engine.Engine, m *metrics.Metrics, log *slog.Logger) {
	last, _ := os.ReadFile(path)
	tick := time.NewTicker(configPollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info("SIGHUP: reloading config", "path", path)
		case <-tick.C:
			data, err := os.ReadFile(path)
			if err != nil || bytes.Equal(data, last) {
				continue // a half-written or missing file is read again next tick
			}
			log.Info("config file changed: reloading", "path", path)
		}
		last, _ = os.ReadFile(path)
		cfg, err := config.Load(path)
		if err != nil {
			m.Reloads.WithLabelValues("failure").Inc()
			var cfgErr *config.Error
			if errors.As(err, &cfgErr) {
				for _, p := range cfgErr.Problems {
					log.Error("config reload rejected; keeping the running config", "problem", p.String())
				}
			} else {
				log.Error("config reload rejected; keeping the running config", logging.Err(err))
			}
			continue
		}
		for _, w := range cfg.Warnings() {
			log.Warn("config: " + w)
		}
		// The engine counts what it applies or rejects.
		e.Reload(cfg)
	}
}
