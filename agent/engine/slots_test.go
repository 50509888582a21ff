package engine

import (
	"context"
	"testing"
	"time"

	"github.com/warren-hq/warren/config"
)

// TestSlotsServeHigherPriorityFirst fills the only slot, queues waiters of
// every priority in the worst order, and checks the order they get it in.
func TestSlotsServeHigherPriorityFirst(t *testing.T) {
	s := newSlots(1)
	ctx := context.Background()
	if err := s.acquire(ctx, config.PriorityLow); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 6)
	for i, p := range []string{config.PriorityLow, config.PriorityNormal, config.PriorityHigh, config.PriorityLow, config.PriorityHigh, config.PriorityNormal} {
		go func() {
			if err := s.acquire(ctx, p); err != nil {
				t.Error(err)
				return
			}
			order <- p
			s.release()
		}()
		waitWaiting(t, s, i+1)
	}
	s.release()
	var got []string
	for range 6 {
		got = append(got, <-order)
	}
	want := []string{"high", "high", "normal", "normal", "low", "low"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("slots went to %v, want %v", got, want)
		}
	}
}

// waitWaiting waits until n waiters are in line.
func waitWaiting(t *testing.T, s *slots, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for count(s) != n {
		if time.Now().After(deadline) {
			t.Fatal("waiter never queued")
		}
		time.Sleep(time.Millisecond)
	}
}

func count(s *slots) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.waiting[0]) + len(s.waiting[1]) + len(s.waiting[2])
}

// TestSlotsCancelledWaiterPassesItsTurnOn checks that a waiter whose ctx
// ends leaves the line without losing a slot.
func TestSlotsCancelledWaiterPassesItsTurnOn(t *testing.T) {
	s := newSlots(1)
	if err := s.acquire(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.acquire(ctx, "") }()
	waitWaiting(t, s, 1)
	cancel()
	if err := <-done; err == nil {
		t.Fatal("cancelled acquire succeeded")
	}
	s.release()
	if err := s.acquire(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if s.free != 0 || count(s) != 0 {
		t.Errorf("free %d, waiting %d after the slot went round; want 0, 0", s.free, count(s))
	}
}
