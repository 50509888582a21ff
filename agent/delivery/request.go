// Package delivery turns an event into one signed HTTP request, sends it,
// and decides what its answer means.
package delivery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/signing"
	"github.com/warren-hq/warren/config"
)

// ErrNotJSON is returned for a non-JSON body in the envelope format: the
// message can never be delivered as configured.
var ErrNotJSON = errors.New(`body is not JSON: the envelope format embeds it as "data"; use format: raw or cloudevents for non-JSON events`)

// Endpoint is a subscription's HTTP side, prepared once.
type Endpoint struct {
	URL       string
	Format    string
	Source    string
	Header    http.Header     // configured headers, canonical
	Signer    *signing.Signer // nil when the subscription has no secrets
	UserAgent string
}

// NewEndpoint prepares a subscription's endpoint.
func NewEndpoint(s config.Subscription, userAgent string) *Endpoint {
	ep := &Endpoint{URL: s.URL, Format: s.Format, Source: s.Source, Header: http.Header{}, UserAgent: userAgent}
	for k, v := range s.Headers {
		ep.Header.Set(k, v)
	}
	if len(s.Secrets) > 0 {
		keys := make([][]byte, len(s.Secrets))
		for i, sec := range s.Secrets {
			keys[i] = sec.Key()
		}
		ep.Signer = signing.NewSigner(keys)
	}
	return ep
}

// Body renders the request body for the endpoint's format.
func (ep *Endpoint) Body(ev *event.Event) ([]byte, error) {
	if ep.Format != config.FormatEnvelope {
		return ev.Body, nil
	}
	if !json.Valid(ev.Body) {
		return nil, ErrNotJSON
	}
	b := make([]byte, 0, len(ev.Body)+len(ev.ID)+len(ev.Type)+96)
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
	b = append(b, `,"data":`...)
	b = append(b, ev.Body...)
	return append(b, '}'), nil
}

// NewRequest builds the signed POST for one attempt made at now.
func (ep *Endpoint) NewRequest(ctx context.Context, ev *event.Event, now time.Time) (*http.Request, error) {
	body, err := ep.Body(ev)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	h := req.Header
	for k, v := range ep.Header {
		h[k] = v
	}
	h.Set("User-Agent", ep.UserAgent)
	ts := strconv.FormatInt(now.Unix(), 10)
	h.Set("Webhook-Id", ev.ID)
	h.Set("Webhook-Timestamp", ts)
	if ep.Signer != nil {
		h.Set("Webhook-Signature", ep.Signer.Sign(ev.ID, now, body))
	}
	switch ep.Format {
	case config.FormatEnvelope:
		h.Set("Content-Type", "application/json")
	case config.FormatRaw:
		h.Set("Content-Type", contentType(ev))
	case config.FormatCloudEvents:
		h.Set("Content-Type", contentType(ev))
		h.Set("Ce-Specversion", "1.0")
		h.Set("Ce-Id", ev.ID)
		h.Set("Ce-Type", ev.Type)
		h.Set("Ce-Source", ep.Source)
		h.Set("Ce-Time", ev.CreatedAt.UTC().Format(time.RFC3339))
	}
	return req, nil
}

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
