// Package event reads warren's view of an AMQP message (identity, type,
// attempt count) and writes the retry and parking copies that replace it.
package event

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
)

// Headers warren sets on the copies it publishes. They carry no x- prefix:
// that belongs to the broker, and RabbitMQ 4.x ignores a republished x-death,
// so attempts are counted here and never from x-death.
const (
	HeaderAttempt        = "warren-attempt"          // attempts made so far
	HeaderRoutingKey     = "warren-routing-key"      // the key the app published with
	HeaderFirstAttemptAt = "warren-first-attempt-at" // RFC 3339
	HeaderLastStatus     = "warren-last-status"      // HTTP status, 0 for none
	HeaderLastError      = "warren-last-error"       // short reason, no secrets
	HeaderParkedAt       = "warren-parked-at"        // RFC 3339, on parked copies
	HeaderAPIVersion     = "api_version"             // copied into the envelope
	// HeaderReplay marks a message replayed from the journal, with the id of
	// the replay that sent it. The dedup window must not skip it: a replay
	// is asked for, so it reaches the endpoint even if the same event was
	// delivered a moment ago.
	HeaderReplay = "warren-replay"
	// HeaderKeyHead marks, in an ordered subscription, the event its key
	// waits for: a retry copy, or the next event moved back from the key's
	// held queue. Later events of a held key are moved aside; a head is
	// delivered. HeaderHeldKey beside it names the key.
	HeaderKeyHead = "warren-key-head"
	HeaderHeldKey = "warren-held-key"
)

// IsKeyHead reports whether d is marked as the head of a held key.
func IsKeyHead(d *amqp.Delivery) bool {
	v, _ := d.Headers[HeaderKeyHead].(bool)
	return v
}

// HeldKey is the key d is marked the head of, when the mark names it
// (older versions did not; "" is a key like any other).
func HeldKey(d *amqp.Delivery) (string, bool) {
	key, ok := d.Headers[HeaderHeldKey].(string)
	return key, ok && IsKeyHead(d)
}

// MarkHead marks the message with headers as the head of key.
func MarkHead(headers amqp.Table, key string) {
	headers[HeaderKeyHead] = true
	headers[HeaderHeldKey] = key
}

// Unmark removes the head mark from headers.
func Unmark(headers amqp.Table) {
	delete(headers, HeaderKeyHead)
	delete(headers, HeaderHeldKey)
}

// Move builds the copy that moves d, unchanged but for what the broker
// refuses or sets itself, to another queue. A message published without
// message_id gets an id of its own, as Stamp gives one: the id derived
// from its content is the same for equal publishes, which are two events.
func Move(d *amqp.Delivery, ev Event) amqp.Publishing {
	if d.MessageId == "" {
		ev.ID = NewID()
	}
	p := Copy(d, ev, Outcome{}, time.Time{})
	p.Headers = carried(d.Headers, 1)
	// The move goes through the default exchange, whose routing key is the
	// queue's name: the event's type must travel in the header.
	p.Headers[HeaderRoutingKey] = ev.Type
	return p
}

// maxAttempts bounds the attempt count read from a message.
const maxAttempts = 1 << 16

// IsReplay reports whether d was put back by a replay.
func IsReplay(d *amqp.Delivery) bool {
	_, ok := d.Headers[HeaderReplay]
	return ok
}

// Event is one message as warren delivers it.
type Event struct {
	ID             string
	Type           string // the original routing key
	CreatedAt      time.Time
	Attempt        int // this attempt, from 1
	FirstAttemptAt time.Time
	ContentType    string
	APIVersion     string
	Body           []byte
	// Headers are the message's AMQP headers, read-only: trace context,
	// forwarded headers and CloudEvents extensions come from here.
	Headers amqp.Table
}

// FromDelivery reads an event from a delivery; now is used where the message
// says nothing (first attempt, no timestamp).
func FromDelivery(d *amqp.Delivery, now time.Time) Event {
	ev := Event{
		ID:          d.MessageId,
		Type:        d.RoutingKey,
		CreatedAt:   d.Timestamp,
		Attempt:     1,
		ContentType: d.ContentType,
		Body:        d.Body,
		Headers:     d.Headers,
	}
	if key, ok := d.Headers[HeaderRoutingKey].(string); ok {
		ev.Type = key
	} else if key, ok := deadLetteredFrom(d.Headers); ok {
		ev.Type = key
	}
	// A count past any schedule is a count someone else wrote: it must not
	// overflow into a negative attempt.
	if n, ok := intHeader(d.Headers[HeaderAttempt]); ok && n >= 0 && n < maxAttempts {
		ev.Attempt = n + 1
	}
	ev.FirstAttemptAt = now
	if s, ok := d.Headers[HeaderFirstAttemptAt].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			ev.FirstAttemptAt = t
		}
	}
	if ev.CreatedAt.IsZero() {
		ev.CreatedAt = ev.FirstAttemptAt
	}
	if v, ok := d.Headers[HeaderAPIVersion].(string); ok {
		ev.APIVersion = v
	}
	if ev.ID == "" {
		ev.ID = ID(d.Exchange, d.RoutingKey, d.Timestamp, d.Body)
	}
	return ev
}

// NewID returns a fresh event id, for a message published without one.
func NewID() string {
	return "evt_" + strings.ToLower(rand.Text()) // 128 random bits
}

