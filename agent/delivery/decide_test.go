package delivery

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/warren-hq/warren/config"
)

// TestDecide is the delivery table of SPEC §5, one row per rule.
func TestDecide(t *testing.T) {
	retry := config.Retry{
		Delays:       []time.Duration{5 * time.Second, 30 * time.Second, 2 * time.Minute},
		DeadOnStatus: []int{http.StatusUnprocessableEntity},
	}
	status := func(code int) Result { return Result{Status: code, Err: errors.New(http.StatusText(code))} }
	withRetryAfter := func(code int, d time.Duration) Result {
		r := status(code)
		r.RetryAfter = d
		return r
	}
	tests := []struct {
		name    string
		res     Result
		attempt int
		want    Decision
	}{
		{"2xx acks", Result{Status: 204}, 1, Decision{Action: Ack}},
		{"500 retries through the attempt's tier", status(500), 2, Decision{Action: Retry, Delay: 30 * time.Second, EndpointFailed: true}},
		{"3xx is a failure", status(302), 1, Decision{Action: Retry, Delay: 5 * time.Second, EndpointFailed: true}},
		{"transport error retries", Result{Err: errors.New("connection refused")}, 1, Decision{Action: Retry, Delay: 5 * time.Second, EndpointFailed: true}},
		{"last tier exhausted parks", status(500), 4, Decision{Action: Park, Reason: "retries exhausted", EndpointFailed: true}},
		{"410 parks and pauses", status(410), 1, Decision{Action: Park, Pause: true, Reason: "endpoint answered 410 Gone: subscription paused until reload or restart"}},
		{"dead_on_status parks at once", status(422), 1, Decision{Action: Park, Reason: "status is in dead_on_status"}},
		{"invalid message parks, not an endpoint failure", Result{Err: errors.New("control character in message_id"), Invalid: true}, 1, Decision{Action: Park, Reason: "control character in message_id"}},
		{"503 Retry-After picks the covering tier", withRetryAfter(503, 20*time.Second), 1, Decision{Action: Retry, Delay: 30 * time.Second, EndpointFailed: true}},
		{"429 Retry-After picks the covering tier", withRetryAfter(429, 31*time.Second), 1, Decision{Action: Retry, Delay: 2 * time.Minute, EndpointFailed: true}},
		{"Retry-After past the last tier is capped", withRetryAfter(503, 24*time.Hour), 1, Decision{Action: Retry, Delay: 2 * time.Minute, EndpointFailed: true}},
		{"Retry-After on a 500 is ignored", withRetryAfter(500, time.Hour), 1, Decision{Action: Retry, Delay: 5 * time.Second, EndpointFailed: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Decide(tt.res, tt.attempt, retry); got != tt.want {
				t.Errorf("Decide = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestRetryAfter reads seconds and HTTP dates, and ignores the rest.
func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tt := range []struct {
		value string
		want  time.Duration
	}{
		{"120", 2 * time.Minute},
		{" 7 ", 7 * time.Second},
		{"-5", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"soon", 0},
		{"", 0},
	} {
		if got := retryAfter(tt.value, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %s, want %s", tt.value, got, tt.want)
		}
	}
}
