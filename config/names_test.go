package config

import (
	"testing"
	"time"
)

func TestDelayName(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{200 * time.Millisecond, "200ms"},
		{30 * time.Second, "30s"},
		{90 * time.Second, "1m30s"},
		{10 * time.Minute, "10m"},
		{time.Hour, "1h"},
		{time.Hour + 30*time.Minute, "1h30m"},
		{90 * time.Minute, "1h30m"},
		{time.Hour + time.Second, "1h0m1s"},
		{6 * time.Hour, "6h"},
	}
	for _, tt := range tests {
		if got := DelayName(tt.d); got != tt.want {
			t.Errorf("DelayName(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestQueueNames(t *testing.T) {
	c := Default()
	s := Subscription{Name: "orders", Options: c.Defaults}
	s.Retry.Delays = []time.Duration{time.Second, time.Second, 90 * time.Second}
	tests := []struct{ got, want string }{
		{c.WorkQueue(s), "warren.orders"},
		{c.RetryQueue(90 * time.Second), "warren.retry.1m30s"},
		{c.DeadQueue(s), "warren.orders.dead"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
	if tiers := s.Tiers(); len(tiers) != 2 {
		t.Errorf("Tiers() = %v, want [1s 1m30s]: equal delays share a tier", tiers)
	}
}