// ID derives a stable event id for a message published without message_id:
// the same message redelivered gets the same id.
func ID(exchange, routingKey string, ts time.Time, body []byte) string {
	h := sha256.New()
	h.Write([]byte(exchange))
	h.Write([]byte{0})
	h.Write([]byte(routingKey))
	h.Write([]byte{0})
	h.Write(strconv.AppendInt(nil, ts.Unix(), 10))
	h.Write([]byte{0})
	h.Write(body)
	var sum [sha256.Size]byte
	return "evt_" + hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// deadLetteredFrom is the routing key a message had when the broker itself
// dead-lettered it (a quorum queue's delivery limit), before warren ever
// stamped its own headers: the oldest x-death entry names it.
func deadLetteredFrom(h amqp.Table) (string, bool) {
	deaths, ok := h["x-death"].([]any)
	if !ok || len(deaths) == 0 {
		return "", false
	}
	first, ok := deaths[len(deaths)-1].(amqp.Table)
	if !ok {
		return "", false
	}
	keys, ok := first["routing-keys"].([]any)
	if !ok || len(keys) == 0 {
		return "", false
	}
	key, ok := keys[0].(string)
	return key, ok
}

// Outcome describes the attempt a copy records.
type Outcome struct {
	Status int    // HTTP status, 0 when there was no answer
	Error  string // short reason
}

// carried is what a copy keeps of headers h, with room for extra more:
// everything but what the broker sets itself (x-death and its summaries)
// and the publish tag of the hop before.
func carried(h amqp.Table, extra int) amqp.Table {
	out := make(amqp.Table, len(h)+extra)
	for k, v := range h {
		if k == "x-death" || strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-") || k == broker.HeaderPublishTag {
			continue
		}
		out[k] = v
	}
	return out
}

// Copy builds the message that replaces d in a retry tier or the dead queue:
// same body, properties and publisher headers; warren's headers updated;
// the broker's x-death headers and any expiration dropped (a per-message TTL
// would fight the tier's). parkedAt is zero for retries.
func Copy(d *amqp.Delivery, ev Event, o Outcome, parkedAt time.Time) amqp.Publishing {
	headers := carried(d.Headers, 6)
	headers[HeaderAttempt] = int32(ev.Attempt)
	headers[HeaderRoutingKey] = ev.Type
	headers[HeaderFirstAttemptAt] = ev.FirstAttemptAt.UTC().Format(time.RFC3339Nano)
	headers[HeaderLastStatus] = int32(o.Status)
	headers[HeaderLastError] = Truncate(o.Error, 512)
	if !parkedAt.IsZero() {
		headers[HeaderParkedAt] = parkedAt.UTC().Format(time.RFC3339Nano)
		Unmark(headers) // a parked event heads nothing
	}
	return amqp.Publishing{
		Headers:         headers,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       ev.ID,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		// No UserId: RabbitMQ refuses a user_id other than the publishing
		// connection's login and closes the channel, so a publisher's own
		// user_id would make every copy fail.
		AppId: d.AppId,
		Body:  d.Body,
	}
}

// Replay builds the message that moves a parked copy back to its work
// queue: same id and body, attempt count and last outcome cleared, and no
// head mark (parking released the key), except on a key's head that the
// broker dead-lettered by itself (x-death, no warren-parked-at): nothing
// released its key, so back in the work queue it is sent if the key's
// record still names it, and its outcome releases the key.
func Replay(d *amqp.Delivery, ev Event) amqp.Publishing {
	p := Copy(d, ev, Outcome{}, time.Time{})
	_, parked := d.Headers[HeaderParkedAt]
	_, deadLettered := d.Headers["x-death"]
	for _, k := range []string{HeaderAttempt, HeaderLastStatus, HeaderLastError, HeaderParkedAt, HeaderFirstAttemptAt} {
		delete(p.Headers, k)
	}
	if parked || !deadLettered {
		Unmark(p.Headers)
	}
	return p
}

// Stamp builds the copy that gives a message published without message_id
// an id of its own before its first attempt, so that two publishes with
// equal bodies are two events and every later hop keeps the id.
func Stamp(d *amqp.Delivery, ev Event) amqp.Publishing {
	ev.ID = NewID()
	p := Replay(d, ev)
	Unmark(p.Headers) // a first publish heads nothing yet
	return p
}

// Parked is what `dead list` shows of a parked message.
type Parked struct {
	ID         string
	Type       string
	Attempts   int
	LastStatus int
	LastError  string
	ParkedAt   string
}

// ReadParked reads a parked message's warren headers.
func ReadParked(d *amqp.Delivery) Parked {
	ev := FromDelivery(d, time.Time{})
	p := Parked{ID: ev.ID, Type: ev.Type, Attempts: ev.Attempt - 1}
	p.LastStatus, _ = intHeader(d.Headers[HeaderLastStatus])
	p.LastError, _ = d.Headers[HeaderLastError].(string)
	p.ParkedAt, _ = d.Headers[HeaderParkedAt].(string)
	return p
}

// Truncate shortens s to at most n bytes without splitting a UTF-8 rune.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && cut < len(s) && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut] + "…"
}

func intHeader(v any) (int, bool) {
	switch n := v.(type) {
	case int8:
		return int(n), true
	case int16:
		return int(n), true
	case int32:
		return int(n), true
	case int64:
		return int(n), true
	case int:
		return n, true
	case uint8:
		return int(n), true
	case uint16:
		return int(n), true
	case uint32:
		return int(n), true
	case string:
		i, err := strconv.Atoi(n)
		return i, err == nil
	}
	return 0, false
}
