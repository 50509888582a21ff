// Package delivery turns an event into one signed HTTP request, sends it,
// and decides what its answer means.
package delivery

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/signing"
	"github.com/warren-hq/warren/config"
)

// ErrNotJSON is returned for a non-JSON body in the envelope format: the
// message can never be delivered as configured.
var ErrNotJSON = errors.New(`body is not JSON: the envelope format embeds it as "data"; use format: raw or cloudevents for non-JSON events`)

// ErrNotCloudEvent is returned for a message published as a structured
// CloudEvent (application/cloudevents+json) whose body is not one.
var ErrNotCloudEvent = errors.New(`body is not a structured CloudEvent: content_type is application/cloudevents+json but the body is not a JSON object with string specversion "1.0", id, source and type`)

// Endpoint is a subscription's HTTP side, prepared once.
type Endpoint struct {
	URL       string
	Format    string
	Source    string
	Header    http.Header     // configured headers, canonical
	Forward   []string        // forward_headers: AMQP header names sent as HTTP headers
	Signer    *signing.Signer // nil when the subscription has no secrets
	UserAgent string

	parsed *url.URL // URL, parsed once; nil if it does not parse
	// secrets are what an endpoint echoing its request back must not get
	// into logs and copies: configured header values, the URL's query
	// values and path segments after the first.
	secrets []string
}

// scrub masks the endpoint's secrets in text the endpoint sent.
func (ep *Endpoint) scrub(text string) string {
	for _, sec := range ep.secrets {
		text = strings.ReplaceAll(text, sec, "xxxxx")
	}
	return text
}

// NewEndpoint prepares a subscription's endpoint.
func NewEndpoint(s config.Subscription, userAgent string) *Endpoint {
	ep := &Endpoint{URL: s.URL, Format: s.Format, Source: s.Source, Header: http.Header{}, UserAgent: userAgent,
		Forward: s.ForwardHeaders}
	ep.parsed, _ = url.Parse(s.URL)
	for k, v := range s.Headers {
		ep.Header.Set(k, v)
		ep.addSecret(v)
		if _, token, ok := strings.Cut(v, " "); ok {
			ep.addSecret(token) // "Bearer <token>"
		}
	}
	if u := ep.parsed; u != nil && u.User != nil && ep.Header.Get("Authorization") == "" {
		// What http.Client does with credentials in the URL (config
		// refuses them; a request built elsewhere may carry them).
		pass, _ := u.User.Password()
		basic := base64.StdEncoding.EncodeToString([]byte(u.User.Username() + ":" + pass))
		ep.Header.Set("Authorization", "Basic "+basic)
		ep.addSecret(pass)
		ep.addSecret(basic)
	}
	if ep.parsed != nil {
		for _, vs := range ep.parsed.Query() {
			for _, v := range vs {
				ep.addSecret(v)
			}
		}
		segments := strings.Split(strings.Trim(ep.parsed.Path, "/"), "/")
		for _, seg := range segments[min(1, len(segments)):] {
			ep.addSecret(seg)
		}
	}
	if len(s.Secrets) > 0 {
		keys := make([]signing.Key, len(s.Secrets))
		for i, sec := range s.Secrets {
			keys[i] = signing.Key{HMAC: sec.Key(), Ed25519: sec.Ed25519()}
		}
		ep.Signer = signing.NewKeySigner(keys)
	}
	return ep
}

// envelopeEnd closes the envelope after the data.
var envelopeEnd = []byte("}")

