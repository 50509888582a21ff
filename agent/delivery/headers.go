package delivery

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

// W3C trace context headers, propagated from the message whenever valid.
const (
	headerTraceparent = "traceparent"
	headerTracestate  = "tracestate"
)

// badByte returns the index of the first byte net/http refuses in a header
// value (a control character other than tab), or -1.
func badByte(s string) int {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return i
		}
	}
	return -1
}

// checkProperty says why a message property cannot be sent in a header.
func checkProperty(property, s string) error {
	i := badByte(s)
	if i < 0 {
		return nil
	}
	return fmt.Errorf("%s contains control character %#02x at byte %d, which no HTTP header may carry: fix the publisher; retrying cannot help", property, s[i], i)
}

// headerString turns an AMQP header value into an HTTP header value; ok is
// false for values that have no single-line text form (tables, arrays) or
// hold control characters.
func headerString(v any) (string, bool) {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case []byte:
		s = string(x)
	case bool:
		s = strconv.FormatBool(x)
	case int8, int16, int32, int64, int, uint8, uint16, uint32, uint64:
		s = fmt.Sprint(x)
	case float32:
		s = strconv.FormatFloat(float64(x), 'g', -1, 32)
	case float64:
		s = strconv.FormatFloat(x, 'g', -1, 64)
	case time.Time:
		s = x.UTC().Format(time.RFC3339)
	default:
		return "", false
	}
	return s, badByte(s) < 0
}

// lookupHeader finds an AMQP header by name, ignoring case as HTTP does.
func lookupHeader(t amqp.Table, name string) (any, bool) {
	if v, ok := t[name]; ok {
		return v, true
	}
	for k, v := range t {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return nil, false
}

// traceContext returns the message's W3C traceparent and tracestate when
// the traceparent is valid; tracestate is dropped when it is not a valid
// header value or over the 512 bytes the spec allows.
func traceContext(t amqp.Table) (parent, state string) {
	v, ok := lookupHeader(t, headerTraceparent)
	if !ok {
		return "", ""
	}
	parent, _ = headerString(v)
	if !validTraceparent(parent) {
		return "", ""
	}
	if v, ok := lookupHeader(t, headerTracestate); ok {
		if s, ok := headerString(v); ok && len(s) <= 512 {
			state = s
		}
	}
	return parent, state
}

// validTraceparent checks version-traceid-parentid-flags in lower-case hex,
// with neither id all zeros and version ff refused, as W3C Trace Context
// requires. Later versions may append fields after a dash.
func validTraceparent(s string) bool {
	if len(s) < 55 || len(s) > 55 && s[55] != '-' || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return false
	}
	hex := func(p string) bool {
		zero := true
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
			zero = zero && c == '0'
		}
		return !zero
	}
	version, trace, parent, flags := s[:2], s[3:35], s[36:52], s[53:55]
	return version != "ff" && (hex(version) || version == "00") && (version != "00" || len(s) == 55) &&
		hex(trace) && hex(parent) && (hex(flags) || flags == "00")
}

// ceAttributes are CloudEvents context attributes a message header must not
// set as an extension: warren sets them, or the SDKs check their format.
var ceAttributes = []string{"specversion", "id", "source", "type", "time", "datacontenttype", "dataschema", "data", "database64"}

// extensionName turns an AMQP header name into a CloudEvents extension
// name: the AMQP binding's "cloudEvents:" or "cloudEvents_" prefix dropped,
// lower-cased, every character but a-z and 0-9 dropped ("X-Tenant-Id" ->
// "xtenantid"). "" when nothing is left or it names a context attribute.
func extensionName(header string) string {
	for _, p := range []string{"cloudEvents:", "cloudEvents_"} {
		if len(header) > len(p) && strings.EqualFold(header[:len(p)], p) {
			header = header[len(p):]
		}
	}
	b := make([]byte, 0, len(header))
	for i := 0; i < len(header); i++ {
		c := header[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
			b = append(b, c)
		case 'A' <= c && c <= 'Z':
			b = append(b, c+'a'-'A')
		}
	}
	name := string(b)
	if slices.Contains(ceAttributes, name) {
		return ""
	}
	return name
}

// brokerHeaders are set by RabbitMQ, not by the publisher.
var brokerHeaders = []string{"x-death", "x-first-death-", "x-last-death-", "x-delivery-count", "x-received-from"}

// setExtensions sends the message's headers as CloudEvents extensions
// (ce-<name>), in name order so that of two headers that become the same
// name the first wins. The broker's and warren's own (warren-) headers
// stay out; so do trace headers, set from the validated context.
func setExtensions(h http.Header, t amqp.Table) {
	if len(t) == 0 {
		return
	}
	names := make([]string, 0, len(t))
	for k := range t {
		lower := strings.ToLower(k)
		if strings.HasPrefix(lower, "warren-") || lower == headerTraceparent || lower == headerTracestate ||
			slices.ContainsFunc(brokerHeaders, func(p string) bool { return strings.HasPrefix(lower, p) }) {
			continue
		}
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		name := extensionName(k)
		if name == "" || name == headerTraceparent || name == headerTracestate {
			continue
		}
		key := "Ce-" + strings.ToUpper(name[:1]) + name[1:]
		if _, taken := h[key]; taken {
			continue
		}
		if v, ok := headerString(t[k]); ok {
			h[key] = []string{v}
		}
	}
}

// clean makes text from an endpoint safe for logs and headers: control and
// format characters (terminal escapes, bidi overrides) and invalid UTF-8
// become U+FFFD, runs of white space one space.
func clean(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for _, r := range s {
		switch {
		case r == ' ' || r == '\t' || r == '\n' || r == '\r':
			space = b.Len() > 0
			continue
		case r == utf8.RuneError || unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			r = utf8.RuneError
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	return b.String()
}
