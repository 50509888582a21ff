package engine

import (
	"time"

	"github.com/warren-hq/warren/agent/metrics"
)

// MetricsOf returns the metrics e reports to, for the tests outside the
// package.
func MetricsOf(e *Engine) *metrics.Metrics { return e.metrics }

// SetHeadLate sets how late a held key's head may be before warren warns,
// until the test ends.
func SetHeadLate(t interface{ Cleanup(func()) }, d time.Duration) {
	old := headLate
	headLate = d
	t.Cleanup(func() { headLate = old })
}
