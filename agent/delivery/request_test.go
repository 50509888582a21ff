package delivery

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/signing"
	"github.com/warren-hq/warren/config"
)

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

func testEndpoint(t testing.TB, format, url string) *Endpoint {
	t.Helper()
	sec, err := config.ParseSecret(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return NewEndpoint(config.Subscription{
		Name: "orders", URL: url, Secrets: []config.Secret{sec},
		Headers: map[string]string{"authorization": "Bearer t0ken", "X-Tenant": "eu"},
		Options: config.Options{Format: format, Source: "billing"},
	}, "warren/test")
}

func testEvent() *event.Event {
	return &event.Event{
		ID:          "evt_1",
		Type:        "order.created",
		CreatedAt:   time.Date(2026, 1, 2, 3, 4, 5, 600, time.FixedZone("CET", 3600)),
		Attempt:     1,
		ContentType: "application/json",
		APIVersion:  "2024-01-01",
		Body:        []byte(`{"id":1,"note":"caf\u00e9"}`),
	}
}

// TestNewRequest pins every header and the body of each format, so the
// request can be built however is fastest.
func TestNewRequest(t *testing.T) {
	now := time.Unix(1767323045, 0)
	ev := testEvent()
	envelope := `{"id":"evt_1","type":"order.created","created_at":"2026-01-02T02:04:05Z",` +
		`"api_version":"2024-01-01","data":{"id":1,"note":"caf\u00e9"}}`
	cases := []struct {
		format string
		body   string
		header http.Header
	}{
		{config.FormatEnvelope, envelope, http.Header{"Content-Type": {"application/json"}}},
		{config.FormatRaw, string(ev.Body), http.Header{"Content-Type": {"application/json"}}},
		{config.FormatCloudEvents, string(ev.Body), http.Header{
			"Content-Type": {"application/json"}, "Ce-Specversion": {"1.0"}, "Ce-Id": {"evt_1"},
			"Ce-Type": {"order.created"}, "Ce-Source": {"billing"}, "Ce-Time": {"2026-01-02T02:04:05Z"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.format, func(t *testing.T) {
			ep := testEndpoint(t, tc.format, "https://hooks.example.com/in?token=abc")
			req, err := ep.NewRequest(context.Background(), ev, now)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.header
			want["Authorization"] = []string{"Bearer t0ken"}
			want["X-Tenant"] = []string{"eu"}
			want["User-Agent"] = []string{"warren/test"}
			want["Webhook-Id"] = []string{"evt_1"}
			want["Webhook-Timestamp"] = []string{"1767323045"}
			key, _ := signing.DecodeSecret(testSecret)
			want["Webhook-Signature"] = []string{signing.Sign([][]byte{key}, "evt_1", now, []byte(tc.body))}
			if !reflect.DeepEqual(req.Header, want) {
				t.Errorf("header\n got %v\nwant %v", req.Header, want)
			}
			if req.Method != http.MethodPost || req.URL.String() != "https://hooks.example.com/in?token=abc" ||
				req.Host != "hooks.example.com" {
				t.Errorf("request line = %s %s (host %q)", req.Method, req.URL, req.Host)
			}
			got, err := io.ReadAll(req.Body)
			if err != nil || string(got) != tc.body {
				t.Errorf("body = %s (%v), want %s", got, err, tc.body)
			}
			if req.ContentLength != int64(len(tc.body)) || req.GetBody == nil {
				t.Errorf("content length %d, GetBody set %v; want %d, true", req.ContentLength, req.GetBody != nil, len(tc.body))
			}
			if again, _ := req.GetBody(); again != nil {
				if b, _ := io.ReadAll(again); string(b) != tc.body {
					t.Errorf("GetBody gives %s, want %s", b, tc.body)
				}
			}
		})
	}
}

func TestNewRequestRawContentTypeDefault(t *testing.T) {
	ev := testEvent()
	ev.ContentType = ""
	req, err := testEndpoint(t, config.FormatRaw, "http://127.0.0.1/").NewRequest(context.Background(), ev, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("content-type = %q, want application/octet-stream", ct)
	}
}

func TestNewRequestErrors(t *testing.T) {
	ev := testEvent()
	ev.Body = []byte("not json")
	if _, err := testEndpoint(t, config.FormatEnvelope, "http://127.0.0.1/").NewRequest(context.Background(), ev, time.Now()); err != ErrNotJSON {
		t.Errorf("non-JSON body in the envelope format: err = %v, want ErrNotJSON", err)
	}
	// Configured headers win over nothing but never over the signature.
	ep := testEndpoint(t, config.FormatRaw, "http://127.0.0.1/")
	ep.Header.Set("Webhook-Signature", "forged")
	req, err := ep.NewRequest(context.Background(), testEvent(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if sig := req.Header.Get("Webhook-Signature"); !strings.HasPrefix(sig, "v1,") {
		t.Errorf("webhook-signature = %q, want warren's", sig)
	}
}

// TestSend checks what reaches a server and what comes back.
func TestSend(t *testing.T) {
	var got *http.Request
	var gotBody []byte
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		gotBody, _ = io.ReadAll(r.Body)
		if status != http.StatusOK {
			w.Header().Set("Retry-After", "7")
		}
		w.WriteHeader(status)
		io.WriteString(w, "  slow\n down  ")
	}))
	defer srv.Close()
	c := testClient(2 * time.Second)
	defer c.Close()
	ep := testEndpoint(t, config.FormatEnvelope, srv.URL+"/hook?x=1")
	now := time.Now()

	res := c.Send(context.Background(), ep, testEvent(), now)
	if res.Status != http.StatusOK || res.Err != nil || res.Duration <= 0 {
		t.Fatalf("Send = %+v, want 200", res)
	}
	want, _ := ep.NewRequest(context.Background(), testEvent(), now)
	wantBody, _ := io.ReadAll(want.Body)
	if got.URL.RequestURI() != "/hook?x=1" || !bytes.Equal(gotBody, wantBody) || got.Header.Get("Webhook-Signature") != want.Header.Get("Webhook-Signature") {
		t.Errorf("server got %s %s", got.URL, gotBody)
	}

	status = http.StatusServiceUnavailable
	res = c.Send(context.Background(), ep, testEvent(), now)
	if res.Status != 503 || res.Err == nil || res.Err.Error() != "HTTP 503: slow down" || res.RetryAfter != 7*time.Second {
		t.Errorf("Send = %+v, want 503 with its body and Retry-After", res)
	}

	srv.Close()
	res = c.Send(context.Background(), ep, testEvent(), now)
	if res.Status != 0 || res.Err == nil || strings.Contains(res.Err.Error(), "x=1") || !strings.HasPrefix(res.Err.Error(), "post request: ") {
		t.Errorf("Send to a closed server = %+v, want a redacted transport error", res)
	}
}

// TestSendUserInfo: credentials in the URL become basic auth, as
// http.Client makes them, unless an Authorization header is configured.
func TestSendUserInfo(t *testing.T) {
	var auth []string
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		auth = r.Header.Values("Authorization")
	}))
	defer srv.Close()
	u := strings.Replace(srv.URL, "http://", "http://warren:s%3Acret@", 1) + "/"
	c := testClient(time.Second)
	ep := NewEndpoint(config.Subscription{URL: u, Options: config.Options{Format: config.FormatRaw}}, "warren/test")
	if res := c.Send(context.Background(), ep, testEvent(), time.Now()); res.Err != nil {
		t.Fatal(res.Err)
	}
	if want := "Basic d2FycmVuOnM6Y3JldA=="; len(auth) != 1 || auth[0] != want {
		t.Errorf("Authorization = %q, want %q", auth, want)
	}
	if res := c.Send(context.Background(), testEndpoint(t, config.FormatRaw, u), testEvent(), time.Now()); res.Err != nil {
		t.Fatal(res.Err)
	}
	if len(auth) != 1 || auth[0] != "Bearer t0ken" {
		t.Errorf("Authorization = %q, want the configured one only", auth)
	}
}

