package delivery

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	amqp "github.com/rabbitmq/amqp091-go"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/config"
)

// recorder is a loopback endpoint that keeps what it received.
type recorder struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []*http.Request
	body [][]byte
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.reqs, r.body = append(r.reqs, req), append(r.body, b)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

func (r *recorder) last() *http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reqs[len(r.reqs)-1]
}

// TestInvalidProperties: a property no HTTP header may carry makes the
// attempt Invalid, naming the property, before any request is made.
func TestInvalidProperties(t *testing.T) {
	rec := newRecorder(t)
	c := testClient(time.Second)
	defer c.Close()
	bad := []string{"\n", "\r", "\x00", "\x7f", "\x1b[31m"}
	cases := []struct {
		property string
		formats  []string
		set      func(ev *event.Event, v string)
	}{
		{"message_id", []string{config.FormatEnvelope, config.FormatRaw, config.FormatCloudEvents}, func(ev *event.Event, v string) { ev.ID = "evt" + v + "1" }},
		{"routing key", []string{config.FormatEnvelope, config.FormatRaw, config.FormatCloudEvents}, func(ev *event.Event, v string) { ev.Type = "order" + v }},
		{"content_type", []string{config.FormatRaw, config.FormatCloudEvents}, func(ev *event.Event, v string) { ev.ContentType = "text/plain" + v }},
	}
	for _, tc := range cases {
		for _, format := range tc.formats {
			for _, v := range bad {
				ev := testEvent()
				tc.set(ev, v)
				res := c.Send(context.Background(), testEndpoint(t, format, rec.srv.URL), ev, time.Now())
				if !res.Invalid || res.Err == nil || !strings.HasPrefix(res.Err.Error(), tc.property+" contains control character") {
					t.Errorf("%s %q in %s: Send = %+v, want Invalid naming %s", tc.property, v, format, res, tc.property)
				}
				if d := Decide(res, 1, config.Default().Defaults.Retry); d.Action != Park || d.EndpointFailed {
					t.Errorf("%s %q: decision %+v, want parked, not an endpoint failure", tc.property, v, d)
				}
			}
		}
	}
	if n := rec.count(); n != 0 {
		t.Fatalf("endpoint got %d requests, want none", n)
	}

	// What warren does not send in a format, or only forwards, never
	// makes a message invalid: a bad value is left out.
	ev := testEvent()
	ev.ContentType = "text/plain\n"
	ev.Headers = amqp.Table{"X-Request-Id": "a\r\nInjected: 1", "traceparent": "00-\n", "X-Tenant": "eu"}
	ep := testEndpoint(t, config.FormatEnvelope, rec.srv.URL)
	ep.Forward = []string{"X-Request-Id", "X-Tenant"}
	if res := c.Send(context.Background(), ep, ev, time.Now()); res.Err != nil {
		t.Fatalf("Send = %+v, want delivered", res)
	}
	h := rec.last().Header
	if h.Get("Injected") != "" || h.Get("X-Request-Id") != "" || h.Get("Traceparent") != "" || h.Get("X-Tenant") != "eu" {
		t.Errorf("headers %v: want the bad values left out and X-Tenant forwarded", h)
	}
}

// TestTraceAndForwardedHeaders: W3C trace context and forward_headers go
// out as HTTP headers (matched without regard to case, values of any AMQP
// scalar type), never over warren's or the configured headers.
func TestTraceAndForwardedHeaders(t *testing.T) {
	rec := newRecorder(t)
	c := testClient(time.Second)
	defer c.Close()
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ev := testEvent()
	ev.Headers = amqp.Table{
		"traceparent": parent, "tracestate": "congo=t61rcWkgMzE",
		"x-request-id": "req-1", "X-Count": int32(7), "Authorization": "Bearer forged",
		"Webhook-Id": "forged", "Content-Type": "text/forged",
	}
	ep := testEndpoint(t, config.FormatEnvelope, rec.srv.URL)
	ep.Forward = []string{"X-Request-Id", "X-Count", "Authorization"}
	if res := c.Send(context.Background(), ep, ev, time.Now()); res.Err != nil {
		t.Fatal(res.Err)
	}
	h := rec.last().Header
	want := map[string]string{
		"Traceparent": parent, "Tracestate": "congo=t61rcWkgMzE", "X-Request-Id": "req-1", "X-Count": "7",
		"Authorization": "Bearer t0ken", "Webhook-Id": "evt_1", "Content-Type": "application/json",
	}
	for k, v := range want {
		if got := h.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}

	for _, bad := range []string{
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",   // zero trace id
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   // zero parent id
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // version ff
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   // upper case
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // extra field in version 00
		"garbage",
	} {
		if validTraceparent(bad) {
			t.Errorf("validTraceparent(%q) = true", bad)
		}
	}
	if !validTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future") {
		t.Error("a later version with an extra field is refused")
	}
}

