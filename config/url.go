package config

import (
	"errors"
	"net/url"
	"strings"
)

// parseURL is url.Parse without the raw URL in its error: the URL may carry a
// password, and errors end up in logs.
func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return nil, ue.Err
	}
	return u, err
}

// maskURL hides the userinfo of raw for messages. Unlike url.URL.Redacted it
// also works on URLs that do not parse, and hides a bare username, which is
// often a token.
func maskURL(raw string) string {
	scheme, rest := "", raw
	if i := strings.Index(raw, "://"); i >= 0 {
		scheme, rest = raw[:i+len("://")], raw[i+len("://"):]
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return raw
	}
	masked := "xxxxx"
	if user, _, hasPassword := strings.Cut(authority[:at], ":"); hasPassword {
		masked = user + ":xxxxx"
	}
	return scheme + masked + rest[at:]
}

// EndpointURL shows an endpoint URL without what may be a credential: the
// password, every query value, and every path segment after the first
// (webhook URLs often carry their token there, as in
// /services/T000/B000/XXXX). Scheme, host and the first segment are enough
// to tell endpoints apart.
func EndpointURL(raw string) string {
	u, err := parseURL(raw)
	if err != nil {
		return maskURL(raw)
	}
	if u.User != nil {
		u.User = url.User("xxxxx")
	}
	segments := strings.Split(strings.TrimPrefix(u.EscapedPath(), "/"), "/")
	for i := 1; i < len(segments); i++ {
		if segments[i] != "" {
			segments[i] = "xxxxx"
		}
	}
	if u.Path != "" {
		u.RawPath = ""
		u.Path = "/" + strings.Join(segments, "/")
	}
	q := u.Query()
	for k := range q {
		q[k] = []string{"xxxxx"}
	}
	u.RawQuery = q.Encode()
	return u.String()
}
