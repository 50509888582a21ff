package dedup

import (
	"strconv"
	"testing"
)

func TestWindowForgetsOldestFirst(t *testing.T) {
	w := New(3)
	key := func(i int) Key { return Key{Subscription: "s", Event: strconv.Itoa(i)} }
	for i := range 4 {
		w.Add(key(i))
	}
	if w.Contains(key(0)) {
		t.Error("the oldest key is still remembered after the window filled")
	}
	for i := 1; i < 4; i++ {
		if !w.Contains(key(i)) {
			t.Errorf("key %d forgotten, want the newest 3 remembered", i)
		}
	}
	// Adding a key again does not push another out.
	w.Add(key(3))
	if !w.Contains(key(1)) {
		t.Error("re-adding a remembered key evicted another")
	}
	if w.Contains(Key{Subscription: "other", Event: "1"}) {
		t.Error("keys of different subscriptions collide")
	}
}

func TestWindowOfSizeZeroRemembersNothing(t *testing.T) {
	w := New(0)
	w.Add(Key{Subscription: "s", Event: "e"})
	if w.Contains(Key{Subscription: "s", Event: "e"}) {
		t.Error("a window of size 0 remembered a key")
	}
}