// TestRequestHeadersIndependent: adding to one header of a request changes
// no other header and no other request.
func TestRequestHeadersIndependent(t *testing.T) {
	for _, format := range []string{config.FormatEnvelope, config.FormatCloudEvents} {
		ep := testEndpoint(t, format, "http://127.0.0.1/")
		a, _ := ep.NewRequest(context.Background(), testEvent(), time.Now())
		want := a.Header.Clone()
		b, _ := ep.NewRequest(context.Background(), testEvent(), time.Now())
		for k := range b.Header {
			b.Header.Add(k, "extra")
		}
		if !reflect.DeepEqual(a.Header, want) {
			t.Errorf("%s: adding to one request's headers changed another's:\n%v\nwant %v", format, a.Header, want)
		}
		for k, v := range b.Header {
			if len(v) != 2 || v[0] != want.Get(k) || v[1] != "extra" {
				t.Errorf("%s: %s = %q after Add", format, k, v)
			}
		}
	}
}

func TestSendTimeout(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-block }))
	defer srv.Close()
	defer close(block)
	c := testClient(50 * time.Millisecond)
	res := c.Send(context.Background(), testEndpoint(t, config.FormatRaw, srv.URL), testEvent(), time.Now())
	if res.Status != 0 || res.Err == nil || res.Err.Error() != "timeout: no complete answer in time" {
		t.Errorf("Send = %+v, want a timeout", res)
	}
}

