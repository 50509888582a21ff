// Package dedup remembers recently delivered events so a redelivery of one
// that was already answered 2xx (its ack lost with a connection) is acked
// without a second POST. It is best effort: bounded, in memory, per process.
package dedup

import "sync"

// Window is a fixed-size set that forgets its oldest entry first.
// The zero Window (or one of size 0) remembers nothing.
type Window struct {
	mu   sync.Mutex
	seen map[string]struct{}
	ring []string
	next int
}

// New returns a window holding up to size keys.
func New(size int) *Window {
	if size <= 0 {
		return &Window{}
	}
	return &Window{seen: make(map[string]struct{}, size), ring: make([]string, size)}
}

// Contains reports whether key was added and not yet forgotten.
func (w *Window) Contains(key string) bool {
	if len(w.ring) == 0 {
		return false
	}
	w.mu.Lock()
	_, ok := w.seen[key]
	w.mu.Unlock()
	return ok
}

// Add remembers key, forgetting the oldest key when full.
func (w *Window) Add(key string) {
	if len(w.ring) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.seen[key]; ok {
		return
	}
	if old := w.ring[w.next]; old != "" {
		delete(w.seen, old)
	}
	w.ring[w.next] = key
	w.seen[key] = struct{}{}
	w.next = (w.next + 1) % len(w.ring)
}
