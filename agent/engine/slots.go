package engine

import (
	"context"
	"slices"
	"sync"

	"github.com/warren-hq/warren/config"
)

// slots caps the attempts in flight across all subscriptions
// (server.max_in_flight). A freed slot goes to the longest-waiting attempt
// of the highest priority: high before normal before low. A nil *slots
// has no cap.
type slots struct {
	mu      sync.Mutex
	free    int
	waiting [3][]chan struct{} // by rank: high, normal, low
}

func newSlots(n int) *slots {
	if n <= 0 {
		return nil
	}
	return &slots{free: n}
}

// rank orders priorities for the waiting lists.
func rank(priority string) int {
	switch priority {
	case config.PriorityHigh:
		return 0
	case config.PriorityLow:
		return 2
	}
	return 1
}

// acquire takes a slot, waiting in line for one until ctx ends.
func (s *slots) acquire(ctx context.Context, priority string) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	if s.free > 0 {
		s.free--
		s.mu.Unlock()
		return nil
	}
	r := rank(priority)
	turn := make(chan struct{})
	s.waiting[r] = append(s.waiting[r], turn)
	s.mu.Unlock()
	select {
	case <-turn:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		i := slices.Index(s.waiting[r], turn)
		if i >= 0 {
			s.waiting[r] = slices.Delete(s.waiting[r], i, i+1)
		}
		s.mu.Unlock()
		if i < 0 {
			s.release() // handed a slot as ctx ended: pass it on
		}
		return ctx.Err()
	}
}

// release gives a slot back, to the next in line if any.
func (s *slots) release() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for r := range s.waiting {
		if len(s.waiting[r]) > 0 {
			turn := s.waiting[r][0]
			s.waiting[r] = s.waiting[r][1:]
			close(turn)
			return
		}
	}
	s.free++
}
