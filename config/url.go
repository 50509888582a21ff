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
