// Package dedup remembers recently delivered events so a redelivery of one
// that was already answered 2xx (its ack lost with a connection) is acked
// without a second POST. It is best effort: bounded, in memory, per process.
package dedup

import "sync"

// Key names one delivered event of one subscription.
type Key struct{ Subscription, Event string }

// Window is a fixed-size set that forgets its oldest entry first.
// A Window of size 0 remembers nothing.
type Window struct {
	mu   sync.Mutex
	seen map[Key]struct{}
	ring []Key
	next int
}

// New returns a window holding up to size keys.
func New(size int) *Window {
	if size <= 0 {
		return &Window{}
	}
	return &Window{seen: make(map[Key]struct{}, size), ring: make([]Key, size)}
}

// Contains reports whether key was added and not yet forgotten.
func (w *Window) Contains(key Key) bool {
	if len(w.ring) == 0 {
		return false
	}
	w.mu.Lock()
	_, ok := w.seen[key]
	w.mu.Unlock()
	return ok
}

// Add remembers key, forgetting the oldest key when full.
func (w *Window) Add(key Key) {
	if len(w.ring) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.seen[key]; ok {
		return
	}
	if old := w.ring[w.next]; old != (Key{}) {
		delete(w.seen, old)
	}
	w.ring[w.next] = key
	w.seen[key] = struct{}{}
	w.next = (w.next + 1) % len(w.ring)
}
