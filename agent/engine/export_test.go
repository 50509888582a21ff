package engine

import "github.com/warren-hq/warren/agent/metrics"

// MetricsOf returns the metrics e reports to, for the tests outside the
// package.
func MetricsOf(e *Engine) *metrics.Metrics { return e.metrics }
