package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/interpreter"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/config/expr"
)

// Input is one event as the expressions see it. The body is parsed and the
// headers converted at most once, when an expression first reads them, so
// the filter, the transform and the ordering key of one event share the
// work. An Input may be used by several goroutines.
type Input struct {
	ev      event.Event
	headers amqp.Table

	dataOnce    sync.Once
	data        any
	headersOnce sync.Once
	converted   map[string]any
}

// NewInput wraps an event and the AMQP headers of its message.
func NewInput(ev event.Event, headers amqp.Table) *Input {
	return &Input{ev: ev, headers: headers}
}

// APIVersion is the event's api_version header, "" when absent.
func (in *Input) APIVersion() string { return in.ev.APIVersion }

var _ interpreter.Activation = (*Input)(nil)

// ResolveName implements interpreter.Activation.
func (in *Input) ResolveName(name string) (any, bool) {
	switch name {
	case expr.VarID:
		return in.ev.ID, true
	case expr.VarType:
		return in.ev.Type, true
	case expr.VarAPIVersion:
		return in.ev.APIVersion, true
	case expr.VarCreatedAt:
		return in.ev.CreatedAt, true
	case expr.VarData:
		in.dataOnce.Do(func() { in.data = parseJSON(in.ev.Body) })
		return in.data, true
	case expr.VarHeaders:
		in.headersOnce.Do(func() { in.converted = convertHeaders(in.headers) })
		return in.converted, true
	}
	return nil, false
}

// Parent implements interpreter.Activation.
func (in *Input) Parent() interpreter.Activation { return nil }

// parseJSON reads body as one JSON value. Numbers written without a
// fraction or exponent become int (uint past int64), so that large ids keep
// every digit; others become double. A body that is not JSON is null.
func parseJSON(body []byte) any {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return types.NullValue
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return types.NullValue // trailing data: not one JSON value
	}
	return numbers(v)
}

func numbers(v any) any {
	switch v := v.(type) {
	case json.Number:
		s := v.String()
		if !strings.ContainsAny(s, ".eE") {
			if i, err := strconv.ParseInt(s, 10, 64); err == nil {
				return i
			}
			if u, err := strconv.ParseUint(s, 10, 64); err == nil {
				return u
			}
		}
		f, _ := v.Float64() // valid JSON: at worst ±Inf for a huge exponent
		return f
	case map[string]any:
		for k, e := range v {
			v[k] = numbers(e)
		}
	case []any:
		for i, e := range v {
			v[i] = numbers(e)
		}
	case nil:
		return types.NullValue
	}
	return v
}

// convertHeaders turns AMQP table values into values CEL knows: integers
// become int, floats and decimals double, nested tables maps. warren's own
// headers and the broker's x-death are left out, so that an expression
// gives the same answer on every attempt of an event.
func convertHeaders(t amqp.Table) map[string]any {
	m := make(map[string]any, len(t))
	for k, v := range t {
		if internalHeader(k) {
			continue
		}
		m[k] = headerValue(v)
	}
	return m
}

func internalHeader(k string) bool {
	return strings.HasPrefix(k, "warren-") || k == "x-death" ||
		strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-")
}

func headerValue(v any) any {
	switch v := v.(type) {
	case int8:
		return int64(v)
	case int16:
		return int64(v)
	case int32:
		return int64(v)
	case int:
		return int64(v)
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	case float32:
		return float64(v)
	case amqp.Decimal:
		return float64(v.Value) / math.Pow10(int(v.Scale))
	case time.Time:
		return v.UTC()
	case amqp.Table:
		return convertHeaders(v)
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = headerValue(e)
		}
		return out
	case nil:
		return types.NullValue
	}
	return v // string, bool, int64, float64, []byte
}