// TestCloudEventsSDK sends events to a receiver built with the CloudEvents
// Go SDK: every one is accepted, with its extensions and data content type.
func TestCloudEventsSDK(t *testing.T) {
	p, err := cloudevents.NewHTTP()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []cloudevents.Event
	h, err := cloudevents.NewHTTPReceiveHandler(context.Background(), p, func(e cloudevents.Event) {
		mu.Lock()
		got = append(got, e)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	c := testClient(2 * time.Second)
	defer c.Close()
	ep := testEndpoint(t, config.FormatCloudEvents, srv.URL)

	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	jsonNoType := testEvent()
	jsonNoType.ContentType = ""
	jsonNoType.Headers = amqp.Table{
		"X-Tenant-Id": "eu-1", "cloudEvents:subject": "order/1", "priority": int32(5), "traceparent": parent,
		"x-death": "dropped", "warren-attempt": int32(2), "id": "forged", "-": "nothing left",
		"bad": "a\nb", "nested": amqp.Table{"a": 1},
	}
	binary := testEvent()
	binary.ContentType = "application/octet-stream"
	binary.Body = []byte{0, 1, 2}
	structured := testEvent()
	structured.ID = "evt_structured"
	structured.ContentType = "application/cloudevents+json; charset=utf-8"
	structured.Body = []byte(`{"specversion":"1.0","id":"ce-9","source":"/billing","type":"invoice.paid","datacontenttype":"application/json","data":{"n":1},"region":"eu"}`)

	for _, ev := range []*event.Event{jsonNoType, binary, structured} {
		if res := c.Send(context.Background(), ep, ev, time.Now()); res.Err != nil || res.Status/100 != 2 {
			t.Fatalf("event %s: Send = %+v, want accepted by the SDK", ev.ID, res)
		}
	}
	if len(got) != 3 {
		t.Fatalf("SDK received %d events, want 3", len(got))
	}
	e := got[0]
	if e.ID() != "evt_1" || e.Type() != "order.created" || e.Source() != "billing" || e.DataContentType() != "application/json" {
		t.Errorf("event 1 = %s", e)
	}
	wantExt := map[string]any{"xtenantid": "eu-1", "priority": "5", "traceparent": parent}
	for k, v := range wantExt {
		if e.Extensions()[k] != v {
			t.Errorf("extension %s = %v, want %v (all: %v)", k, e.Extensions()[k], v, e.Extensions())
		}
	}
	if e.Subject() != "order/1" {
		t.Errorf("subject = %q, want order/1 from cloudEvents:subject", e.Subject())
	}
	for _, k := range []string{"xdeath", "warrenattempt", "bad", "nested"} {
		if _, ok := e.Extensions()[k]; ok {
			t.Errorf("extension %s sent, want it left out", k)
		}
	}
	if got[1].DataContentType() != "application/octet-stream" || string(got[1].Data()) != "\x00\x01\x02" {
		t.Errorf("event 2 = %s", got[1])
	}
	s := got[2]
	if s.ID() != "ce-9" || s.Type() != "invoice.paid" || s.Extensions()["region"] != "eu" || string(s.Data()) != `{"n":1}` {
		t.Errorf("structured event = %s, want it as published", s)
	}

	notCE := testEvent()
	notCE.ContentType = "application/cloudevents+json"
	notCE.Body = []byte(`{"id":"x"}`)
	if res := c.Send(context.Background(), ep, notCE, time.Now()); !res.Invalid || res.Err != ErrNotCloudEvent {
		t.Errorf("structured body without specversion: Send = %+v, want Invalid", res)
	}
}

// TestExtensionName pins the header name to extension name mapping.
func TestExtensionName(t *testing.T) {
	for in, want := range map[string]string{
		"X-Tenant-Id": "xtenantid", "cloudEvents:region": "region", "cloudEvents_Region": "region",
		"api_version": "apiversion", "ID": "", "Time": "", "--": "", "data": "", "trace.id-2": "traceid2",
	} {
		if got := extensionName(in); got != want {
			t.Errorf("extensionName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMutualTLS delivers to an HTTPS endpoint that requires a client
// certificate signed by its CA.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCert(t, dir, "ca", nil, nil)
	newCert(t, dir, "server", ca, caKey)
	newCert(t, dir, "client", ca, caKey)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	serverCert, err := tlsKeyPair(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 1 && r.TLS.PeerCertificates[0].Subject.CommonName == "client" {
			served.Add(1)
		}
	}))
	srv.TLS = serverCertConfig(serverCert, pool)
	srv.StartTLS()
	defer srv.Close()

	file := func(name string) string { return filepath.Join(dir, name) }
	send := func(tlsConf config.TLS) Result {
		s := config.Subscription{URL: srv.URL, Options: config.Options{Concurrency: 1, Timeout: 2 * time.Second, TLS: tlsConf}}
		c := NewClient(s)
		defer c.Close()
		return c.Send(context.Background(), testEndpoint(t, config.FormatRaw, srv.URL), testEvent(), time.Now())
	}
	full := config.TLS{CAFile: file("ca.pem"), CertFile: file("client.pem"), KeyFile: file("client-key.pem")}
	if res := send(full); res.Status != 200 || served.Load() != 1 {
		t.Fatalf("with the client certificate: Send = %+v, served %d", res, served.Load())
	}
	named := full
	named.ServerName = "localhost"
	if res := send(named); res.Status != 200 {
		t.Errorf("server_name localhost (in the certificate): Send = %+v", res)
	}
	for name, tc := range map[string]config.TLS{
		"no client certificate": {CAFile: file("ca.pem")},
		"system CAs":            {CertFile: file("client.pem"), KeyFile: file("client-key.pem")},
		"wrong server_name":     {CAFile: file("ca.pem"), CertFile: file("client.pem"), KeyFile: file("client-key.pem"), ServerName: "other.example"},
		"unreadable key":        {CAFile: file("ca.pem"), CertFile: file("client.pem"), KeyFile: file("missing.pem")},
	} {
		if res := send(tc); res.Err == nil || res.Invalid || res.Status != 0 {
			t.Errorf("%s: Send = %+v, want a transport error", name, res)
		}
	}
	if n := served.Load(); n != 2 {
		t.Errorf("endpoint served %d requests, want 2", n)
	}
}

// TestMinVersion: with min_version 1.3 an endpoint that speaks at most
// TLS 1.2 is a transport error; with 1.2 it is reached.
func TestMinVersion(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCert(t, dir, "ca", nil, nil)
	newCert(t, dir, "server", ca, caKey)
	serverCert, err := tlsKeyPair(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { served.Add(1) }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, MaxVersion: tls.VersionTLS12}
	srv.StartTLS()
	defer srv.Close()

	send := func(minVersion string) Result {
		tlsConf := config.TLS{CAFile: filepath.Join(dir, "ca.pem"), MinVersion: minVersion}
		s := config.Subscription{URL: srv.URL, Options: config.Options{Concurrency: 1, Timeout: 2 * time.Second, TLS: tlsConf}}
		c := NewClient(s)
		defer c.Close()
		return c.Send(context.Background(), testEndpoint(t, config.FormatRaw, srv.URL), testEvent(), time.Now())
	}
	if res := send(config.TLS13); res.Err == nil || res.Invalid || res.Status != 0 {
		t.Errorf("min_version 1.3 to a TLS 1.2 endpoint: Send = %+v, want a transport error", res)
	} else if !strings.Contains(res.Err.Error(), "protocol version") {
		t.Errorf("min_version 1.3: error %q, want it to name the protocol version", res.Err)
	}
	if n := served.Load(); n != 0 {
		t.Fatalf("endpoint served %d requests over TLS 1.2 to a 1.3-only client", n)
	}
	for _, v := range []string{config.TLS12, ""} {
		if res := send(v); res.Status != 200 {
			t.Errorf("min_version %q: Send = %+v, want 200", v, res)
		}
	}
	if n := served.Load(); n != 2 {
		t.Errorf("endpoint served %d requests, want 2", n)
	}
}

// TestProxy: with proxy set, attempts go through that forward proxy, even
// to a loopback endpoint (which the environment's proxy never takes).
func TestProxy(t *testing.T) {
	rec := newRecorder(t)
	var proxied atomic.Int64
	forward := &http.Transport{} // the proxy itself goes direct
	defer forward.CloseIdleConnections()
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !r.URL.IsAbs() {
			http.Error(w, "not a proxy request: "+r.RequestURI, http.StatusBadRequest)
			return
		}
		proxied.Add(1)
		out := r.Clone(r.Context())
		out.RequestURI = ""
		resp, err := forward.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("X-Proxied", "yes")
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	defer proxy.Close()

	send := func(proxyURL string) Result {
		s := config.Subscription{URL: rec.srv.URL, Options: config.Options{Concurrency: 1, Timeout: 2 * time.Second, Proxy: proxyURL}}
		c := NewClient(s)
		defer c.Close()
		return c.Send(context.Background(), testEndpoint(t, config.FormatRaw, rec.srv.URL+"/hooks"), testEvent(), time.Now())
	}
	if res := send(proxy.URL); res.Status != 200 {
		t.Fatalf("through the proxy: Send = %+v, want 200", res)
	}
	if p, n := proxied.Load(), rec.count(); p != 1 || n != 1 {
		t.Fatalf("proxy forwarded %d requests, endpoint received %d; want 1 and 1", p, n)
	}
	if got := rec.last().URL.Path; got != "/hooks" {
		t.Errorf("endpoint got path %q, want /hooks", got)
	}
	if res := send(""); res.Status != 200 || proxied.Load() != 1 || rec.count() != 2 {
		t.Errorf("without proxy: Send = %+v, proxied %d, received %d; want 200, 1, 2", res, proxied.Load(), rec.count())
	}

	// A proxy that is down fails the attempt instead of going direct.
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()
	if res := send(downURL); res.Err == nil || res.Status != 0 {
		t.Errorf("proxy down: Send = %+v, want a transport error", res)
	}
	if n := rec.count(); n != 2 {
		t.Errorf("endpoint received %d requests, want 2", n)
	}
}

// newCert writes name.pem and name-key.pem, signed by parent (self-signed
// CA when parent is nil), valid for 127.0.0.1 and localhost.
func newCert(t *testing.T, dir, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
	}
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(file, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(name+".pem", "CERTIFICATE", der)
	write(name+"-key.pem", "EC PRIVATE KEY", keyDER)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestSharedTransports: subscriptions on one scheme, host and TLS setting
// share one transport; the last Close releases it.
func TestSharedTransports(t *testing.T) {
	count := func() int {
		transports.Lock()
		defer transports.Unlock()
		return len(transports.m)
	}
	before := count()
	sub := func(url string, tlsConf config.TLS) config.Subscription {
		return config.Subscription{URL: url, Options: config.Options{Concurrency: 16, Timeout: time.Second, TLS: tlsConf}}
	}
	var clients []*Client
	for i := range 10_000 {
		clients = append(clients, NewClient(sub("http://merchants.test:8080/hooks/"+strconv.Itoa(i), config.TLS{})))
	}
	if n := count() - before; n != 1 {
		t.Fatalf("10,000 subscriptions on one host made %d transports, want 1", n)
	}
	clients = append(clients,
		NewClient(sub("https://merchants.test:8080/", config.TLS{})),
		NewClient(sub("https://merchants.test:8080/", config.TLS{ServerName: "other"})),
		NewClient(sub("http://other.test:8080/", config.TLS{})),
		NewClient(sub("http://MERCHANTS.test:8080/x", config.TLS{ServerName: "ignored for http"})),
		NewClient(sub("https://merchants.test:8080/", config.TLS{MinVersion: config.TLS12})),
		NewClient(sub("https://merchants.test:8080/", config.TLS{MinVersion: config.TLS13})),
		NewClient(config.Subscription{URL: "http://merchants.test:8080/", Options: config.Options{Concurrency: 1, Proxy: "http://proxy.test:3128"}}),
	)
	if n := count() - before; n != 6 {
		t.Errorf("%d transports, want 6 (http, https, https with server_name, another host, https with min_version 1.3, http by proxy)", n)
	}
	for _, c := range clients {
		c.Close()
		c.Close() // twice is harmless
	}
	if n := count(); n != before {
		t.Errorf("%d transports after every Close, want %d", n, before)
	}
}

// TestResponseHygiene: what an endpoint answers reaches logs without
// control characters, and an oversized header block is refused.
func TestResponseHygiene(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Header().Set("X-Big", strings.Repeat("a", 100<<10))
			return
		}
		w.WriteHeader(500)
		io.WriteString(w, "\x1b[31mred\x1b[0m \u202eevil\xff\x00 \r\n done")
	}))
	defer srv.Close()
	c := testClient(2 * time.Second)
	defer c.Close()
	res := c.Send(context.Background(), testEndpoint(t, config.FormatRaw, srv.URL), testEvent(), time.Now())
	msg := res.Err.Error()
	for _, r := range msg {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			t.Errorf("error %q holds %U", msg, r)
		}
	}
	if want := "HTTP 500: \ufffd[31mred\ufffd[0m \ufffdevil\ufffd\ufffd done"; msg != want {
		t.Errorf("error = %q, want %q", msg, want)
	}
	res = c.Send(context.Background(), testEndpoint(t, config.FormatRaw, srv.URL+"/big"), testEvent(), time.Now())
	if res.Err == nil || res.Status != 0 {
		t.Errorf("100 KiB of response headers: Send = %+v, want an error", res)
	}
}