// body returns the request body in parts (sent and signed in order, so the
// message body is never copied) and its content type.
func (ep *Endpoint) body(ev *event.Event) (parts [3][]byte, ctype string, err error) {
	switch {
	case ep.Format == config.FormatEnvelope:
		if !json.Valid(ev.Body) {
			return parts, "", ErrNotJSON
		}
		return [3][]byte{envelopeStart(ev), ev.Body, envelopeEnd}, "application/json", nil
	case ep.Format == config.FormatCloudEvents && structured(ev.ContentType):
		if !validStructured(ev.Body) {
			return parts, "", ErrNotCloudEvent
		}
		return [3][]byte{nil, ev.Body, nil}, ev.ContentType, nil
	case ep.Format == config.FormatCloudEvents && ev.ContentType == "" && json.Valid(ev.Body):
		// datacontenttype says what data is; JSON is the likely intent.
		return [3][]byte{nil, ev.Body, nil}, "application/json", nil
	}
	return [3][]byte{nil, ev.Body, nil}, contentType(ev), nil
}

// envelopeStart is the envelope up to "data":.
func envelopeStart(ev *event.Event) []byte {
	b := make([]byte, 0, len(ev.ID)+len(ev.Type)+len(ev.APIVersion)+96)
	b = append(b, `{"id":`...)
	b = appendJSONString(b, ev.ID)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, ev.Type)
	b = append(b, `,"created_at":"`...)
	b = ev.CreatedAt.UTC().AppendFormat(b, time.RFC3339)
	b = append(b, '"')
	if ev.APIVersion != "" {
		b = append(b, `,"api_version":`...)
		b = appendJSONString(b, ev.APIVersion)
	}
	return append(b, `,"data":`...)
}

// structured reports whether a content type is a structured-mode
// CloudEvent, which is sent as it is.
func structured(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "application/cloudevents+json")
}

// validStructured checks the attributes every CloudEvent has.
func validStructured(body []byte) bool {
	var ce struct {
		SpecVersion *string `json:"specversion"`
		ID          *string `json:"id"`
		Source      *string `json:"source"`
		Type        *string `json:"type"`
	}
	if json.Unmarshal(body, &ce) != nil || ce.SpecVersion == nil || ce.ID == nil || ce.Source == nil || ce.Type == nil {
		return false
	}
	return *ce.SpecVersion == "1.0" && *ce.ID != "" && *ce.Source != "" && *ce.Type != ""
}

// check refuses, before any I/O, a message whose properties cannot go in a
// request: net/http would refuse them at send time, which looks like an
// endpoint failure. The id and type are checked in every format (they
// name the event in headers, logs and copies); the content type where it is
// sent.
func (ep *Endpoint) check(ev *event.Event) error {
	if err := checkProperty("message_id", ev.ID); err != nil {
		return err
	}
	if err := checkProperty("routing key", ev.Type); err != nil {
		return err
	}
	if ep.Format != config.FormatEnvelope {
		return checkProperty("content_type", ev.ContentType)
	}
	return nil
}

// NewRequest builds the signed POST for one attempt made at now. Its errors
// are facts about the message: retrying cannot help.
func (ep *Endpoint) NewRequest(ctx context.Context, ev *event.Event, now time.Time) (*http.Request, error) {
	if err := ep.check(ev); err != nil {
		return nil, err
	}
	parts, ctype, err := ep.body(ev)
	if err != nil {
		return nil, err
	}
	req, err := ep.newRequest(ctx)
	if err != nil {
		return nil, err
	}
	setBody(req, parts)
	h := req.Header
	// From the message first: configured headers and warren's own, set
	// after, always win.
	for _, name := range ep.Forward {
		if v, ok := lookupHeader(ev.Headers, name); ok {
			if s, ok := headerString(v); ok {
				h.Set(name, s)
			}
		}
	}
	parent, state := traceContext(ev.Headers)
	if parent != "" {
		h.Set("Traceparent", parent)
		if state != "" {
			h.Set("Tracestate", state)
		}
	}
	for k, v := range ep.Header {
		h[k] = v
	}
	h.Set("User-Agent", ep.UserAgent)
	ts := strconv.FormatInt(now.Unix(), 10)
	h.Set("Webhook-Id", ev.ID)
	h.Set("Webhook-Timestamp", ts)
	if ep.Signer != nil {
		h.Set("Webhook-Signature", ep.Signer.SignParts(ev.ID, now, parts[0], parts[1], parts[2]))
	}
	h.Set("Content-Type", ctype)
	if ep.Format == config.FormatCloudEvents && !structured(ev.ContentType) {
		setExtensions(h, ev.Headers)
		h.Set("Ce-Specversion", "1.0")
		h.Set("Ce-Id", ev.ID)
		h.Set("Ce-Type", ev.Type)
		h.Set("Ce-Source", ep.Source)
		h.Set("Ce-Time", ev.CreatedAt.UTC().Format(time.RFC3339))
		if parent != "" {
			// The CloudEvents distributed tracing extension.
			h.Set("Ce-Traceparent", parent)
			if state != "" {
				h.Set("Ce-Tracestate", state)
			}
		}
	}
	return req, nil
}

