package engine

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/warren-hq/warren/config"
)

// MemoryLimit resolves server.memory_limit to bytes (0: none): auto is the
// container's cgroup limit less a margin for the runtime, the heap's
// garbage and the HTTP and AMQP buffers that bodies do not account for.
func MemoryLimit(setting config.ByteSize) int64 {
	if setting != config.AutoSize {
		return int64(setting)
	}
	limit := cgroupLimit()
	if limit <= 0 {
		return 0
	}
	return limit - max(limit/10, 16<<20)
}

// cgroupLimit reads the memory limit of the cgroup warren runs in (v2,
// then v1), or 0 when there is none.
func cgroupLimit() int64 {
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		if err != nil || n <= 0 || n >= 1<<60 { // "max", or v1's "no limit"
			return 0
		}
		return n
	}
	return 0
}

// budget bounds the message bodies warren may hold, prefetched or in
// flight, across all subscriptions. RabbitMQ has no byte prefetch, so each
// consumer reserves room for its prefetch window (window × the largest body
// it has seen) and sizes that window to the room there is.
type budget struct {
	limit    int64
	reserved atomic.Int64
}

// newBudget gives bodies half of the memory limit: the rest is the Go
// runtime's, the garbage between collections, and the copies in the
// network buffers. nil when there is no limit.
func newBudget(memoryLimit int64) *budget {
	if memoryLimit <= 0 {
		return nil
	}
	return &budget{limit: memoryLimit / 2}
}

// minUnit is the room a window reserves per message before it has seen
// one: small bodies cost about this in buffers anyway.
const minUnit = 64 << 10

// sizeWindowEvery is how many deliveries the largest-body estimate covers
// before it is measured anew, so one big message does not shrink a window
// for good.
const sizeWindowEvery = 64

// window is one consumer's prefetch sized by the budget. Its methods are
// called from the consume loop only.
type window struct {
	budget *budget // nil: the configured prefetch, fixed
	max    int     // the configured prefetch
	n      int     // the prefetch in force
	unit   int64   // room reserved per message: the largest body lately
	seen   int     // deliveries since unit was measured
	peak   int64   // largest body since then
}

// start returns the first prefetch: the configured one without a budget,
// else one message until its size is known.
func (w *window) start() int {
	if w.budget == nil {
		w.n = w.max
		return w.n
	}
	w.n, w.unit = 1, minUnit
	w.budget.reserved.Add(w.unit)
	return w.n
}

// arrived accounts a delivery of size bytes and returns the prefetch to
// set, or 0 to keep the one in force.
func (w *window) arrived(size int64) int {
	if w.budget == nil {
		return 0
	}
	w.peak = max(w.peak, size)
	w.seen++
	unit := w.unit
	if size > unit {
		unit = size // it is held already: reserve it, whatever the room
	} else if w.seen >= sizeWindowEvery {
		unit = max(w.peak, minUnit)
	}
	if w.seen >= sizeWindowEvery {
		w.seen, w.peak = 0, 0
	}
	w.budget.reserved.Add(int64(w.n) * (unit - w.unit))
	w.unit = unit
	return w.fit()
}

// settled is called when a delivery was acked or requeued: room may have
// come free elsewhere, so the window may grow.
func (w *window) settled() int {
	if w.budget == nil {
		return 0
	}
	return w.fit()
}

// fit resizes the window to the largest prefetch the budget has room for
// (at least 1, at most the configured one) and returns it when it must
// shrink or can at least double (or reach the configured one), else 0: a
// new window is a new consumer.
func (w *window) fit() int {
	others := w.budget.reserved.Load() - int64(w.n)*w.unit
	want := int((w.budget.limit - others) / w.unit)
	want = min(max(want, 1), w.max)
	if want == w.n || (want > w.n && want < w.max && want < 2*w.n) {
		return 0
	}
	w.budget.reserved.Add(int64(want-w.n) * w.unit)
	w.n = want
	return want
}

// release gives the window's room back when the consumer stops.
func (w *window) release() {
	if w.budget != nil {
		w.budget.reserved.Add(-int64(w.n) * w.unit)
		w.n = 0
	}
}