// TestEd25519Delivery signs with a whsk_ key beside a whsec_ secret: the
// receiver verifies v1a with the public key and v1 with the official
// library, over the body it received.
func TestEd25519Delivery(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	edSecret, err := config.ParseSecret("whsk_" + base64.StdEncoding.EncodeToString(priv.Seed()))
	if err != nil {
		t.Fatal(err)
	}
	hmacSecret, _ := config.ParseSecret(testSecret)
	lib, _ := standardwebhooks.NewWebhook(testSecret)
	rec := newRecorder(t)
	ep := NewEndpoint(config.Subscription{URL: rec.srv.URL, Secrets: []config.Secret{edSecret, hmacSecret},
		Options: config.Options{Format: config.FormatEnvelope}}, "warren/test")
	c := testClient(time.Second)
	defer c.Close()
	if res := c.Send(context.Background(), ep, testEvent(), time.Now()); res.Err != nil {
		t.Fatal(res.Err)
	}
	req, body := rec.last(), rec.body[0]
	sigs := strings.Fields(req.Header.Get("Webhook-Signature"))
	if len(sigs) != 2 || !strings.HasPrefix(sigs[0], "v1a,") {
		t.Fatalf("webhook-signature = %q, want v1a then v1", sigs)
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(sigs[0], "v1a,"))
	msg := req.Header.Get("Webhook-Id") + "." + req.Header.Get("Webhook-Timestamp") + "." + string(body)
	if !ed25519.Verify(pub, []byte(msg), raw) {
		t.Error("v1a signature does not verify with the public key")
	}
	if err := lib.Verify(body, req.Header); err != nil {
		t.Errorf("official library: %v", err)
	}
}

func tlsKeyPair(dir, name string) (tls.Certificate, error) {
	return tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
}

// serverCertConfig requires a client certificate signed by clientCAs.
func serverCertConfig(cert tls.Certificate, clientCAs *x509.CertPool) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs}
}