// joinBelow is the body size under which parts are joined into one
// buffer: net/http writes a body it knows to be in memory (a
// *bytes.Reader) with the headers in one write, any other body after
// flushing the headers, which costs a second syscall per request. Copying
// a small body is cheaper than that; a large one is sent in parts.
const joinBelow = 64 << 10

// addSecret remembers v for scrub; short values are too common to mask.
func (ep *Endpoint) addSecret(v string) {
	if len(v) >= 6 {
		ep.secrets = append(ep.secrets, v)
	}
}

// newRequest is http.NewRequestWithContext without parsing the URL again
// for every attempt.
func (ep *Endpoint) newRequest(ctx context.Context) (*http.Request, error) {
	if ep.parsed == nil {
		return http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, nil)
	}
	u := *ep.parsed
	req := &http.Request{
		Method: http.MethodPost, URL: &u, Host: strings.TrimSuffix(u.Host, ":"),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: make(http.Header, 12),
	}
	return req.WithContext(ctx), nil
}

// setBody sends parts in order; net/http calls GetBody to send them again
// (HTTP/2 retries).
func setBody(req *http.Request, parts [3][]byte) {
	n := len(parts[0]) + len(parts[1]) + len(parts[2])
	req.ContentLength = int64(n)
	switch {
	case n == 0:
		req.Body, req.GetBody = http.NoBody, func() (io.ReadCloser, error) { return http.NoBody, nil }
		return
	case n < joinBelow:
		body := make([]byte, 0, n)
		body = append(append(append(body, parts[0]...), parts[1]...), parts[2]...)
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	default:
		req.GetBody = func() (io.ReadCloser, error) { return &partsReader{parts: parts}, nil }
	}
	req.Body, _ = req.GetBody()
}

// partsReader reads byte slices one after the other, like io.MultiReader
// over bytes.Readers, but its WriteTo hands each slice to the connection
// as it is, with no 32 KiB copy buffer per request.
type partsReader struct {
	parts [3][]byte
	i     int
}

func (r *partsReader) Read(p []byte) (int, error) {
	for r.i < len(r.parts) && len(r.parts[r.i]) == 0 {
		r.i++
	}
	if r.i == len(r.parts) {
		return 0, io.EOF
	}
	n := copy(p, r.parts[r.i])
	r.parts[r.i] = r.parts[r.i][n:]
	return n, nil
}

func (r *partsReader) WriteTo(w io.Writer) (int64, error) {
	var sum int64
	for ; r.i < len(r.parts); r.i++ {
		if len(r.parts[r.i]) == 0 {
			continue
		}
		n, err := w.Write(r.parts[r.i])
		sum += int64(n)
		r.parts[r.i] = r.parts[r.i][n:]
		if err != nil {
			return sum, err
		}
	}
	return sum, nil
}

func (r *partsReader) Close() error { return nil }

func contentType(ev *event.Event) string {
	if ev.ContentType != "" {
		return ev.ContentType
	}
	return "application/octet-stream"
}

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
