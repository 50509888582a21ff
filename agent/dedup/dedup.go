// Package dedup remembers recently delivered events so a redelivery of one
// that was already answered 2xx (its ack lost with a connection) is acked
// without a second POST. It is best effort: bounded, in memory, per process.
package dedup

import (
	"hash/maphash"
	"sync"
)

// Key names one delivered event of one subscription.
type Key struct{ Subscription, Event string }

// digest is what the window stores of a key: 128 bits of two seeded hashes.
// Fixed-size entries keep 100,000 of them to a few MB with nothing for the
// garbage collector to scan; at 128 bits a collision, which would ack an
// event without sending it, is out of reach.
type digest [2]uint64

// Window is a fixed-size set that forgets its oldest entry first.
// A Window of size 0 remembers nothing.
type Window struct {
	seeds [2]maphash.Seed

	mu   sync.Mutex
	seen map[digest]struct{}
	ring []digest
	next int
	full bool
}

// New returns a window holding up to size keys.
func New(size int) *Window {
	w := &Window{seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}}
	if size > 0 {
		// The map grows with use: an idle agent does not pay for the
		// whole window.
		w.seen = make(map[digest]struct{})
		w.ring = make([]digest, size)
	}
	return w
}

func (w *Window) digest(k Key) digest {
	var d digest
	for i, seed := range w.seeds {
		var h maphash.Hash
		h.SetSeed(seed)
		h.WriteString(k.Subscription)
		h.WriteByte(0)
		h.WriteString(k.Event)
		d[i] = h.Sum64()
	}
	return d
}

// Contains reports whether key was added and not yet forgotten.
func (w *Window) Contains(key Key) bool {
	if len(w.ring) == 0 {
		return false
	}
	d := w.digest(key)
	w.mu.Lock()
	_, ok := w.seen[d]
	w.mu.Unlock()
	return ok
}

// Add remembers key, forgetting the oldest key when full.
func (w *Window) Add(key Key) {
	if len(w.ring) == 0 {
		return
	}
	d := w.digest(key)
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.seen[d]; ok {
		return
	}
	if w.full {
		delete(w.seen, w.ring[w.next])
	}
	w.ring[w.next] = d
	w.seen[d] = struct{}{}
	w.next++
	if w.next == len(w.ring) {
		w.next, w.full = 0, true
	}
}
