package config

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/warren-hq/warren/config/expr"
)

func (v *checker) subscriptions() {
	c := v.c
	if len(c.Subscriptions) == 0 {
		v.required("subscriptions", "at least one subscription")
		return
	}
	names := map[string]string{} // name -> path of the first subscription using it
	for i, s := range c.Subscriptions {
		path := fmt.Sprintf("subscriptions[%d]", i)
		v.name(path+".name", s.Name, names)
		v.endpoint(path+".url", s.URL)
		v.events(path+".events", s.Events)
		v.secrets(path+".secrets", s.Secrets)
		v.headers(path+".headers", s.Headers)
		v.options(path, s.Options, func(key string) bool { return c.set(join(path, key)) })
		v.queueNames(path, s)
		v.expression(path+".filter", expr.Filter, s.Filter)
		v.expression(path+".transform", expr.Transform, s.Transform)
		v.expression(path+".ordering.key", expr.OrderingKey, s.Ordering.Key)
	}
}

// expression compiles a CEL expression. A problem is placed at the start of
// the YAML value and says where inside the expression it lies: quoting and
// block scalars make the exact file column unreliable.
func (v *checker) expression(path string, kind expr.Kind, src string) {
	if src == "" {
		return
	}
	_, problems, err := expr.Compile(kind, src)
	if err != nil {
		v.add(path, "%s", err)
		return
	}
	multiline := strings.Contains(strings.TrimSuffix(src, "\n"), "\n")
	for _, p := range problems {
		var where string
		switch {
		case p.Column == 0:
			where = "got " + quoteExpr(src)
		case multiline:
			where = fmt.Sprintf("at line %d, column %d of %s", p.Line, p.Column, quoteExpr(src))
		default:
			where = fmt.Sprintf("at column %d of %s", p.Column, quoteExpr(src))
		}
		if p.Want != "" {
			where += ", " + p.Want
		}
		v.add(path, "%s (%s)", p.Message, where)
	}
}