func TestSendRedirectIsAnAnswer(t *testing.T) {
	srv := httptest.NewServer(http.RedirectHandler("/elsewhere", http.StatusFound))
	defer srv.Close()
	res := testClient(time.Second).Send(context.Background(), testEndpoint(t, config.FormatRaw, srv.URL), testEvent(), time.Now())
	if res.Status != http.StatusFound || res.Err == nil {
		t.Errorf("Send = %+v, want the 302 itself", res)
	}
}

func BenchmarkBody(b *testing.B) {
	ep := testEndpoint(b, config.FormatEnvelope, "http://127.0.0.1/")
	ev := testEvent()
	ev.Body = bytes.Repeat([]byte(" "), 256)
	ev.Body[0], ev.Body[255] = '{', '}'
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ep.body(ev); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNewRequest(b *testing.B) {
	ep := testEndpoint(b, config.FormatEnvelope, "http://127.0.0.1:8080/hook")
	ev := testEvent()
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ep.NewRequest(context.Background(), ev, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSend is one whole attempt against a loopback server that
// answers 200 at once; the server's own work is included.
func BenchmarkSend(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	defer srv.Close()
	c := testClient(5 * time.Second)
	defer c.Close()
	ep := testEndpoint(b, config.FormatEnvelope, srv.URL+"/hook")
	ev := testEvent()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if res := c.Send(ctx, ep, ev, time.Now()); res.Status != http.StatusOK {
			b.Fatal(res.Err)
		}
	}
}

// TestConnectionsReused: n workers sending back to back keep reusing their
// connections. The transport is shared between subscriptions, so it has no
// per-host cap: a worker whose connection is not back in the pool yet may
// dial one more (64 workers open 65 to 85), but an idle pool smaller than
// the workers would close and reopen connections by the hundred.
func TestConnectionsReused(t *testing.T) {
	var opened atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	const workers = 64
	c := testClient(5 * time.Second)
	defer c.Close()
	ep := testEndpoint(t, config.FormatRaw, srv.URL)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range 100 {
				if res := c.Send(context.Background(), ep, testEvent(), time.Now()); res.Err != nil {
					t.Error(res.Err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := opened.Load(); n > 2*workers {
		t.Errorf("%d workers opened %d connections for %d requests", workers, n, workers*100)
	}
}

// BenchmarkNewRequest1MiB builds and reads one envelope request around a
// 1 MiB body: what one attempt costs in memory besides the network.
func BenchmarkNewRequest1MiB(b *testing.B) {
	ep := testEndpoint(b, config.FormatEnvelope, "http://127.0.0.1:8080/hook")
	ev := testEvent()
	ev.Body = bytes.Repeat([]byte(" "), 1<<20)
	ev.Body[0], ev.Body[len(ev.Body)-1] = '{', '}'
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		req, err := ep.NewRequest(context.Background(), ev, now)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, req.Body)
	}
}

// testClient is a client for a plain http:// endpoint on loopback.
func testClient(timeout time.Duration) *Client {
	return NewClient(config.Subscription{URL: "http://127.0.0.1/", Options: config.Options{Concurrency: 1, Timeout: timeout}})
}
