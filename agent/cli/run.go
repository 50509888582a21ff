package cli

import (
	"github.com/spf13/cobra"

	"github.com/warren-hq/warren/agent/engine"
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
			return engine.New(cfg, a.log).Run(cmd.Context())
		},
	}
	a.addConfigFlag(cmd)
	return cmd
}
