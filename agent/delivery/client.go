package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/config"
)

// Result is what one attempt got.
type Result struct {
	Status     int           // 0 when no response arrived
	Err        error         // transport error, or a summary of a non-2xx answer
	RetryAfter time.Duration // from a Retry-After header, 0 when absent
	Duration   time.Duration
	// Invalid is set when the message cannot be turned into a request at
	// all; retrying will not help.
	Invalid bool
}

// Client sends one subscription's attempts. Its HTTP transport (the
// connection pool) is shared with every other subscription whose endpoint
// has the same scheme, host and TLS settings; see transport.go.
type Client struct {
	// rt sends each request as it is: no redirects (following one would
	// send the signed event somewhere the subscription does not name), no
	// cookies, no credentials from the URL (config refuses them); an
	// http.Client would clone every request's headers for redirects
	// that never happen.
	rt      http.RoundTripper
	timeout time.Duration
	shared  *sharedTransport
	err     error // TLS settings that could not be loaded
	close   sync.Once
}

// NewClient returns the client for a subscription: its endpoint's shared
// transport and its per-attempt timeout. TLS files that cannot be loaded
// (config validation read them, so they changed since) make every attempt
// fail with the reason, as a TLS error would.
func NewClient(s config.Subscription) *Client {
	c := &Client{timeout: s.Timeout}
	c.shared, c.err = acquire(s)
	if c.err != nil {
		return c
	}
	c.rt = c.shared.tr
	return c
}

// Close releases the client's share of its transport; the last client of a
// transport closes its idle connections. Safe to call more than once.
func (c *Client) Close() {
	c.close.Do(func() {
		if c.shared != nil {
			release(c.shared)
		}
	})
}

// bodyPreview is how much of an error response is kept for the logs and the
// warren-last-error header.
const bodyPreview = 256

// Send makes one attempt. ctx ends it early only on hard shutdown; the
// attempt's own deadline is the client's timeout, connect to last byte.
func (c *Client) Send(ctx context.Context, ep *Endpoint, ev *event.Event, now time.Time) Result {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := ep.NewRequest(ctx, ev, now)
	if err != nil {
		return Result{Err: err, Invalid: true}
	}
	if c.err != nil {
		return Result{Err: c.err}
	}
	start := time.Now()
	resp, err := c.rt.RoundTrip(req)
	if err != nil {
		return Result{Err: transportError(req.Method, err), Duration: time.Since(start)}
	}
	res := Result{Status: resp.StatusCode}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		preview, _ := io.ReadAll(io.LimitReader(resp.Body, bodyPreview))
		res.Err = statusError(resp.StatusCode, ep.scrub(string(preview)))
		res.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), now)
	}
	// Drain (bounded) and close so the connection goes back to the pool. A
	// 2xx stays a 2xx even if the rest of its body is cut short.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	res.Duration = time.Since(start)
	return res
}

// statusError keeps the start of the response body for logs and the
// warren-last-error header, cleaned of control characters.
func statusError(status int, preview string) error {
	msg := "HTTP " + strconv.Itoa(status)
	if s := clean(preview); s != "" {
		msg += ": " + s
	}
	return errors.New(msg)
}

// transportError says what went wrong with a request's transport, without
// the URL (its query may hold a token), and cleans what the endpoint may
// have put in it.
func transportError(method string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return errors.New("timeout: no complete answer in time")
	}
	return cleanError{fmt.Errorf("%s request: %w", strings.ToLower(method), err)}
}

// cleanError is an error whose text is safe for a terminal.
type cleanError struct{ error }

func (e cleanError) Error() string { return clean(e.error.Error()) }
func (e cleanError) Unwrap() error { return e.error }

// retryAfter parses Retry-After as seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