// quoteExpr shows an expression in a message, shortened when long.
func quoteExpr(src string) string {
	const max = 80
	if len(src) <= max {
		return strconv.Quote(src)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(src[cut]) {
		cut--
	}
	return strconv.Quote(src[:cut]) + "…"
}

func (v *checker) name(path, name string, names map[string]string) {
	switch first, dup := names[name]; {
	case name == "":
		v.required(path, "a name such as orders")
	case !subscriptionName.MatchString(name):
		v.add(path, "invalid name (got %q, want lower-case letters, digits, '_' and '-', starting with a letter or digit)", name)
	case dup:
		v.add(path, "duplicate name (got %q, first at %s)", name, v.c.firstAt(first))
	case v.c.Broker.Journal != nil && (name == "journal" || name == "attempts"):
		v.add(path, "reserved while broker.journal is set (got %q: its work queue would be the stream %s; want another name)", name, v.c.Broker.QueuePrefix+"."+name)
	default:
		names[name] = path
	}
}

func (v *checker) endpoint(path, raw string) {
	u, err := parseURL(raw)
	switch {
	case raw == "":
		v.required(path, "an http:// or https:// URL")
	case err != nil:
		v.add(path, "invalid URL: %s (got %q, want an absolute http:// or https:// URL)", err, maskURL(raw))
	case u.Scheme == "":
		v.add(path, "not an absolute URL (got %q, want e.g. https://example.com/webhooks)", maskURL(raw))
	case u.Scheme != "http" && u.Scheme != "https":
		v.add(path, "unsupported scheme (got %q, want an absolute http:// or https:// URL)", maskURL(raw))
	case u.Hostname() == "":
		v.add(path, "missing host (got %q, want e.g. https://example.com/webhooks)", maskURL(raw))
	case u.User != nil:
		v.add(path, "credentials in URL (got %q, want them in headers, e.g. Authorization)", maskURL(raw))
	}
}

func (v *checker) events(path string, patterns []string) {
	if len(patterns) == 0 {
		v.required(path, `at least one routing-key pattern such as "order.*"`)
		return
	}
	first := make(map[string]int, len(patterns))
	for i, p := range patterns {
		at := fmt.Sprintf("%s[%d]", path, i)
		if msg := checkPattern(p); msg != "" {
			v.add(at, "%s", msg)
			continue
		}
		if j, dup := first[p]; dup {
			v.add(at, "duplicate pattern (got %q, first at %s)", p, v.c.firstAt(fmt.Sprintf("%s[%d]", path, j)))
			continue
		}
		first[p] = i
	}
}

// checkPattern checks an AMQP topic binding key: dot-separated words, where
// * (one word) and # (zero or more words) only match as whole words.
func checkPattern(p string) string {
	switch {
	case p == "":
		return `empty pattern (want a routing-key pattern such as "order.*")`
	case len(p) > maxNameBytes:
		return fmt.Sprintf("too long (got %d bytes, want at most %d)", len(p), maxNameBytes)
	case !utf8.ValidString(p):
		return fmt.Sprintf("not valid UTF-8 (got %q)", p)
	}
	for word := range strings.SplitSeq(p, ".") {
		if word != "*" && word != "#" && strings.ContainsAny(word, "*#") {
			return fmt.Sprintf("wildcard must be a whole word (got %q, want e.g. %q)", p, wholeWords(p))
		}
	}
	return ""
}

// wholeWords suggests a fix for a pattern by putting each wildcard in a word
// of its own: "order*" -> "order.*".
func wholeWords(p string) string {
	var b strings.Builder
	for i, r := range p {
		if r != '*' && r != '#' {
			b.WriteRune(r)
			continue
		}
		if s := b.String(); s != "" && !strings.HasSuffix(s, ".") {
			b.WriteByte('.')
		}
		b.WriteRune(r)
		if i+1 < len(p) && p[i+1] != '.' {
			b.WriteByte('.')
		}
	}
	return b.String()
}

func (v *checker) secrets(path string, secrets []Secret) {
	first := make(map[Secret]int, len(secrets))
	for i, s := range secrets {
		at := fmt.Sprintf("%s[%d]", path, i)
		if s.key == "" {
			// Also a secret that did not decode: reported there already, and
			// the rest of the list is still checked.
			v.required(at, "a secret such as whsec_...")
			continue
		}
		if j, dup := first[s]; dup {
			v.add(at, "duplicate secret (first at %s)", v.c.firstAt(fmt.Sprintf("%s[%d]", path, j)))
			continue
		}
		first[s] = i
	}
}

// reservedHeaders are set by warren on every request; cloudevents' ce-*
// headers are checked by prefix.
var reservedHeaders = []string{
	"webhook-id", "webhook-timestamp", "webhook-signature",
	"content-length", "host", "user-agent",
}

func (v *checker) headers(path string, headers map[string]string) {
	// In file order, so that "first at" points at the earlier line.
	names := slices.Sorted(maps.Keys(headers))
	slices.SortStableFunc(names, func(a, b string) int {
		pa, pb := v.c.position(join(path, a)), v.c.position(join(path, b))
		return cmp.Or(cmp.Compare(pa.line, pb.line), cmp.Compare(pa.column, pb.column))
	})
	first := map[string]string{} // lower-case name -> path
	for _, name := range names {
		at, lower := join(path, name), strings.ToLower(name)
		switch earlier, dup := first[lower]; {
		case !isToken(name):
			v.add(at, "invalid header name (got %q, want an HTTP token such as X-Request-Source)", name)
		case slices.Contains(reservedHeaders, lower) || strings.HasPrefix(lower, "ce-"):
			v.add(at, "reserved header, set by warren (got %q, want another name)", name)
		case dup:
			v.add(at, "duplicate header (got %q, first at %s)", name, v.c.firstAt(earlier))
		case !validHeaderValue(headers[name]):
			v.add(at, "invalid header value: control character such as a line break (got %s, want a single line)", headerValue(name, headers[name]))
		default:
			first[lower] = at
		}
	}
}

// notForwarded are headers a message must not set: warren's own, and those
// that describe the connection or the body rather than the event.
var notForwarded = []string{
	"content-type", "content-encoding", "connection", "keep-alive", "transfer-encoding",
	"te", "trailer", "upgrade", "expect", "proxy-connection", "proxy-authorization",
}

// forwardHeaders checks the AMQP headers sent on as HTTP headers.
func (v *checker) forwardHeaders(path string, names []string) {
	first := map[string]int{}
	for i, name := range names {
		at, lower := fmt.Sprintf("%s[%d]", path, i), strings.ToLower(name)
		j, dup := first[lower]
		switch {
		case !isToken(name):
			v.add(at, "invalid header name (got %q, want an HTTP token such as X-Request-Id)", name)
		case slices.Contains(reservedHeaders, lower) || slices.Contains(notForwarded, lower) ||
			strings.HasPrefix(lower, "ce-") || strings.HasPrefix(lower, "webhook-"):
			v.add(at, "reserved header, set by warren (got %q, want a header of the event such as X-Request-Id)", name)
		case dup:
			v.add(at, "duplicate header (got %q, first at %s)", name, v.c.firstAt(fmt.Sprintf("%s[%d]", path, j)))
		default:
			first[lower] = i
		}
	}
}

// isToken reports whether s is an HTTP field name (RFC 9110 token).
func isToken(s string) bool {
	for _, r := range s {
		if !isAlnum(r) && !strings.ContainsRune("!#$%&'*+-.^_`|~", r) {
			return false
		}
	}
	return s != ""
}

// validHeaderValue rejects what net/http would refuse to send: control
// characters other than tab.
func validHeaderValue(s string) bool {
	for _, r := range s {
		if r < ' ' && r != '\t' || r == 0x7f {
			return false
		}
	}
	return true
}

// sensitiveHeader guesses which headers carry credentials, to hide their
// values in messages and in Effective.
func sensitiveHeader(name string) bool {
	lower := strings.ToLower(name)
	for _, word := range []string{"authorization", "cookie", "token", "secret", "key", "password"} {
		if strings.Contains(lower, word) {
			return true
		}
	}
	return false
}

func headerValue(name, value string) string {
	if sensitiveHeader(name) {
		return redacted
	}
	return strconv.Quote(value)
}

// queueNames checks the longest queue name the subscription implies
// against RabbitMQ's limit.
func (v *checker) queueNames(path string, s Subscription) {
	longest := v.c.DeadQueue(s)
	if len(longest) > maxNameBytes {
		v.add(path+".name", "queue name too long (got %d bytes in %q, want at most %d: shorten the name or broker.queue_prefix)",
			len(longest), longest, maxNameBytes)
	}
}
