package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/warren-hq/warren/agent/event"
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

// Client sends attempts to one subscription's endpoint over its own pool of
// keep-alive connections, so a slow endpoint never holds another's.
type Client struct {
	http    *http.Client
	timeout time.Duration
}

// NewClient returns a client keeping up to conns idle connections to the
// endpoint (its concurrency) and giving each attempt timeout.
func NewClient(conns int, timeout time.Duration) *Client {
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		// No more connections than attempts in flight: without the cap, a
		// worker whose last connection is not back in the pool yet (the
		// transport returns it from its read loop) dials one more, and the
		// endpoint sees connections opened and dropped at full load.
		MaxConnsPerHost:       conns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   timeout,
		ExpectContinueTimeout: time.Second,
	}
	return &Client{
		http: &http.Client{
			Transport: tr,
			// A redirect is a failure: following it would send the signed
			// event somewhere the subscription does not name.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		timeout: timeout,
	}
}

// Close drops idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

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
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return Result{Err: redact(err), Duration: time.Since(start)}
	}
	res := Result{Status: resp.StatusCode}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		preview, _ := io.ReadAll(io.LimitReader(resp.Body, bodyPreview))
		res.Err = statusError(resp.StatusCode, preview)
		res.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), now)
	}
	// Drain (bounded) and close so the connection goes back to the pool. A
	// 2xx stays a 2xx even if the rest of its body is cut short.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	res.Duration = time.Since(start)
	return res
}

func statusError(status int, preview []byte) error {
	msg := "HTTP " + strconv.Itoa(status)
	if s := strings.Join(strings.Fields(string(preview)), " "); s != "" {
		msg += ": " + s
	}
	return errors.New(msg)
}

// redact drops the URL from transport errors: its query may hold a token.
func redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if errors.Is(ue.Err, context.DeadlineExceeded) {
			return errors.New("timeout: no complete answer in time")
		}
		return fmt.Errorf("%s request: %w", strings.ToLower(ue.Op), ue.Err)
	}
	return err
}

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
