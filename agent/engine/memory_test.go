package engine

import "testing"

// TestWindowsShareTheBudget checks that consumers size their prefetch so
// that their reservations (prefetch × largest body) stay within the budget,
// shrink when bigger bodies arrive, and grow back as room comes free.
func TestWindowsShareTheBudget(t *testing.T) {
	b := &budget{limit: 100 << 20}
	a := &window{budget: b, max: 32}
	c := &window{budget: b, max: 32}
	if n := a.start(); n != 1 {
		t.Fatalf("first window = %d, want 1 until a size is known", n)
	}
	c.start()
	// Small bodies: a grows to its configured prefetch.
	if n := a.arrived(1 << 10); n != 32 {
		t.Fatalf("after a 1 KiB body: window %d, want 32", n)
	}
	// 10 MiB bodies on c: c gets what is left, a keeps its 32 × 64 KiB.
	n := c.arrived(10 << 20)
	if want := int((100<<20 - 32*minUnit) / (10 << 20)); n != want {
		t.Fatalf("after a 10 MiB body: window %d, want %d", n, want)
	}
	if r := b.reserved.Load(); r > b.limit {
		t.Errorf("reserved %d > limit %d", r, b.limit)
	}
	// A 60 MiB body on a: it is held already, so a shrinks to 1 and the
	// budget is over until it settles; c cannot grow meanwhile.
	if n := a.arrived(60 << 20); n != 1 {
		t.Fatalf("after a 60 MiB body: window %d, want 1", n)
	}
	if n := c.settled(); n != 0 && n > c.n {
		t.Errorf("c grew to %d while the budget is full", n)
	}
	a.release()
	if n := c.settled(); n != 10 {
		t.Errorf("c after a released: window %d, want 10 (100 MiB / 10 MiB)", n)
	}
	c.release()
	if r := b.reserved.Load(); r != 0 {
		t.Errorf("reserved %d after both released, want 0", r)
	}
}
