package delivery

import (
	"net/http"
	"slices"
	"time"

	"github.com/warren-hq/warren/config"
)

// Action is what happens to a message after an attempt.
type Action int

const (
	Ack   Action = iota // delivered
	Retry               // copy to a retry tier, then ack
	Park                // copy to the dead queue, then ack
)

func (a Action) String() string {
	return [...]string{"delivered", "retried", "parked"}[a]
}

// Decision is the outcome of an attempt and why.
type Decision struct {
	Action Action
	Delay  time.Duration // the tier, for Retry
	// Pause stops the subscription until reload or restart: the endpoint
	// said it is gone for good.
	Pause  bool
	Reason string
	// EndpointFailed says the endpoint, not the message, is at fault: what
	// a circuit breaker counts.
	EndpointFailed bool
}

// Decide applies the delivery rules to one attempt's result. attempt counts
// from 1; the retry tier for attempt n is delays[n-1].
func Decide(r Result, attempt int, retry config.Retry) Decision {
	attempt = max(attempt, 1)
	switch {
	case r.Invalid:
		// The message can never become a request as configured.
		return Decision{Action: Park, Reason: r.Err.Error()}
	case r.Err == nil && r.Status >= 200 && r.Status < 300:
		return Decision{Action: Ack}
	case r.Status == http.StatusGone:
		// 410 is the Standard Webhooks way for a receiver to unsubscribe:
		// retrying only fills the dead queue faster.
		return Decision{Action: Park, Pause: true, Reason: "endpoint answered 410 Gone: subscription paused until reload or restart"}
	case slices.Contains(retry.DeadOnStatus, r.Status):
		return Decision{Action: Park, Reason: "status is in dead_on_status"}
	case attempt > len(retry.Delays):
		return Decision{Action: Park, Reason: "retries exhausted", EndpointFailed: true}
	}
	// Anything else (5xx, 4xx, 3xx, timeouts, connection and TLS errors)
	// may pass: try again after the tier's delay.
	delay := retry.Delays[attempt-1]
	if r.RetryAfter > 0 && (r.Status == http.StatusTooManyRequests || r.Status == http.StatusServiceUnavailable) {
		delay = tierCovering(retry.Delays, r.RetryAfter)
	}
	return Decision{Action: Retry, Delay: delay, EndpointFailed: true}
}

// tierCovering is the first delay >= d, capped at the last one.
func tierCovering(delays []time.Duration, d time.Duration) time.Duration {
	for _, t := range delays {
		if t >= d {
			return t
		}
	}
	return delays[len(delays)-1]
}
